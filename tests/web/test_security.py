"""Who may read and who may enqueue: loopback without a token, anything else with it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from console_data import TOKEN
from rstar_web import WebSettings, create_app


def _client(store, **settings) -> TestClient:
    return TestClient(create_app(WebSettings(**settings), store=store))


def test_settings_refuse_an_open_address_without_a_token():
    with pytest.raises(ValueError, match="needs RSTAR_WEB_TOKEN"):
        WebSettings(host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 16 characters"):
        WebSettings(token="short")
    assert not WebSettings(host="localhost").token_required
    assert WebSettings(host="0.0.0.0", token=TOKEN).token_required


def test_loopback_reads_without_a_token_but_enqueue_needs_one(store, tasks):
    with _client(store) as client:
        assert client.get("/api/runs").status_code == 200
        response = client.post("/api/enqueue", data={"run": "x"}, files={"file": ("p.jsonl", b"{}")})
        assert response.status_code == 403 and "RSTAR_WEB_TOKEN" in response.json()["detail"]
    with _client(store, token=TOKEN) as client:
        assert client.get("/api/runs").status_code == 200
        response = client.post("/api/enqueue", data={"run": "x"}, files={"file": ("p.jsonl", b"{}")})
        assert response.status_code == 401
        # A cookie alone never enqueues (a cross-site form could send it).
        client.cookies.set("rstar_token", TOKEN)
        response = client.post("/api/enqueue", data={"run": "x"}, files={"file": ("p.jsonl", b"{}")})
        assert response.status_code == 401
        response = client.post("/api/enqueue", data={"run": "x"}, files={"file": ("p.jsonl", b"{}")},
                               headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 400  # past the token: the file is checked


def test_an_open_address_needs_the_token_for_every_request(store, tasks):
    with _client(store, host="0.0.0.0", token=TOKEN) as client:
        for path in ("/api/runs", "/", "/static/console.js", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 401, path
        assert client.get("/api/runs", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        assert client.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        # Probes need no secret; the answer tells nothing but "up".
        assert client.get("/healthz").json() == {"status": "ok"}
        # A browser opens one page with ?token=; the cookie carries it to every later request.
        first = client.get(f"/?token={TOKEN}")
        assert first.status_code == 200 and "httponly" in first.headers["set-cookie"].lower()
        assert client.get("/api/runs").status_code == 200
        assert client.get(f"/api/tasks/{tasks['done']}/tree").status_code == 200
