"""Access control without Ray: the key store, the constant-time matcher, the rate limiter, the auth
settings and the middlewares on a small FastAPI app (the package's own middleware order)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serve_app.config import AppArgs, AuthArgs
from serve_app.ingress import access
from serve_app.ingress.access import (
    AccessPolicy,
    CorsFromPolicy,
    KeyStore,
    RateLimiter,
    RequireKey,
    is_protected,
    key_digest,
    key_id,
    load_keys,
    parse_keys,
)

KEY_A = "a" * 8 + "-key-for-tests-A"
KEY_B = "b" * 8 + "-key-for-tests-B"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------- keys
def test_parse_keys_hashes_raw_keys_and_accepts_digests():
    digest_b = hashlib.sha256(KEY_B.encode()).hexdigest()
    lines = ["# comment", "", f"  {KEY_A}  ", f"sha256:{digest_b.upper()}", KEY_A]
    assert parse_keys(lines, "test") == [key_digest(KEY_A), digest_b]


@pytest.mark.parametrize(("entry", "why"), [("tinykey9", "shorter than 16"), ("sha256:abc123", "64 hex"), ("sha256:" + "g" * 64, "64 hex")])
def test_parse_keys_refuses_bad_entries_without_echoing_them(entry, why):
    with pytest.raises(ValueError, match=why) as e:
        parse_keys(["x" * 20, entry], "auth.keys_file k.txt")
    assert "entry 2" in str(e.value) and "auth.keys_file k.txt" in str(e.value)
    assert entry.removeprefix("sha256:") not in str(e.value)


def test_keystore_matches_only_stored_keys():
    store = KeyStore([key_digest(KEY_A), key_digest(KEY_B)])
    assert store.match(KEY_A) == key_id(key_digest(KEY_A))
    assert store.match(KEY_B) == key_id(key_digest(KEY_B))
    assert store.match(KEY_A[:-1]) is None
    assert store.match(KEY_A + "x") is None
    assert store.match("") is None
    assert len(store) == 2 and store.ids() == [key_digest(KEY_A)[:8], key_digest(KEY_B)[:8]]


def test_keystore_compares_every_digest_in_constant_time(monkeypatch):
    calls, real = [], hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    store = KeyStore([key_digest(KEY_A), key_digest(KEY_B), key_digest("c" * 20)])
    assert store.match(KEY_A) is not None  # the first one matches: the others are still compared
    assert len(calls) == 3
    assert all(a == hashlib.sha256(KEY_A.encode()).digest() for a, _ in calls)  # digests, never the raw key


def test_load_keys_from_file_and_env(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text(f"# team keys\n{KEY_A}\n")
    store = load_keys(str(f), "MY_KEYS", {"MY_KEYS": f" {KEY_B},sha256:{key_digest('c' * 20)}\n"})
    assert store.match(KEY_A) and store.match(KEY_B) and store.match("c" * 20)
    assert len(load_keys(None, "MY_KEYS", {})) == 0


def test_load_keys_missing_or_empty_file_names_the_setting(tmp_path):
    with pytest.raises(ValueError, match="auth.keys_file: cannot read"):
        load_keys(str(tmp_path / "nope.txt"), None, {})
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="auth.keys_file: .* holds no key"):
        load_keys(str(tmp_path / "empty.txt"), None, {})


def test_preflight_fails_fast_on_a_missing_keys_file(tmp_path):
    from serve_app.preflight import preflight

    args = AppArgs.model_validate({"weights": "random", "auth": {"keys_file": str(tmp_path / "missing.txt")}})
    with pytest.raises(ValueError, match="auth.keys_file"):
        preflight(args, clip=False, store=False)


def test_auth_args_validate_origins_and_limits():
    assert AuthArgs().cors_origins == [] and AuthArgs().keys_env == "SAMGRAPH_API_KEYS"
    AuthArgs(cors_origins=["https://label.example.com", "http://127.0.0.1:5173", "*"])
    for bad in ("https://x.example.com/", "x.example.com", "https://x.example.com/path"):
        with pytest.raises(ValidationError, match="not an origin"):
            AuthArgs(cors_origins=[bad])
    with pytest.raises(ValidationError):
        AuthArgs(requests_per_minute=0)
    with pytest.raises(ValidationError):
        AuthArgs(burst=0)


def test_protected_paths():
    assert all(is_protected(p) for p in ("/v1/segment", "/v1/examples/abc", "/v1", "/metrics"))
    assert not any(is_protected(p) for p in ("/healthz", "/readyz", "/ui/", "/ui/api.js", "/docs", "/v1x", "/metricsx"))


# ---------------------------------------------------------------- rate limiter
def test_limiter_allows_a_burst_then_refills_at_the_rate():
    clock = FakeClock()
    lim = RateLimiter(requests_per_minute=60, burst=3, clock=clock)
    assert [lim.take("k") for _ in range(3)] == [None, None, None]
    assert lim.take("k") == pytest.approx(1.0)  # one token a second
    assert lim.take("other") is None  # per key
    clock.t += 0.5
    assert lim.take("k") == pytest.approx(0.5)
    clock.t += 0.5
    assert lim.take("k") is None
    clock.t += 3600  # refills up to the burst, no more
    assert [lim.take("k") for _ in range(4)][-1] is not None


def test_limiter_validates_its_arguments():
    with pytest.raises(ValueError, match="requests_per_minute must be greater than 0"):
        RateLimiter(0, 1)
    with pytest.raises(ValueError, match="burst must be at least 1"):
        RateLimiter(10, 0)


def test_policy_from_args_default_burst_and_description(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text(KEY_A + "\n")
    policy = AccessPolicy.from_args(AuthArgs(keys_file=str(f), requests_per_minute=120), environ={})
    assert policy.limiter.burst == 20 and policy.limiter.rate_per_s == 2
    line = policy.describe()
    assert key_id(key_digest(KEY_A)) in line and KEY_A not in line
    assert AccessPolicy.from_args(AuthArgs(), environ={}).keys is None


# ---------------------------------------------------------------- middlewares
def small_app(policy: AccessPolicy) -> FastAPI:
    """A FastAPI app with the ingress's middleware order: request id outermost, then CORS, then keys."""
    app = FastAPI()
    app.add_middleware(RequireKey, policy=policy)
    app.add_middleware(CorsFromPolicy, policy=policy)
    seen = []

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        request.state.request_id = request.headers.get("x-request-id") or "rid-1"
        response = await call_next(request)
        seen.append(response.status_code)  # what the metrics middleware counts
        response.headers["x-request-id"] = request.state.request_id
        return response

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        return {"ready": True}

    @app.get("/metrics")
    async def metrics():
        return {"m": 1}

    @app.post("/v1/segment")
    async def segment(request: Request):
        return {"key": request.state.api_key_id}

    app.state.seen = seen
    return app


