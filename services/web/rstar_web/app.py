"""The FastAPI application: JSON APIs under /api, the pages that draw them, live trees by SSE.

`create_app(settings, store=None)` builds the app over one store (its own, from
`settings.database_url`, unless one is given): tests serve it with port 0 or through
Starlette's test client, `serve()` runs it under uvicorn.

Pages are static HTML shells plus plain JavaScript and SVG (`static/`): every value the
pages show is fetched from the same `/api/...` endpoints a script would use, and written
into the page with `textContent` only, so model-generated text (a step that prints
`<script>`) is shown as text, never run. A Content-Security-Policy that allows scripts
from this origin only backs that up. The OpenAPI page (`/docs`) serves Swagger UI from the
`swagger-ui-bundle` package, not from a CDN.

Security: see `settings`. A token arrives as `Authorization: Bearer <token>`, or for a
browser as `?token=` once (it is then kept in an HttpOnly, SameSite=Strict cookie).
Enqueue accepts the header only: a cookie alone never enqueues (no cross-site request
can set a header).

Evaluations are `rstar eval` report folders on disk, not the store (`evaluations`): their
table as JSON, and their plots served only from report folders under the configured roots.

Not here: writing results (workers do), the queries (`queries`, `evaluations`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from rstar_store import Store

from .evaluations import EvalReports
from .queries import ConsoleQueries
from .settings import WebSettings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "rstar_token"
# Largest problem file the upload accepts (the CLI reads any size from disk).
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
# Pages: one HTML shell each; the script reads its parameters from the URL.
PAGES = ("runs", "run", "task", "rounds", "models", "evaluations", "evaluation", "enqueue")


def create_app(settings: WebSettings | None = None, store: Store | None = None) -> FastAPI:
    settings = settings or WebSettings.from_env()
    own_store = store is None
    store = store or Store.from_url(settings.database_url)
    queries = ConsoleQueries(store)
    reports = EvalReports(settings.eval_dir, settings.evolve_dir)
    app = FastAPI(title="rstar console", version="1", docs_url=None, redoc_url=None,
                  description="Runs, search trees (final and live), evolve rounds and the model registry "
                              "of an rstar deployment, read from its store; and the `rstar eval` reports "
                              "found under RSTAR_EVAL_DIR and RSTAR_EVOLVE_DIR.")
    app.state.settings = settings
    app.state.store = store
    app.state.queries = queries
    app.state.reports = reports
    if own_store:
        app.router.on_shutdown.append(store.close)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        from_query = request.query_params.get("token")
        # /healthz says only "up or not", so probes need no secret.
        if settings.token_required and request.url.path != "/healthz" and not _token_ok(settings, request):
            return JSONResponse({"detail": "this console needs its token (RSTAR_WEB_TOKEN): send "
                                           "'Authorization: Bearer <token>' or open a page with ?token=<token>"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        if request.url.path != "/docs":
            response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if from_query and settings.token and hmac.compare_digest(from_query, settings.token):
            response.set_cookie(TOKEN_COOKIE, from_query, httponly=True, samesite="strict")
        return response

    # --- JSON API -------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"], summary="200 when the console can read its store (no token needed)")
    def healthz() -> dict[str, str]:
        try:
            queries.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to read means not ready
            raise HTTPException(503, f"cannot read the store: {type(exc).__name__}") from None
        return {"status": "ok"}

    @app.get("/api/runs", tags=["runs"], summary="Every run with its task counts, results and throughput")
    def api_runs() -> list[dict[str, Any]]:
        return queries.runs()

    @app.get("/api/runs/{name:path}", tags=["runs"], summary="One run: totals, rounds and batches")
    def api_run(name: str) -> dict[str, Any]:
        return _found(queries.run, name)

    @app.get("/api/tasks", tags=["tasks"], summary="A page of a run's tasks (problems) with their results")
    def api_tasks(run: str, round: int | None = None, state: str | None = None,
                  offset: Annotated[int, Query(ge=0)] = 0,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
        return _found(queries.tasks, run, round=round, state=state, offset=offset, limit=limit)

    @app.get("/api/tasks/{task_id}", tags=["tasks"], summary="A task, its problem and its result's summary")
    def api_task(task_id: int) -> dict[str, Any]:
        return _found(queries.task, task_id)

    @app.get("/api/tasks/{task_id}/tree", tags=["tasks"],
             summary="The task's search tree: the final one, else the latest live snapshot")
    def api_tree(task_id: int) -> dict[str, Any]:
        return _found(queries.tree, task_id)

    @app.get("/api/tasks/{task_id}/events", tags=["tasks"],
             summary="Server-sent events: `tree` for each new snapshot, `final` with the final tree",
             response_class=StreamingResponse)
    async def api_events(task_id: int, request: Request) -> StreamingResponse:
        await asyncio.to_thread(_found, queries.live_mark, task_id)
        return StreamingResponse(_live_events(queries, settings, task_id, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/rounds/{run:path}", tags=["runs"], summary="The round table of an `rstar evolve` run")
    def api_rounds(run: str) -> dict[str, Any]:
        return _found(queries.rounds, run)

    @app.get("/api/models", tags=["models"], summary="The model registry, newest first, with lineage")
    def api_models() -> list[dict[str, Any]]:
        return queries.models()

    @app.get("/api/evaluations", tags=["evaluations"],
             summary="The `rstar eval` report folders, newest first; `run`: only that evolve run's")
    def api_evaluations(run: str | None = None) -> list[dict[str, Any]]:
        return _found(reports.reports, run)

    @app.get("/api/evaluations/{report_id:path}", tags=["evaluations"],
             summary="One report: accuracy per (method, N) with its 95 % interval, tokens per item, items, "
                     "paired comparisons, the runs that wrote it and its plots' URLs")
    def api_evaluation(report_id: str) -> dict[str, Any]:
        return _found(reports.report, report_id)

    @app.get("/api/evaluation-files/{report_id:path}/{name}", tags=["evaluations"],
             summary="A report's scaling plot (accuracy.png), round plot (rounds.png) or Markdown (report.md)",
             response_class=FileResponse,
             responses={200: {"content": {"image/png": {}, "text/markdown": {}}}})
    def api_evaluation_file(report_id: str, name: str) -> FileResponse:
        path, media_type = _found(reports.file, report_id, name)
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/api/recipes", tags=["enqueue"], summary="The search recipes enqueue accepts")
    def api_recipes() -> list[str]:
        from rstar_cli.main import CONFIG_DIR

        return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))

    @app.post("/api/enqueue", tags=["enqueue"],
              summary="Validate a problem file and queue it, like `rstar enqueue` (needs the token)")
    def api_enqueue(request: Request, file: Annotated[UploadFile, File()], run: Annotated[str, Form()],
                    recipe: Annotated[str, Form()] = "round1", round: Annotated[int, Form()] = 1,
                    limit: Annotated[int | None, Form()] = None) -> dict[str, Any]:
        if settings.token is None:
            raise HTTPException(403, "enqueue is disabled: start the console with RSTAR_WEB_TOKEN set")
        if not _bearer_ok(settings, request):
            raise HTTPException(401, "enqueue needs the token: send 'Authorization: Bearer <token>'")
        return {"message": _enqueue(store, file, run=run, recipe=recipe, round=round, limit=limit)}

    # --- pages ------------------------------------------------------------------------------

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    import swagger_ui_bundle

    app.mount("/vendor/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="rstar console API",
                                   swagger_js_url="/vendor/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/vendor/swagger/swagger-ui.css",
                                   swagger_favicon_url="/vendor/swagger/favicon-32x32.png")

    def page(name: str):
        def serve_page() -> FileResponse:
            return FileResponse(STATIC / f"{name}.html", headers={"Cache-Control": "no-store"})
        return serve_page

    for path, name in (("/", "runs"), ("/runs/{name:path}", "run"), ("/tasks/{task_id}", "task"),
                       ("/rounds/{run:path}", "rounds"), ("/models", "models"), ("/evaluations", "evaluations"),
                       ("/evaluations/{report_id:path}", "evaluation"), ("/enqueue", "enqueue")):
        app.add_api_route(path, page(name), methods=["GET"], include_in_schema=False)
    return app


def _found(fn, *args, **kwargs):
    """LookupError -> 404, ValueError -> 400, each with its one-line message."""
    try:
        return fn(*args, **kwargs)
    except LookupError as exc:
        raise HTTPException(404, _message(exc)) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def _message(exc: Exception) -> str:
    # str() of a KeyError quotes its message; the message itself is what the user reads.
    return str(exc.args[0]) if exc.args else str(exc)


def _token_ok(settings: WebSettings, request: Request) -> bool:
    offered = (_bearer(request) or request.cookies.get(TOKEN_COOKIE) or request.query_params.get("token"))
    return bool(settings.token and offered and hmac.compare_digest(offered, settings.token))


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _bearer_ok(settings: WebSettings, request: Request) -> bool:
    offered = _bearer(request)
    return bool(settings.token and offered and hmac.compare_digest(offered, settings.token))


def _enqueue(store: Store, upload: UploadFile, *, run: str, recipe: str, round: int, limit: int | None) -> str:
    """`rstar enqueue` for an uploaded file: the CLI's own validation, recording and messages."""
    from rstar_cli.main import UsageError, _resolve_config, enqueue_batch
    from rstar_cli.problems import parse_problems

    # The uploaded file's own name (no directories) prefixes every error, as a path does in the CLI.
    name = Path(upload.filename or "upload.jsonl").name or "upload.jsonl"
    try:
        if round < 1:
            raise ValueError(f"round must be >= 1, got {round}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if not run.strip():
            raise ValueError("run must be a non-empty name")
        # Recipe names only: a path would let a request read any YAML file on this machine.
        if not recipe or any(c in recipe for c in "/\\") or recipe.startswith(".") or recipe.endswith((".yaml", ".yml")):
            raise ValueError(f"recipe must be a recipe name (see /api/recipes), got {recipe!r}")
        try:
            config = _resolve_config(recipe, {})
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        data = upload.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ValueError(f"{name}: larger than {MAX_UPLOAD_BYTES // 2**20} MiB; use `rstar enqueue`")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{name}: not UTF-8 text") from None
        problems = parse_problems(text, name, limit=limit)
        return enqueue_batch(store, run, round, recipe, config, problems, source=f"upload:{name}")
    except (ValueError, LookupError) as exc:
        raise HTTPException(400, _message(exc)) from None
    except UsageError as exc:
        # The broker: the batch is recorded, and the message says how to publish it.
        raise HTTPException(503, str(exc)) from None


async def _live_events(queries: ConsoleQueries, settings: WebSettings, task_id: int, request: Request):
    """`tree` events while the search runs, then one `final` event (or `end` if it stopped)."""
    sent_seq: int | None = None
    idle_s = 0.0
    last_state = None
    yield "retry: 3000\n\n"
    while not await request.is_disconnected():
        try:
            state, seq, has_result = await asyncio.to_thread(queries.live_mark, task_id)
        except LookupError:
            yield _event("end", {"reason": "the task is gone"})
            return
        if has_result:
            yield _event("final", await asyncio.to_thread(queries.tree, task_id))
            return
        if seq is not None and seq != sent_seq:
            try:
                payload = await asyncio.to_thread(queries.tree, task_id)
            except LookupError:
                payload = None  # deleted between the two reads: the result is being recorded
            if payload is not None and not payload["final"]:
                sent_seq = seq
                idle_s = 0.0
                yield _event("tree", payload)
                continue
        if state != last_state:
            last_state = state
            yield _event("state", {"state": state})
        if state in ("failed", "cancelled") and seq == sent_seq:
            yield _event("end", {"reason": f"the task is {state}"})
            return
        await asyncio.sleep(settings.live_poll_s)
        idle_s += settings.live_poll_s
        if idle_s >= settings.keepalive_s:
            idle_s = 0.0
            yield ": keep-alive\n\n"


def _event(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"
