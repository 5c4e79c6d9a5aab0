"""The console in a real browser: headless Debian chromium driven by Playwright, a real uvicorn
server and a real SQLite store holding trees from the real MCTS (over the scripted fakes).

Covers: open a run, open a problem, click a node and see its code and output, a `<script>`
step shown as text, a live tree gaining nodes while a search runs (the worker's own snapshot
publisher writing into the store), a bad upload's error line, the time to show a
5,000-node tree (logged, not asserted), and an evaluation report's table and plots (folders
written by `rstar eval`, see eval_data). With RSTAR_SCREENSHOTS=1 it also rewrites the
screenshots in docs/ (otherwise they go to the test's temp dir, so a run leaves the tree clean). Skipped
with the reason when chromium or Playwright is missing (`make browser-tools`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from console_data import QUESTION, SCRIPT_TAG, TOKEN, populate
from eval_data import eval_reports, evolve_run, fake_engine, no_models  # noqa: F401 - fixtures
from rstar_core.mcts import SearchResult
from rstar_core.types import NodeKind, Problem, TerminalReason, Tree
from rstar_store import Store, migrate

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="chromium not installed (make browser-tools: apt-get install chromium)")

log = logging.getLogger(__name__)
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where the screenshots go: docs/ when asked for (RSTAR_SCREENSHOTS=1), else a temp dir."""
    return DOCS if os.environ.get("RSTAR_SCREENSHOTS") == "1" else tmp_path
BIG = 5000


def big_tree(problem: Problem, n: int = BIG, seed: int = 0) -> Tree:
    """A tree shaped like a long search: up to 4 children per node, deeper where it was busy."""
    rng = random.Random(seed)
    tree = Tree.new(problem)
    open_nodes = [tree.root]
    while len(tree.nodes) < n:
        parent = open_nodes[-1 - min(len(open_nodes) - 1, int(rng.expovariate(1 / 40)))]
        last = len(tree.nodes) + 1 == n or rng.random() < 0.15
        node = tree.add_child(parent, kind=NodeKind.ANSWER if last else NodeKind.CODE,
                              text=f"# step {len(tree.nodes)}\nx = {rng.randint(0, 99)}\nprint(x)",
                              code=f"x = {rng.randint(0, 99)}\nprint(x)", output=f"{rng.randint(0, 99)}\n")
        if last:
            node.answer = str(rng.randint(0, 20))
            node.correct = node.answer == "7"
            node.terminal = TerminalReason.ANSWER
            node.terminal_value = 1.0 if node.correct else -1.0
        else:
            open_nodes.append(node)
        if len(parent.children) >= 4:
            open_nodes.remove(parent)
        walk = node
        value = rng.uniform(-1, 1)
        while walk is not None:
            walk.visits += 1
            walk.value_sum += value
            walk = tree.nodes[walk.parent] if walk.parent is not None else None
    return tree


