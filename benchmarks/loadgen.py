"""An async HTTP load generator for samgraph (and the naive-server baseline), bounded in requests and time.

Closed loop: ``concurrency`` clients each run sessions back to back (a session is one or more requests
that depend on each other, such as an upload followed by clicks on the returned ``image_id``). No client
starts a request after ``max_requests`` have been started or ``max_seconds`` have passed; requests
already sent finish (each is bounded by ``request_timeout_s``). Only loopback addresses are allowed.

Workloads (see :func:`fresh_sessions`, :func:`interactive_sessions`, :func:`predict_sessions`):
  fresh       - every request a new image with one box (one encode + one decode each);
  interactive - per client one image, then 8 clicks on it (points, every other one with a background
                point), as an annotation tool sends them;
  predict     - /v1/predict on real photos, a new image each time.

Images are real photos (COCO val2017 subset and SAM 2's examples from ``../shared/data``). Each use
gets a unique JPEG comment segment, so its bytes (and samgraph's content-hash ``image_id``) are new
while its pixels, and so the compute, are those of the photo.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from benchmarks.closed_loop import Budget, LoopState, closed_loop
from benchmarks.common import b64

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Photo:
    """A real photo and one object in it.

    Attributes:
        name: file name.
        jpeg: the file's bytes.
        width, height: pixels.
        box_xyxy: [x0, y0, x1, y1] pixels of the original image (COCO's largest annotated object, or
            SAM 2's own example box for truck.jpg).
    """

    name: str
    jpeg: bytes
    width: int
    height: int
    box_xyxy: tuple[float, float, float, float]


def load_photos(shared_data: Path, limit: int | None = None) -> list[Photo]:
    """SAM 2's truck (box [75, 275, 1725, 850]) and the COCO subset images with their largest object.

    Raises:
        FileNotFoundError: ``shared_data`` has neither.
    """
    photos = []
    truck = shared_data / "images" / "truck.jpg"
    if truck.exists():
        photos.append(Photo("truck.jpg", truck.read_bytes(), 1800, 1200, (75.0, 275.0, 1725.0, 850.0)))
    ann_file = shared_data / "coco_subset" / "annotations" / "instances_val2017_subset32.json"
    if ann_file.exists():
        coco = json.loads(ann_file.read_text())
        largest: dict[int, dict] = {}
        for a in coco["annotations"]:
            if not a.get("iscrowd") and a["area"] > largest.get(a["image_id"], {"area": -1})["area"]:
                largest[a["image_id"]] = a
        for img in coco["images"]:
            a = largest.get(img["id"])
            if a is None:
                continue
            x, y, w, h = a["bbox"]
            path = shared_data / "coco_subset" / "val2017" / img["file_name"]
            photos.append(Photo(img["file_name"], path.read_bytes(), img["width"], img["height"], (x, y, x + w, y + h)))
    if not photos:
        raise FileNotFoundError(f"no photos under {shared_data} (images/truck.jpg, coco_subset/)")
    return photos[:limit]


def unique_jpeg(jpeg: bytes, tag: int) -> bytes:
    """The same JPEG with a comment segment (``FF FE``) after SOI holding ``tag``: new bytes, same pixels."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    comment = f"samgraph-loadgen {tag}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


# A session is a generator: it yields (path, json body, kind) and receives each response's JSON (or None
# after a failure, which ends the session).
Session = Iterator[tuple[str, dict, str]]
SessionFactory = Callable[[int], Session]


def fresh_sessions(photos: list[Photo]) -> SessionFactory:
    """One request per session: a new image and its box (``kind="fresh"``)."""

    def session(n: int) -> Session:
        photo = photos[n % len(photos)]
        yield "/v1/segment", {"image": {"base64": b64(unique_jpeg(photo.jpeg, n))}, "prompts": [{"box_xyxy": list(photo.box_xyxy)}]}, "fresh"

    return session


def click_points(photo: Photo, n_clicks: int, seed: int) -> list[list[list[float | int]]]:
    """``n_clicks`` point prompts on ``photo``: a foreground click inside its box, and on every other
    click also a background click outside the box (or in a corner when the box fills the image)."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = photo.box_xyxy
    clicks = []
    for i in range(n_clicks):
        fg = [float(rng.uniform(x0 + 0.3 * (x1 - x0), x1 - 0.3 * (x1 - x0))), float(rng.uniform(y0 + 0.3 * (y1 - y0), y1 - 0.3 * (y1 - y0))), 1]
        points = [fg]
        if i % 2 == 1:
            bx = float(rng.uniform(0, x0)) if x0 > 8 else float(rng.uniform(x1, photo.width - 1)) if x1 < photo.width - 8 else 2.0
            points.append([bx, float(rng.uniform(0, photo.height - 1)), 0])
        clicks.append(points)
    return clicks


def interactive_sessions(photos: list[Photo], n_clicks: int = 8, use_image_id: bool = True) -> SessionFactory:
    """An annotation session: upload one image with a first click (``kind="upload"``), then ``n_clicks``
    clicks on it (``kind="click"``) by ``image_id`` (samgraph) or with the image resent
    (``use_image_id=False``: the naive server has no cache)."""

    def session(n: int) -> Session:
        photo = photos[n % len(photos)]
        data = b64(unique_jpeg(photo.jpeg, n))
        first, *clicks = click_points(photo, n_clicks + 1, seed=n)
        response = yield "/v1/segment", {"image": {"base64": data}, "prompts": [{"points": first}]}, "upload"
        if response is None:
            return
        image = {"image_id": response["image_id"]} if use_image_id else {"image": {"base64": data}}
        for points in clicks:
            response = yield "/v1/segment", {**image, "prompts": [{"points": points}]}, "click"
            if response is None:
                return

    return session


def predict_sessions(photos: list[Photo], body: dict) -> SessionFactory:
    """One /v1/predict per session on a new image, with ``body`` (collection, amg, top_k, ...) added."""

    def session(n: int) -> Session:
        photo = photos[n % len(photos)]
        yield "/v1/predict", {**body, "image": {"base64": b64(unique_jpeg(photo.jpeg, n))}}, "predict"

    return session


@dataclass
class Record:
    """One request: kind, HTTP status (0: no answer), start and end (s, monotonic), server timings."""

    kind: str
    status: int
    start_s: float
    end_s: float
    timing_ms: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s


def check_loopback(url: str) -> None:
    """Raises ValueError unless ``url`` is on the loopback interface."""
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"the load generator only targets loopback ({', '.join(sorted(LOOPBACK))}); got {host!r}")


async def run_load(
    url: str,
    sessions: SessionFactory,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    request_timeout_s: float = 900.0,
    first_session: int = 0,
    honor_retry_after: bool = True,
) -> tuple[list[Record], float]:
    """Drive ``concurrency`` closed-loop clients; returns (records, wall seconds from first send to last answer).

    Each client sends its session's requests one at a time (one step of
    :func:`benchmarks.closed_loop.closed_loop` per request), starting a new session when one ends.

    Args:
        url: base URL on loopback.
        sessions: makes session number ``n`` (numbers are unique across clients, from ``first_session``).
        concurrency: clients (>= 1).
        max_requests: no request is started after this many (>= 1).
        max_seconds: no request is started after this long.
        request_timeout_s: per-request bound (a timeout is recorded with status 0).
        honor_retry_after: on a 503 (the service refused the request at capacity), wait its
            ``Retry-After`` seconds and send the same request again, as a well-behaved client does; the
            refusal is recorded (and counts towards ``max_requests``). False: the session ends.

    Raises:
        ValueError: a non-loopback URL or bad bounds.
    """
    import httpx

    check_loopback(url)
    if concurrency < 1 or max_requests < 1 or max_seconds <= 0:
        raise ValueError("concurrency and max_requests must be >= 1 and max_seconds > 0")
    budget = Budget(seconds=max_seconds, max_steps=max_requests)
    state = LoopState(time.monotonic())
    records: list[Record] = []
    counter = itertools.count(first_session)
    # per client: its session and the request of it to send next (None: start a new session)
    pending: dict[int, tuple[Session, tuple[str, dict, str]] | None] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def next_session() -> tuple[Session, tuple[str, dict, str]]:
        while True:
            gen = sessions(next(counter))
            try:
                return gen, next(gen)
            except StopIteration:  # an empty session: take the next one
                continue

    async def step(client: int, turn: int) -> None:
        gen, (path, body, kind) = pending.get(client) or next_session()
        start = time.monotonic()
        response, retry_after = None, None
        try:
            r = await http.post(path, json=body)
            payload = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            ok = r.status_code == 200
            records.append(Record(kind, r.status_code, start, time.monotonic(), payload.get("timing_ms", {}) if ok else {}, None if ok else str(payload.get("error") or r.text)[:200]))
            response = payload if ok else None
            if r.status_code == 503 and honor_retry_after:
                retry_after = float(r.headers.get("retry-after", 1))
        except httpx.HTTPError as e:
            records.append(Record(kind, 0, start, time.monotonic(), {}, f"{type(e).__name__}: {e}"[:200]))
        if retry_after is not None:  # refused at capacity: wait as told, then send the same request again
            pending[client] = gen, (path, body, kind)
            await asyncio.sleep(min(retry_after, state.remaining_s(budget)))
            return
        try:
            pending[client] = gen, gen.send(response)
        except StopIteration:
            pending[client] = None

    async with httpx.AsyncClient(base_url=url, timeout=request_timeout_s, limits=limits) as http:
        await closed_loop(step, concurrency, budget, state=state)
    wall = (max(r.end_s for r in records) - min(r.start_s for r in records)) if records else 0.0
    return records, wall


def summarize_records(records: list[Record], wall_s: float, kinds: tuple[str, ...] | None = None) -> dict:
    """Throughput (successful requests per second over the wall time), latency percentiles (ms) of the
    successful requests of ``kinds`` (all when None), status counts and median server-side stage times."""
    sel = [r for r in records if kinds is None or r.kind in kinds]
    ok = [r for r in sel if r.status == 200]
    lat = np.asarray([r.latency_s for r in ok]) * 1e3
    statuses: dict[str, int] = {}
    for r in sel:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    stages: dict[str, float] = {}
    keys = {k for r in ok for k, v in r.timing_ms.items() if isinstance(v, (int, float))}
    for k in sorted(keys):
        stages[k] = float(np.median([r.timing_ms[k] for r in ok if k in r.timing_ms]))
    out = {
        "requests": len(sel),
        "ok": len(ok),
        "statuses": statuses,
        "wall_s": wall_s,
        "throughput_rps": len(ok) / wall_s if wall_s > 0 else 0.0,
        "stage_median_ms": stages,
    }
    if len(lat):
        out.update({"mean_ms": float(lat.mean()), **{f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 95, 99)}})
    errors = sorted({r.error for r in sel if r.error})
    if errors:
        out["errors"] = errors[:5]
    return out