def policy_with(limiter=None, origins=()) -> AccessPolicy:
    return AccessPolicy(KeyStore([key_digest(KEY_A), key_digest(KEY_B)]), limiter, tuple(origins))


def test_middleware_needs_a_key_on_v1_and_metrics_only():
    app = small_app(policy_with())
    c = TestClient(app)
    for path, method in (("/v1/segment", "post"), ("/metrics", "get")):
        r = getattr(c, method)(path)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"error": {"code": "unauthorized", "message": "missing API key: send Authorization: Bearer <key>", "field": None, "request_id": "rid-1"}}
        r = getattr(c, method)(path, headers={"Authorization": "Bearer wrong-key-wrong-key"})
        assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
        r = getattr(c, method)(path, headers={"Authorization": "Basic " + KEY_A})
        assert r.status_code == 401
        assert getattr(c, method)(path, headers={"Authorization": f"bearer {KEY_A}"}).status_code == 200
    assert c.post("/v1/segment", headers={"Authorization": f"Bearer {KEY_B}"}).json() == {"key": key_digest(KEY_B)[:8]}
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    assert 401 in app.state.seen  # the refusals pass through the request-id (metrics) middleware


def test_middleware_is_open_without_keys():
    c = TestClient(small_app(AccessPolicy(KeyStore([]))))
    r = c.get("/metrics")
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_middleware_rate_limits_per_key_with_retry_after():
    clock = FakeClock()
    app = small_app(policy_with(RateLimiter(60, 2, clock=clock)))
    c = TestClient(app)
    a, b = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}
    assert [c.post("/v1/segment", headers=a).status_code for _ in range(2)] == [200, 200]
    r = c.post("/v1/segment", headers={**a, "x-request-id": "rid-9"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "rate_limited" and r.json()["error"]["request_id"] == "rid-9"
    assert c.post("/v1/segment", headers=b).status_code == 200  # another key has its own bucket
    assert c.post("/v1/segment").status_code == 401  # no key: refused before the limiter
    clock.t += 1.0
    assert c.post("/v1/segment", headers=a).status_code == 200


def test_cors_allow_list():
    c = TestClient(small_app(policy_with(origins=["https://label.example.com"])))
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    r = c.options("/v1/segment", headers={"Origin": "https://label.example.com", **pre})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://label.example.com"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = c.options("/v1/segment", headers={"Origin": "https://evil.example.com", **pre})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = c.post("/v1/segment", headers={"Origin": "https://label.example.com"})  # a 401 the page can read
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://label.example.com"
    assert "x-request-id" in r.headers["access-control-expose-headers"]


def test_package_app_orders_the_middlewares():
    """In serve_app's ``api``: request id (outermost), then CORS, then the key check."""
    from serve_app.ingress.deployment import api

    classes = [m.cls.__name__ if hasattr(m.cls, "__name__") else str(m.cls) for m in api.user_middleware]
    assert classes.index("BaseHTTPMiddleware") < classes.index("CorsFromPolicy") < classes.index("RequireKey")


def test_a_replica_without_the_keys_the_app_was_built_with_refuses_to_start(tmp_path, monkeypatch):
    from serve_app.preflight import preflight

    monkeypatch.setenv("SAMGRAPH_API_KEYS", KEY_A)
    args = AppArgs.model_validate({"weights": "random"})
    assert preflight(args, clip=False, store=False).api_keys == 1
    with pytest.raises(ValueError, match=r"finds none: set \$SAMGRAPH_API_KEYS"):
        AccessPolicy.from_args(args.auth, environ={}, require_keys=True)
    assert AccessPolicy.from_args(args.auth, environ={"SAMGRAPH_API_KEYS": KEY_B}, require_keys=True).keys.match(KEY_B)