@contextmanager
def _served(make_app):
    """`make_app(port)` served by uvicorn on a free port of 127.0.0.1; yields the base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(port), host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def site(tmp_path):
    """A migrated SQLite store with the demo run and a 5,000-node tree, served by uvicorn."""
    from rstar_web import WebSettings, create_app

    url = f"sqlite:///{tmp_path / 'web.db'}"
    migrate(url)
    store = Store.from_url(url)
    ids = populate(store)
    store.get_or_create_run("big")
    problem = Problem("A big search: what is 3 + 4?", "7", "big-1")
    [big] = store.add_batch("big", 1, 0, [problem], {}).task_ids
    store.claim_task(big, worker="test")
    tree = big_tree(problem)
    store.record_result(big, SearchResult(tree, "7", True, True, 1.0))
    ids["big"] = big
    with _served(lambda port: create_app(WebSettings(port=port, token=TOKEN, live_poll_s=0.2), store=store)) as base:
        yield base, store, ids
    store.close()


@pytest.fixture
def eval_site(eval_reports):
    """The report folders of eval_data and the store holding the round table of their evolve run `evo`."""
    from rstar_web import WebSettings, create_app

    store = Store.from_url(f"sqlite:///{eval_reports['eval_dir'].parent}/rstar.db")
    settings = dict(eval_dir=str(eval_reports["eval_dir"]), evolve_dir=str(eval_reports["evolve_dir"]))
    with _served(lambda port: create_app(WebSettings(port=port, **settings), store=store)) as base:
        yield base
    store.close()


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        browser.close()
        assert errors == [], errors


def test_open_a_run_then_a_problem_and_click_a_node(site, page, shots):
    base, _store, ids = site
    page.goto(base + "/")
    page.get_by_role("link", name="demo").click()
    page.wait_for_selector("#task-table")
    assert page.locator("#rounds tbody tr").count() == 1
    assert page.locator("#task-table tbody tr").count() == 4
    page.screenshot(path=str(shots / "web-console-run.png"), full_page=True)

    page.click(f"a[href='/tasks/{ids['done']}']")
    page.wait_for_selector("svg.tree circle")
    assert "(correct)" in page.inner_text("#chosen-answer")
    assert "null" not in page.inner_text("main") and "undefined" not in page.inner_text("main")
    assert page.locator("svg.tree circle").count() > 3
    # The node whose step prints x + 4: its code and its sandbox output.
    tree = page.request.get(f"{base}/api/tasks/{ids['done']}/tree").json()["tree"]
    printing = next(n for n in tree["nodes"] if "print(x + 4)" in n["code"])
    page.click(f"svg.tree circle[data-id='{printing['id']}']")
    assert "print(x + 4)" in page.inner_text("#node-code")
    assert page.inner_text("#node-output").strip() == "7"
    assert page.inner_text("#node-status").startswith("kept")
    assert page.locator("#dropped-list li").count() >= 1
    page.screenshot(path=str(shots / "web-console-tree.png"), full_page=True)


def test_a_script_step_is_shown_as_text(site, page):
    base, _store, ids = site
    page.goto(f"{base}/tasks/{ids['done']}")
    page.wait_for_selector("svg.tree circle")
    tree = page.request.get(f"{base}/api/tasks/{ids['done']}/tree").json()["tree"]
    hostile = next(n for n in tree["nodes"] if SCRIPT_TAG in n["text"])
    page.click(f"svg.tree circle[data-id='{hostile['id']}']")
    assert SCRIPT_TAG in page.inner_text("#node-text")
    assert SCRIPT_TAG in page.inner_text("#node-output")
    assert page.locator("#node-detail script").count() == 0
    assert page.evaluate("() => window.pwned") is None


def _watch_live_search(site, page, problem: Problem, make_mcts, *, within_s: float) -> tuple[list[int], int, dict]:
    """Open a running task's page, run its search in a worker thread (the worker's own
    `_run` with its `SnapshotPublisher`), and note every tree size the page shows by SSE.
    `make_mcts` is an async callable returning (mcts, close) inside the search's loop."""
    from rstar_worker.tasks import SnapshotPublisher, _run

    base, store, _ids = site
    store.get_or_create_run("live")
    [task] = store.add_batch("live", 1, 0, [problem], {}).task_ids
    store.claim_task(task, worker="test")
    page.goto(f"{base}/tasks/{task}")
    page.wait_for_selector("#live-status")
    counts: list[int] = []
    outcome: dict = {}

    async def searched():
        mcts, close = await make_mcts()
        try:
            return await _run(mcts, problem, [], SnapshotPublisher(store, task, interval_s=0.3))
        finally:
            await close()

    def worker():
        result = asyncio.run(searched())
        outcome["recorded"] = store.record_result(task, result)
        outcome["nodes"] = len(result.tree.nodes)

    thread = threading.Thread(target=worker)
    thread.start()
    deadline = time.monotonic() + within_s
    while thread.is_alive() and time.monotonic() < deadline:
        value = page.evaluate("() => Number(document.body.dataset.nodes || 0)")
        if value and (not counts or value != counts[-1]):
            counts.append(value)
        time.sleep(0.1)
    thread.join()
    page.wait_for_function("() => document.getElementById('task-state').textContent === 'done'", timeout=15000)
    final = page.evaluate("() => Number(document.body.dataset.nodes)")
    log.info("live tree sizes seen by the page: %s, final %d", counts, final)
    print(f"live tree sizes seen by the page: {counts}, final {final}")
    return counts, final, outcome


def test_a_live_tree_gains_nodes_while_the_search_runs(site, page):
    """The worker's SnapshotPublisher writes a real search's partial tree; the page grows it by SSE."""
    from rstar_core.config import SearchConfig
    from rstar_core.mcts import MCTS

    from console_data import script
    from fakes import InlineExecutor, ScriptedPolicy

    async def make_mcts():
        config = SearchConfig(expansion_width=3, rollouts=8, max_depth=5, parallel_rollouts=1)

        async def close():
            pass

        return MCTS(ScriptedPolicy(script, delay_s=0.4), InlineExecutor(), config), close

    counts, final, outcome = _watch_live_search(site, page, Problem(QUESTION, "7", "live-1"), make_mcts,
                                                within_s=60)
    assert outcome["recorded"] and final == outcome["nodes"]
    assert len(counts) >= 2 and counts == sorted(counts) and counts[0] < final


@pytest.mark.slow
def test_a_live_tree_grows_during_a_search_of_the_real_model(site, page, model_dir):
    """The same, with the real small model (vLLM engine) and the real sandbox."""
    from rstar_core.config import SearchConfig
    from rstar_core.mcts import MCTS
    from rstar_executor import SandboxExecutor
    from rstar_policy.engine import EngineSettings, VLLMPolicy

    async def make_mcts():
        policy = VLLMPolicy(EngineSettings(model=model_dir, seed=0, max_model_len=2048, cpu_kvcache_gib=1,
                                           enforce_eager=True))
        sandbox = SandboxExecutor()
        config = SearchConfig(expansion_width=2, rollouts=4, max_depth=3, max_tokens_per_step=48,
                              parallel_rollouts=1)

        async def close():
            await sandbox.close()
            policy.shutdown()

        return MCTS(policy, sandbox, config), close

    problem = Problem("A box holds 6 eggs. How many eggs are in 4 boxes?", "24", "live-real")
    counts, final, outcome = _watch_live_search(site, page, problem, make_mcts, within_s=600)
    assert outcome["recorded"] and final == outcome["nodes"]
    assert len(counts) >= 2 and counts == sorted(counts) and counts[0] < final


