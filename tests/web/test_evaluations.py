"""The console's evaluations API over report folders `rstar eval` wrote (see eval_data), and its
refusal to serve anything but the known files of report folders inside the configured roots."""

from __future__ import annotations

import json
import os

import pytest
from fastapi.testclient import TestClient

from eval_data import PNG, eval_reports, evolve_run, fake_engine, no_models  # noqa: F401 - fixtures
from rstar_store import Store
from rstar_web import WebSettings, create_app
from rstar_web.evaluations import EvalReports


@pytest.fixture
def client(eval_reports):
    # The store `evolve_run` recorded the round table of `evo` in.
    store = Store.from_url(f"sqlite:///{eval_reports['eval_dir'].parent}/rstar.db")
    settings = WebSettings(eval_dir=str(eval_reports["eval_dir"]), evolve_dir=str(eval_reports["evolve_dir"]))
    with TestClient(create_app(settings, store=store)) as client:
        yield client
    store.close()


def test_reports_are_listed_with_their_evolve_run(client, eval_reports):
    listed = {r["id"]: r for r in client.get("/api/evaluations").json()}
    assert sorted(listed) == sorted(eval_reports["ids"])
    plain, of_run = listed["eval/problems-maj"], listed["evolve/evo/eval/problems-maj"]
    assert plain["run"] is None and plain["n_runs"] == 2 and plain["command"].startswith("rstar eval --benchmark")
    assert plain["plot"] == "/api/evaluation-files/eval/problems-maj/accuracy.png" and plain["rounds_plot"] is None
    assert of_run["run"] == "evo" and of_run["rounds_plot"].endswith("/rounds.png")
    # What the Rounds page asks for: the evaluations of one evolve run.
    assert [r["id"] for r in client.get("/api/evaluations", params={"run": "evo"}).json()] == [of_run["id"]]
    assert client.get("/api/evaluations", params={"run": "nope"}).json() == []
    assert client.get("/api/rounds/evo").json()["rows"][1]["round"] == 1


def test_a_report_has_its_table_comparisons_and_plot(client, eval_reports):
    folder = eval_reports["eval_dir"] / "problems-maj"
    written = json.loads((folder / "summary.json").read_text())
    report = client.get("/api/evaluations/eval/problems-maj").json()
    assert report["summary_written"] is True and report["groups"] == written["groups"]
    assert [(g["method"], g["N"]) for g in report["groups"]] == [("greedy", 1), ("maj", 1), ("maj", 3)]
    for g in report["groups"]:
        # 3 items, 2 with a gold answer; 5 + 5 is always answered wrong.
        assert (g["items"], g["graded"]) == (3, 2) and g["ci_low"] <= g["accuracy"] <= g["ci_high"]
        assert g["tokens_per_item"] > 0
    pairs = {(c["a"], c["b"]) for c in report["comparisons"]}
    assert ("greedy@1", "maj@1") in pairs and ("maj@3", "greedy@1") in pairs
    assert len(report["runs"]) == 2 and report["date"] and report["machine"]

    plot = client.get(report["plot"])
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert plot.content == (folder / "accuracy.png").read_bytes() and plot.content[:8] == PNG
    markdown = client.get(report["markdown"])
    assert markdown.headers["content-type"].startswith("text/markdown") and "| maj@3 | maj@1 |" in markdown.text
    rounds = client.get("/api/evaluations/evolve/evo/eval/problems-maj").json()
    assert client.get(rounds["rounds_plot"]).content[:8] == PNG

    # Without summary.json (a run killed before its reports) the table is computed from the rows.
    (folder / "summary.json").unlink()
    again = client.get("/api/evaluations/eval/problems-maj").json()
    assert again["summary_written"] is False and again["groups"] == written["groups"]


def test_nothing_outside_the_report_folders_is_served(client, eval_reports):
    eval_dir = eval_reports["eval_dir"]
    # A report-shaped folder beside the root, and a link to it from inside the root.
    outside = eval_dir.parent / "outside"
    outside.mkdir()
    (outside / "items.jsonl").write_text("")
    (outside / "accuracy.png").write_bytes(PNG + b"secret")
    (outside / "report.md").write_text("secret")
    os.symlink(outside, eval_dir / "link")
    os.symlink(outside / "report.md", eval_dir / "problems-maj" / "linked.md")
    for path in ("/api/evaluations/eval/..%2Foutside", "/api/evaluations/eval/link",
                 "/api/evaluations/evolve/..%2F..%2Foutside", "/api/evaluations/outside",
                 "/api/evaluation-files/eval/..%2Foutside/accuracy.png", "/api/evaluation-files/eval/link/accuracy.png",
                 "/api/evaluation-files/eval/problems-maj/items.jsonl",
                 "/api/evaluation-files/eval/problems-maj/summary.json",
                 "/api/evaluation-files/eval/problems-maj/linked.md",
                 "/api/evaluation-files/eval/problems-maj/..%2F..%2Foutside%2Freport.md",
                 "/api/evaluation-files/eval/problems-maj%2F..%2F..%2Foutside/report.md"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert b"secret" not in response.content
    assert client.get("/api/evaluations", params={"run": "../.."}).status_code == 400
    assert "eval/link" not in {r["id"] for r in client.get("/api/evaluations").json()}

    # The same names, whatever a client or proxy does to the URL.
    reports = EvalReports(eval_dir, eval_reports["evolve_dir"])
    for name in ("eval/../outside", "eval/link", "eval//problems-maj", "eval/./problems-maj", "evolve/../../outside",
                 f"eval/{outside}", "/etc"):
        with pytest.raises(LookupError):
            reports.folder(name)
    with pytest.raises(LookupError):
        reports.file("eval/problems-maj", "../../outside/report.md")


def test_the_api_is_documented_and_the_pages_are_served(client):
    schema = client.get("/openapi.json").json()
    for path in ("/api/evaluations", "/api/evaluations/{report_id}", "/api/evaluation-files/{report_id}/{name}"):
        assert schema["paths"][path]["get"]["tags"] == ["evaluations"], path
    for page in ("/evaluations", "/evaluations/eval/problems-maj"):
        response = client.get(page)
        assert response.status_code == 200 and 'data-page="evaluation' in response.text
