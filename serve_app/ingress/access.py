"""Access control of the ingress: optional API keys, a per-key rate limit, and CORS.

- **Keys** (:class:`KeyStore`) come from a keys file and/or an environment variable (on Kubernetes, a
  Secret) and are held only as SHA-256 digests. A line (or an env-var item) is a raw key, at least
  :data:`MIN_KEY_CHARS` characters, or ``sha256:<64 hex>``, so a Secret may hold hashes only. A presented
  key is hashed and its digest compared with every stored digest by ``hmac.compare_digest`` (no early
  exit). A key is named in logs only by :func:`key_id`, the first 8 hex digits of its digest.
- **Which routes**: with keys set, every ``/v1`` route, ``/metrics`` and ``/integrations/...`` need
  ``Authorization: Bearer <key>`` (or basic auth with the key as password, as Label Studio sends it);
  ``/healthz``, ``/readyz``, the annotation page (``/ui``) and the OpenAPI page stay open
  (:func:`is_protected`). A missing or wrong key gets 401 ``unauthorized`` with ``WWW-Authenticate:
  Bearer``.
- **Rate limit** (:class:`RateLimiter`): a token bucket per key, per ingress replica (the process this
  runs in; no shared state between replicas, so a key may get up to ``replicas x`` the rate). A refused
  request gets 429 ``rate_limited`` with ``Retry-After`` (whole seconds, at least 1).
- **CORS**: Starlette's ``CORSMiddleware`` with the allow-list of origins, off when the list is empty.

The policy is set per process by the Ingress replica (:func:`install_access`, from ``AppArgs.auth``) and
read by the two ASGI middlewares on each request: :class:`CorsFromPolicy` and, inside it,
:class:`RequireKey`, both inside the request-id middleware, so 401/429 carry the request id and are
counted in the ingress metrics.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_app.ingress.errors import ApiError
from serve_app.ingress.metrics import ingress_metrics

log = logging.getLogger("ray.serve")

#: The shortest raw key accepted (a shorter one is refused when the keys are loaded).
MIN_KEY_CHARS = 16
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def key_digest(key: str) -> str:
    """The SHA-256 of a raw key (UTF-8), 64 lower-case hex digits."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id(digest: str) -> str:
    """What logs show of a key: the first 8 hex digits of its digest (never the key)."""
    return digest[:8]


def parse_keys(items: Iterable[str], source: str) -> list[str]:
    """Key entries -> their SHA-256 digests (hex), in order, duplicates dropped.

    Args:
        items: entries, each a raw key or ``sha256:<64 hex>``; blank ones and ``#`` comments are skipped,
            surrounding whitespace ignored.
        source: where they come from (``keys_file /path``, ``$SAMGRAPH_API_KEYS``), for error messages.

    Raises:
        ValueError: an entry shorter than :data:`MIN_KEY_CHARS` or a malformed ``sha256:`` digest; the
            message names ``source`` and the entry's position, never its text.
    """
    digests: list[str] = []
    for n, raw in enumerate(items, 1):
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        if item.lower().startswith("sha256:"):
            digest = item[7:].strip().lower()
            if not _HEX_DIGEST.fullmatch(digest):
                raise ValueError(f"{source}: entry {n} is 'sha256:' without 64 hex digits")
        elif len(item) < MIN_KEY_CHARS:
            raise ValueError(f"{source}: entry {n} is shorter than {MIN_KEY_CHARS} characters; use a longer key")
        else:
            digest = key_digest(item)
        if digest not in digests:
            digests.append(digest)
    return digests


class KeyStore:
    """The accepted keys, as SHA-256 digests.

    Args:
        digests: hex SHA-256 digests (see :func:`parse_keys`); empty means no key is accepted.
    """

    def __init__(self, digests: Iterable[str]) -> None:
        self._digests = tuple(bytes.fromhex(d) for d in digests)

    def __len__(self) -> int:
        return len(self._digests)

    def ids(self) -> list[str]:
        """:func:`key_id` of every stored key."""
        return [key_id(d.hex()) for d in self._digests]

    def match(self, presented: str) -> str | None:
        """The :func:`key_id` of the stored key equal to ``presented``, else None.

        The presented key's digest is compared with every stored digest in constant time, all of them
        whatever matches, so the answer time does not depend on how much of a key is right.
        """
        candidate = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found = None
        for d in self._digests:
            if hmac.compare_digest(candidate, d):
                found = d
        return key_id(found.hex()) if found is not None else None