def test_a_bad_upload_shows_the_error_line(site, page):
    base, _store, _ids = site
    page.goto(f"{base}/enqueue")
    page.wait_for_selector("#enqueue-form")
    page.set_input_files("#file", files=[{"name": "bad.jsonl", "mimeType": "application/jsonl",
                                          "buffer": b'{"question": "fine"}\n{"question": \n'}])
    page.fill("#run", "uploaded")
    page.fill("#token", TOKEN)
    page.click("#submit")
    page.wait_for_selector("#enqueue-result.bad")
    assert page.inner_text("#enqueue-result") == "rstar: error: bad.jsonl:2: invalid JSON: Expecting value"
    assert page.request.get(f"{base}/api/runs").json()[0]["name"] != "uploaded"


def test_a_5000_node_tree_renders(site, page):
    base, _store, ids = site
    started = time.perf_counter()
    page.goto(f"{base}/tasks/{ids['big']}")
    page.wait_for_function(f"() => document.body.dataset.nodes === '{BIG}'", timeout=60000)
    shown_s = time.perf_counter() - started
    render_ms = float(page.evaluate("() => document.body.dataset.renderMs"))
    circles = page.locator("svg.tree circle").count()
    message = (f"{BIG}-node tree: page shown {shown_s:.2f} s after navigation (fetch + parse + layout + draw); "
               f"layout and SVG build {render_ms:.0f} ms; {circles} nodes drawn")
    log.info(message)
    print(message)
    assert circles == BIG


def test_rounds_plot_and_model_lineage(site, page):
    base, store, _ids = site
    store.start_evolve_step("demo", 0, "evaluate_base")
    store.finish_evolve_step("demo", 0, "evaluate_base", {"greedy_gsm8k": [True, False, False, False],
                                                          "greedy_practice": {}})
    for round, outcomes in ((1, [True, True, False, False]), (2, [True, True, True, False])):
        store.start_evolve_step("demo", round, "evaluate")
        store.finish_evolve_step("demo", round, "evaluate", {"greedy_gsm8k": outcomes, "greedy_practice": {}})
    page.goto(f"{base}/rounds/demo")
    page.wait_for_selector("#accuracy-plot path.series")
    assert page.locator("#round-table tbody tr").count() == 3
    store.add_model_version("base", "policy", "/m/base")
    store.add_model_version("sft-1", "policy", "/m/sft-1", round=1, parent="base")
    store.add_model_version("ppm-1", "ppm", "/m/ppm-1", round=1, parent="sft-1")
    page.goto(f"{base}/models")
    page.wait_for_selector("#models")
    # Lineage: ppm-1 is drawn inside sft-1's list, which is inside base's.
    assert page.locator("ul.lineage ul.lineage ul.lineage b").inner_text() == "ppm-1"


def test_an_evaluation_report_shows_its_table_and_plots(eval_site, page, shots):
    base = eval_site
    page.goto(f"{base}/evaluations")
    page.get_by_role("link", name="eval/problems-maj", exact=True).click()
    page.wait_for_selector("#eval-table")
    # greedy@1, maj@1, maj@3: accuracy with its interval and graded count, as `rstar eval` summarised it.
    assert page.locator("#eval-table tbody tr").count() == 3
    assert page.locator("#eval-table tbody tr").nth(2).inner_text().split("\t")[:2] == ["maj", "3"]
    assert "50.0 % [" in page.inner_text("#eval-table") and "(1/2)" in page.inner_text("#eval-table")
    assert page.locator("#eval-comparisons tbody tr").count() >= 2
    assert page.inner_text("#produced").startswith("Produced by rstar eval --benchmark")
    # The scaling plot is the folder's PNG, loaded and decoded by the browser.
    page.wait_for_function("() => document.getElementById('scaling-plot').complete")
    assert page.evaluate("() => document.getElementById('scaling-plot').naturalWidth") > 100
    page.screenshot(path=str(shots / "web-console-evaluation.png"), full_page=True)

    # An evolve run's Rounds page links its evaluations; theirs show the accuracy per round too.
    page.goto(f"{base}/rounds/evo")
    page.wait_for_selector("#run-evaluations")
    page.get_by_role("link", name="evolve/evo/eval/problems-maj").click()
    page.wait_for_selector("#rounds-plot")
    page.wait_for_function("() => ['scaling-plot', 'rounds-plot'].every((id) => document.getElementById(id).complete)")
    assert page.evaluate("() => document.getElementById('rounds-plot').naturalWidth") > 100
    assert "null" not in page.inner_text("main") and "undefined" not in page.inner_text("main")
