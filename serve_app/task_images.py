"""The images of Label Studio tasks: where a task's image URL is fetched from, and which ``image_id`` a URL
already has, so that every click after the first on a task is a cache hit at the image's owner without
fetching the image again.

A task's image is a URL in its data: Label Studio's own (``/data/upload/...``, ``/data/local-files/?d=...``,
relative to Label Studio's host, or absolute on that host), fetched with ``Authorization: Token <token>``,
any other public ``http(s)`` URL, fetched without credentials, or a ``data:`` URL (base64). Label Studio's
host and token come from ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` on the ingress's nodes, or else
from what Label Studio sent in the project's ``/setup`` (``hostname``, ``access_token``), remembered per
project in the replica that answered it, with the project's backend options (``extra_params``: the model
and the collection, :class:`serve_app.labelstudio.BackendOptions`).

No HTTP layer here (the ingress's Label Studio route and the offline ``samgraph labelstudio prelabel``
both fetch with it): what cannot be fetched raises typed input errors (:class:`ImageUnavailable`,
:class:`deployments.errors.ImageTooLarge`), which the ingress answers as 4xx.
"""

from __future__ import annotations

import base64
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from deployments.errors import ImageTooLarge, InputError
from serve_app.labelstudio import BackendOptions


class ImageUnavailable(InputError):
    """A task's image cannot be had: no URL, a relative URL without a known Label Studio, a scheme other
    than http(s), a bad ``data:`` URL, or its host did not answer 200 (422 ``image_unavailable``)."""

    status, code = 422, "image_unavailable"


@dataclass(frozen=True)
class LabelStudioHost:
    """Where Label Studio serves its files, and the token to read them with.

    Attributes:
        url: its base URL, e.g. ``http://localhost:8080`` (no trailing slash).
        token: a legacy API token (sent as ``Authorization: Token <token>``), or None.
    """

    url: str
    token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LabelStudioHost | None:
        """``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (None when the URL is unset)."""
        env = os.environ if environ is None else environ
        url = env.get("LABEL_STUDIO_URL", "").strip().rstrip("/")
        return cls(url, env.get("LABEL_STUDIO_API_KEY") or None) if url else None


class _Lru:
    """A bounded map with LRU eviction and hit/miss counters (thread-safe)."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1; got {max_entries}")
        self.max_entries = max_entries
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
                self.evictions += 1

    def stats(self) -> dict:
        with self._lock:
            n = len(self._items)
        return {"entries": n, "hits": self.hits, "misses": self.misses, "evictions": self.evictions}


class TaskImages:
    """Fetches task images and remembers each URL's ``image_id`` (bounded, LRU), and what each project's
    ``/setup`` said (its Label Studio host and token, its backend options).

    Args:
        max_bytes: an image over this many bytes is refused (413).
        max_entries: URLs (and projects' setups) remembered.
        timeout_s: per fetch.
        environ: the environment ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` are read from.
    """

    def __init__(
        self, max_bytes: int, max_entries: int = 4096, timeout_s: float = 30.0, environ: Mapping[str, str] | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.ids = _Lru(max_entries)
        self.hosts = _Lru(max_entries)
        self.project_options = _Lru(max_entries)
        self.env_host = LabelStudioHost.from_env(environ)

    def remember_setup(
        self, project: str, hostname: str | None, token: str | None, options: BackendOptions | None = None
    ) -> None:
        """What a project's ``/setup`` said: its Label Studio (used when the environment names none) and its
        backend options (``extra_params``)."""
        if hostname:
            self.hosts.put(project_id(project), LabelStudioHost(hostname.rstrip("/"), token or None))
        if project:
            self.project_options.put(project_id(project), options or BackendOptions())

    def options(self, project: str | None) -> BackendOptions:
        """The backend options of a project's last ``/setup`` here (none remembered: the defaults)."""
        return (self.project_options.get(project_id(project)) if project else None) or BackendOptions()

    def host(self, project: str | None) -> LabelStudioHost | None:
        """The Label Studio of a project: the environment's, else the one its ``/setup`` named."""
        if self.env_host is not None:
            return self.env_host
        return self.hosts.get(project_id(project)) if project else None

    def resolve(self, url: str, host: LabelStudioHost | None) -> tuple[str, dict[str, str]]:
        """(absolute URL, request headers) of a task's image URL.

        Raises:
            ImageUnavailable: not a string, a relative URL without a known Label Studio host, or a scheme
                other than http(s).
        """
        if not isinstance(url, str) or not url:
            raise ImageUnavailable("task image: the task data holds no image URL", "tasks")
        if url.startswith("data:"):
            return url, {}
        parts = urlsplit(url)
        if not parts.scheme:
            if host is None:
                raise ImageUnavailable(
                    f"task image {url[:200]!r} is Label Studio's own file, and samgraph does not know Label "
                    "Studio's address: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY on the samgraph service",
                    "tasks",
                )
            url = urljoin(host.url + "/", url.lstrip("/"))
            parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ImageUnavailable(f"task image: scheme {parts.scheme!r} is not http(s)", "tasks")
        headers = {}
        if host is not None and host.token and urlsplit(host.url).netloc == parts.netloc:
            headers["Authorization"] = f"Token {host.token}"
        return url, headers

    async def fetch(self, url: str, host: LabelStudioHost | None) -> bytes:
        """The image's bytes.

        Raises:
            ImageUnavailable: naming the URL and the reason (unreachable, not 200, a redirect elsewhere).
            ImageTooLarge: over ``max_bytes``.
        """
        absolute, headers = self.resolve(url, host)
        if absolute.startswith("data:"):
            return self._data_url(absolute)
        shown = absolute.split("?")[0][:200]
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
                async with client.stream("GET", absolute, headers=headers) as response:
                    if response.status_code != 200:
                        why = {401: " (check LABEL_STUDIO_API_KEY)", 403: " (check LABEL_STUDIO_API_KEY)"}
                        raise ImageUnavailable(
                            f"task image {shown}: answered {response.status_code}{why.get(response.status_code, '')}",
                            "tasks",
                        )
                    chunks, size = [], 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise ImageTooLarge(f"task image {shown}: over {self.max_bytes} bytes", "tasks")
                        chunks.append(chunk)
        except httpx.HTTPError as e:
            message = f"task image {shown}: {type(e).__name__}: {e}"[:300]
            raise ImageUnavailable(message, "tasks") from None
        return b"".join(chunks)

    def _data_url(self, url: str) -> bytes:
        """The bytes of a ``data:<type>;base64,<data>`` URL (422 for another encoding, 413 over ``max_bytes``)."""
        head, _, payload = url.partition(",")
        if not head.endswith(";base64"):
            raise ImageUnavailable("task image: a data: URL must be base64 (data:<type>;base64,...)", "tasks")
        if len(payload) * 3 // 4 > self.max_bytes:
            raise ImageTooLarge(f"task image: data: URL over {self.max_bytes} bytes", "tasks")
        try:
            return base64.b64decode(payload, validate=True)
        except ValueError:
            raise ImageUnavailable("task image: the data: URL is not valid base64", "tasks") from None


def project_id(project: str | None) -> str:
    """Label Studio's project uid ``"<id>.<created timestamp>"`` -> ``"<id>"``."""
    return str(project or "").split(".", 1)[0]