def load_keys(keys_file: str | None, keys_env: str | None, environ: Mapping[str, str] | None = None) -> KeyStore:
    """The keys of a keys file (one entry a line) and of an environment variable (entries separated by
    commas, spaces or newlines), together.

    Args:
        keys_file: path of the keys file, or None.
        keys_env: name of the environment variable, or None; unset or empty adds no key.
        environ: the environment (default ``os.environ``).

    Raises:
        ValueError: ``auth.keys_file`` missing or unreadable, or holding no key; a malformed entry (see
            :func:`parse_keys`).
    """
    env = os.environ if environ is None else environ
    digests: list[str] = []
    if keys_file is not None:
        try:
            text = Path(keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(
                f"auth.keys_file: cannot read {keys_file!r}: {type(e).__name__}: {getattr(e, 'strerror', None) or e}"
            ) from None
        digests = parse_keys(text.splitlines(), f"auth.keys_file {keys_file}")
        if not digests:
            raise ValueError(f"auth.keys_file: {keys_file!r} holds no key (one raw key or sha256:<hex> a line)")
    if keys_env:
        for d in parse_keys(re.split(r"[,\s]+", env.get(keys_env, "")), f"${keys_env}"):
            if d not in digests:
                digests.append(d)
    return KeyStore(digests)


class RateLimiter:
    """Token buckets, one per key: ``burst`` requests at once, refilled at ``requests_per_minute``.

    Args:
        requests_per_minute: refill rate, > 0.
        burst: bucket size, >= 1.
        clock: seconds, monotonic (tests inject a fake one).

    Raises:
        ValueError: ``requests_per_minute`` not above 0 or ``burst`` below 1.
    """

    def __init__(self, requests_per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not requests_per_minute > 0:
            raise ValueError(f"requests_per_minute must be greater than 0; got {requests_per_minute}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1; got {burst}")
        self.rate_per_s = requests_per_minute / 60.0
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at); bounded by the keys
        self._lock = threading.Lock()

    def take(self, key: str) -> float | None:
        """Spend one token of ``key``'s bucket: None when allowed, else the seconds until one is back."""
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s


@dataclass(frozen=True)
class AccessPolicy:
    """What the middlewares enforce: no keys and no origins means everything open, CORS off.

    Attributes:
        keys: the accepted keys (None or empty: no key needed).
        limiter: the per-key rate limit (None: none); applies only to requests with a valid key.
        cors_origins: origins allowed cross-origin requests (``"*"`` for any); empty: CORS off.
    """

    keys: KeyStore | None = None
    limiter: RateLimiter | None = None
    cors_origins: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, auth, environ: Mapping[str, str] | None = None, require_keys: bool = False) -> AccessPolicy:
        """The policy of :class:`serve_app.config.AuthArgs` (keys loaded from its file and env var).

        Args:
            auth: the ``auth`` app args.
            environ: the environment (default ``os.environ``).
            require_keys: the app was built (by the pre-flight) with keys, so finding none here means this
                process lacks the keys variable: refuse rather than serve an open API.

        Raises:
            ValueError: as :func:`load_keys`; no key found with ``require_keys``.
        """
        keys = load_keys(auth.keys_file, auth.keys_env, environ)
        if require_keys and not len(keys):
            raise ValueError(
                f"auth: the app was built with API keys but this replica finds none: set ${auth.keys_env} on every node"
            )
        limiter = None
        if auth.requests_per_minute is not None:
            burst = auth.burst if auth.burst is not None else max(1, math.ceil(auth.requests_per_minute / 6))
            limiter = RateLimiter(auth.requests_per_minute, burst)
        return cls(keys if len(keys) else None, limiter, tuple(auth.cors_origins))

    def describe(self) -> str:
        """One log line: key ids, limit and origins (never a key)."""
        keys = f"{len(self.keys)} API keys ({', '.join(self.keys.ids())})" if self.keys else "no API keys (open)"
        limit = (
            f"{self.limiter.rate_per_s * 60:g}/min per key, burst {self.limiter.burst}"
            if self.limiter
            else "no rate limit"
        )
        if self.limiter and not self.keys:
            limit += " (not applied: it counts per key and no keys are set)"
        return f"access: {keys}; {limit}; CORS origins {list(self.cors_origins) or 'none'}"


_POLICY: AccessPolicy | None = None


