"""Enqueue by upload: `rstar enqueue`'s validation and one-line errors, nothing half-enqueued."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError

from console_data import TOKEN
from rstar_cli.main import main as rstar
from rstar_web import WebSettings, create_app

AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD = b'{"id": "a", "question": "What is 1 + 1?", "answer": "2"}\n{"id": "b", "question": "What is 2 + 3?"}\n'


@pytest.fixture
def sent(monkeypatch):
    """The broker's side of publishing, recorded instead of sent (the shared broker has live workers)."""
    from rstar_worker.app import app

    messages = []
    monkeypatch.setattr(app, "send_task", lambda name, args, queue, priority: messages.append((name, args, queue)))
    return messages


@pytest.fixture
def client(store):
    with TestClient(create_app(WebSettings(token=TOKEN), store=store)) as client:
        yield client


def _post(client, name, content, **form):
    return client.post("/api/enqueue", data={"run": "up", **form}, files={"file": (name, content)}, headers=AUTH)


@pytest.mark.parametrize("name, content", [
    ("bad.jsonl", b'{"question": "ok?"}\n{"question": \n'),
    ("bad.jsonl", b'{"question": "ok?"}\n{"answer": "1"}\n'),
    ("bad.json", b'{"question": "not an array"}'),
    ("bad.jsonl", b""),
])
def test_a_bad_file_gets_the_cli_error_line_and_enqueues_nothing(client, store, db_url, tmp_path, monkeypatch,
                                                                  capsys, sent, name, content):
    response = _post(client, name, content)
    assert response.status_code == 400
    # The CLI, given the same file under the same name, prints the same line.
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content)
    monkeypatch.setenv("RSTAR_DATABASE_URL", db_url)
    assert rstar(["enqueue", name, "--run", "up"]) == 2
    assert capsys.readouterr().err.strip() == f"rstar: error: {response.json()['detail']}"
    assert client.get("/api/runs").json() == [] and sent == []


def test_an_unknown_recipe_or_round_is_refused(client, sent):
    response = _post(client, "p.jsonl", GOOD, recipe="no-such-recipe")
    assert response.status_code == 400 and response.json()["detail"].startswith("unknown config 'no-such-recipe'")
    response = _post(client, "p.jsonl", GOOD, round="0")
    assert response.status_code == 400 and response.json()["detail"] == "round must be >= 1, got 0"
    assert client.get("/api/runs").json() == [] and sent == []


def test_a_good_file_is_recorded_and_published(client, sent):
    response = _post(client, "p.jsonl", GOOD, recipe="round1")
    assert response.status_code == 200
    assert response.json()["message"] == "run up round 1: 2 problems, 2 new tasks, 2 published to 'search'"
    page = client.get("/api/tasks", params={"run": "up"}).json()
    assert [t["problem"] for t in page["tasks"]] == ["a", "b"] and {t["state"] for t in page["tasks"]} == {"queued"}
    assert [args for _, args, _ in sent] == [[t["id"]] for t in page["tasks"]]
    [batch] = client.get("/api/runs/up").json()["batches"]
    assert batch["source"] == "upload:p.jsonl"


def test_an_unreachable_broker_says_the_batch_is_recorded(client, monkeypatch):
    from rstar_worker.app import app

    def down(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(app, "send_task", down)
    response = _post(client, "p.jsonl", GOOD)
    assert response.status_code == 503
    assert "the batch is recorded: run the same command again" in response.json()["detail"]


def test_a_recipe_must_be_a_name_not_a_path(client, sent):
    for recipe in ("/etc/rstar.yaml", "../deploy/configs/round1", "x.yml"):
        response = _post(client, "p.jsonl", GOOD, recipe=recipe)
        assert response.status_code == 400 and "must be a recipe name" in response.json()["detail"]
