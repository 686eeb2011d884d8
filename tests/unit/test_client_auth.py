"""The API key of the client and the CLI (``--api-key`` / ``SAMGRAPH_API_KEY``) against a fake service
(httpx.MockTransport) that needs one."""

from __future__ import annotations

import httpx
import pytest

from serve_app.cli import main as cli
from serve_app.client import ApiResponseError, SamgraphClient

URL = "http://samgraph.test:8000"
KEY = "cli-test-key-0123456789"
COUNTS = {"collection": "default", "dim": 512, "total": 0, "counts": {}, "items": [], "next_offset": None}
UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "missing API key: send Authorization: Bearer <key>", "field": None, "request_id": "r1"}}


def needs_key(seen: list):
    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers.get("authorization"))
        if req.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(401, json=UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
        return httpx.Response(200, json=COUNTS)

    return handler


@pytest.fixture
def fake_service(monkeypatch):
    """Route the CLI's real ``_client`` (with its ``api_key``) to a handler; the headers seen come back."""
    monkeypatch.delenv("SAMGRAPH_API_KEY", raising=False)
    seen: list = []
    monkeypatch.setattr(cli, "SamgraphClient", lambda *a, **k: SamgraphClient(*a, transport=httpx.MockTransport(needs_key(seen)), **k))
    return seen


def test_client_sends_the_key_given_or_from_the_env(monkeypatch):
    monkeypatch.delenv("SAMGRAPH_API_KEY", raising=False)
    seen: list = []
    transport = httpx.MockTransport(needs_key(seen))
    assert SamgraphClient(URL, 5.0, transport=transport, api_key=KEY).list_examples()["dim"] == 512
    with pytest.raises(ApiResponseError) as e:
        SamgraphClient(URL, 5.0, transport=transport).list_examples()
    assert (e.value.status, e.value.code) == (401, "unauthorized")
    monkeypatch.setenv("SAMGRAPH_API_KEY", KEY)
    assert SamgraphClient(URL, 5.0, transport=transport).list_examples()["dim"] == 512
    with pytest.raises(ApiResponseError):
        SamgraphClient(URL, 5.0, transport=transport, api_key="").list_examples()  # "" sends none
    assert seen == [f"Bearer {KEY}", None, f"Bearer {KEY}", None]
    assert KEY not in repr(SamgraphClient(URL, api_key=KEY))


def test_cli_api_key_flag(fake_service, capsys):
    assert cli.main(["examples", "list", "--api", URL, "--api-key", KEY]) == 0
    assert "0 examples" in capsys.readouterr().out
    assert fake_service == [f"Bearer {KEY}"]


def test_cli_api_key_from_env_and_a_hint_on_401(fake_service, monkeypatch, capsys):
    assert cli.main(["examples", "list", "--api", URL]) == 1
    err = capsys.readouterr().err
    assert "401 unauthorized" in err and "--api-key" in err and "SAMGRAPH_API_KEY" in err
    monkeypatch.setenv("SAMGRAPH_API_KEY", KEY)
    assert cli.main(["examples", "list", "--api", URL]) == 0
    assert cli.main(["examples", "list", "--api", URL, "--api-key", "wrong-key-0123456789"]) == 1  # the flag wins
    assert fake_service == [None, f"Bearer {KEY}", "Bearer wrong-key-0123456789"]
