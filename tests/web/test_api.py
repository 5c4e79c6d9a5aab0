"""The console's JSON API against a real store (SQLite and PostgreSQL) holding real trees."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from console_data import QUESTION, SCRIPT_TAG, TOKEN, search
from rstar_core.types import Problem
from rstar_web import WebSettings, create_app


@pytest.fixture
def client(store, tasks):
    app = create_app(WebSettings(live_poll_s=0.05), store=store)
    with TestClient(app) as client:
        yield client


def test_runs_list_counts_states_results_and_throughput(client, tasks):
    [run] = client.get("/api/runs").json()
    assert run["name"] == "demo" and run["config_name"] == "round1"
    assert run["states"] == {"queued": 1, "running": 1, "done": 1, "failed": 1, "cancelled": 0}
    assert (run["results"], run["solved"], run["known"], run["accuracy"]) == (1, 1, 1, 1.0)
    assert run["tokens"] > 0 and run["problems_per_min"] > 0


def test_run_detail_has_rounds_and_batches(client):
    run = client.get("/api/runs/demo").json()
    assert [r["round"] for r in run["rounds"]] == [1]
    assert run["rounds"][0]["total"] == 4
    [batch] = run["batches"]
    assert batch["source"] == "demo.jsonl" and batch["n_problems"] == 4 and batch["states"]["done"] == 1
    assert client.get("/api/runs/nope").status_code == 404
    assert client.get("/api/runs/nope").json() == {"detail": "no run named 'nope'"}


def test_task_list_pages_and_filters(client, tasks):
    page = client.get("/api/tasks", params={"run": "demo", "limit": 2}).json()
    assert page["total"] == 4 and [t["id"] for t in page["tasks"]] == [tasks["done"], tasks["running"]]
    done, running = page["tasks"]
    assert done["answer"] == "7" and done["correct"] is True and done["difficulty"] in ("easy", "medium")
    assert running["live_nodes"] > 1 and running["answer"] is None
    failed = client.get("/api/tasks", params={"run": "demo", "state": "failed"}).json()["tasks"]
    assert [t["problem"] for t in failed] == ["p-failed"] and failed[0]["last_error"].startswith("RuntimeError")
    bad = client.get("/api/tasks", params={"run": "demo", "state": "sleeping"})
    assert bad.status_code == 400 and "state must be one of" in bad.json()["detail"]


def test_final_tree_with_chosen_path_and_dropped_examples(client, tasks):
    task = client.get(f"/api/tasks/{tasks['done']}").json()
    assert task["problem"] == {"id": "p-done", "question": QUESTION, "answer": "7"}
    assert task["result"]["answer"] == "7" and task["snapshot"] is None
    payload = client.get(f"/api/tasks/{tasks['done']}/tree").json()
    assert payload["final"] is True and payload["answer"] == "7"
    nodes = payload["tree"]["nodes"]
    path = payload["chosen_path"]
    assert path[0] == 0 and nodes[path[-1]]["answer"] == "7" and nodes[path[-1]]["terminal"] == "answer"
    assert all(nodes[child]["parent"] == parent for parent, child in zip(path, path[1:]))
    assert any("NameError" in d["reason"] for d in payload["tree"]["dropped_examples"])
    # Model text comes back as data, untouched: escaping is the page's job.
    assert any(SCRIPT_TAG in n["output"] for n in nodes)


def test_running_task_serves_its_snapshot(client, tasks):
    payload = client.get(f"/api/tasks/{tasks['running']}/tree").json()
    assert payload["final"] is False and payload["seq"] == 1 and payload["chosen_path"] == []
    assert len(payload["tree"]["nodes"]) > 1
    queued = client.get(f"/api/tasks/{tasks['queued']}/tree")
    assert queued.status_code == 404 and "has no tree yet" in queued.json()["detail"]
    assert client.get("/api/tasks/999999").status_code == 404


def test_snapshots_stop_when_the_result_is_recorded(store, tasks):
    running = tasks["running"]
    tree = asyncio.run(search(Problem("How many legs do 2 cats have?", "8"), rollouts=2)).tree
    assert store.save_snapshot(running, tree.to_dict()) == 2
    assert store.record_result(running, asyncio.run(search(Problem("How many legs do 2 cats have?", "8"))))
    assert store.get_snapshot(running) is None
    # A late snapshot of a finished task is refused, so it never shadows the final tree.
    assert store.save_snapshot(running, tree.to_dict()) is None
    assert store.get_snapshot(running) is None
    with pytest.raises(LookupError):
        store.save_snapshot(999999, tree.to_dict())


def _events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_events_stream_a_finished_task_as_final(client, tasks):
    with client.stream("GET", f"/api/tasks/{tasks['done']}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response.read().decode())
    assert [kind for kind, _ in events] == ["final"] and events[0][1]["answer"] == "7"


def test_events_of_a_failed_task_end(client, tasks):
    with client.stream("GET", f"/api/tasks/{tasks['failed']}/events") as response:
        events = _events(response.read().decode())
    assert events == [("state", {"state": "failed"}), ("end", {"reason": "the task is failed"})]


def test_models_and_rounds(client, store):
    store.add_model_version("base-1", "policy", "/models/base-1")
    store.add_model_version("sft-r1", "policy", "/models/sft-r1", round=1, parent="base-1", run="demo",
                            metrics={"loss": 0.5})
    store.promote_model("sft-r1")
    models = client.get("/api/models").json()
    assert {m["version"]: (m["parent"], m["status"]) for m in models} == {
        "base-1": (None, "candidate"), "sft-r1": ("base-1", "promoted")}
    store.start_evolve_step("demo", 0, "evaluate_base")
    store.finish_evolve_step("demo", 0, "evaluate_base", {
        "greedy_gsm8k": [True, False, False, True], "greedy_practice": {}, "wall_s": 1.0})
    store.start_evolve_step("demo", 1, "evaluate")
    store.finish_evolve_step("demo", 1, "evaluate", {
        "greedy_gsm8k": [True, True, False, True], "greedy_practice": {}, "wall_s": 1.0})
    rounds = client.get("/api/rounds/demo").json()
    assert [r["round"] for r in rounds["rows"]] == ["base", 1]
    assert rounds["rows"][1]["heldout_accuracy"]["rate"] == 0.75
    assert {s["step"] for s in rounds["steps"]} == {"evaluate_base", "evaluate"}


def test_pages_are_served_with_a_strict_content_policy(client):
    for path in ("/", "/runs/demo", "/tasks/1", "/rounds/demo", "/models", "/enqueue"):
        response = client.get(path)
        assert response.status_code == 200 and "<main id=\"app\">" in response.text
        assert "script-src 'self'" in response.headers["content-security-policy"]
    docs = client.get("/docs").text
    assert "/vendor/swagger/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/vendor/swagger/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/runs", "/api/tasks/{task_id}/tree", "/api/tasks/{task_id}/events", "/api/enqueue"} <= set(spec["paths"])


def test_static_files_use_no_remote_resources():
    from rstar_web.app import STATIC

    for path in STATIC.iterdir():
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, path
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, path