def install_access(policy: AccessPolicy) -> AccessPolicy:
    """Make ``policy`` this process's access policy (the Ingress replica calls it in ``__init__``)."""
    global _POLICY
    _POLICY = policy
    return policy


def access_policy() -> AccessPolicy | None:
    """This process's access policy (None until an Ingress replica installed one: everything open)."""
    return _POLICY


def is_protected(path: str) -> bool:
    """Whether a path (relative to the app root) needs a key when keys are set: ``/v1...``, ``/metrics`` and
    the integrations (``/integrations/...``, e.g. the Label Studio backend)."""
    return path == "/metrics" or path == "/v1" or path.startswith(("/v1/", "/integrations/"))


def _app_path(scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _bearer(scope) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>``, or HTTP basic auth whose password is
    the key (any user name): what Label Studio sends to an ML backend set up with basic auth."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() == "basic" and token:
                try:
                    token = base64.b64decode(token, validate=True).decode("utf-8").partition(":")[2]
                except (ValueError, UnicodeDecodeError):
                    return None
                return token or None
            return token if scheme.lower() == "bearer" and token else None
    return None


class RequireKey:
    """ASGI middleware: with keys set, a protected path needs a valid bearer key, within its rate limit.

    Args:
        app: the ASGI app inside.
        policy: a fixed policy (tests); None reads :func:`access_policy` on each request.

    Answers 401 ``unauthorized`` (``WWW-Authenticate: Bearer``) for a missing or wrong key and 429
    ``rate_limited`` (``Retry-After``) past the key's limit, as the API's error body with the request id.
    The accepted key's :func:`key_id` is left in ``request.state.api_key_id``.
    """

    def __init__(self, app, policy: AccessPolicy | None = None) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send) -> None:
        policy = self.policy or access_policy()
        if scope["type"] != "http" or policy is None or not policy.keys or not is_protected(_app_path(scope)):
            return await self.app(scope, receive, send)
        request = Request(scope)
        rid = getattr(request.state, "request_id", None)
        token = _bearer(scope)
        kid = policy.keys.match(token) if token is not None else None
        if kid is None:
            why = "missing API key: send Authorization: Bearer <key>" if token is None else "invalid API key"
            log.info("request %s: 401 %s", rid or "-", "no key" if token is None else "wrong key")
            err = ApiError(401, "unauthorized", why, headers={"WWW-Authenticate": "Bearer"})
            return await JSONResponse(err.body(rid), 401, headers=err.headers)(scope, receive, send)
        request.state.api_key_id = kid
        wait_s = policy.limiter.take(kid) if policy.limiter is not None else None
        if wait_s is not None:
            log.info("request %s: 429 key %s over its rate limit", rid or "-", kid)
            err = ApiError(
                429,
                "rate_limited",
                f"this key is over its limit of {policy.limiter.rate_per_s * 60:g} requests a minute; retry later",
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )
            if (m := ingress_metrics()) is not None:  # before routing: no route template to label it with
                m.refusal("-", "rate_limited")
            return await JSONResponse(err.body(rid), 429, headers=err.headers)(scope, receive, send)
        return await self.app(scope, receive, send)


#: What a cross-origin page may send and read.
CORS_METHODS = ("GET", "POST", "DELETE")
CORS_HEADERS = ("authorization", "content-type", "x-request-id")
CORS_EXPOSE = ("x-request-id", "retry-after")


class CorsFromPolicy:
    """ASGI middleware: Starlette's ``CORSMiddleware`` with the policy's origins; a pass-through when the
    list is empty (the default).

    Args:
        app: the ASGI app inside.
        policy: a fixed policy (tests); None reads :func:`access_policy` on each request.
    """

    def __init__(self, app, policy: AccessPolicy | None = None) -> None:
        self.app = app
        self.policy = policy
        self._cors: tuple[AccessPolicy, CORSMiddleware] | None = None  # built once per policy

    async def __call__(self, scope, receive, send) -> None:
        policy = self.policy or access_policy()
        if scope["type"] != "http" or policy is None or not policy.cors_origins:
            return await self.app(scope, receive, send)
        if self._cors is None or self._cors[0] is not policy:
            self._cors = (
                policy,
                CORSMiddleware(
                    self.app,
                    allow_origins=list(policy.cors_origins),
                    allow_methods=list(CORS_METHODS),
                    allow_headers=list(CORS_HEADERS),
                    expose_headers=list(CORS_EXPOSE),
                    max_age=600,
                ),
            )
        return await self._cors[1](scope, receive, send)
