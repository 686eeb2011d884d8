"""Hours under a mixed load: does memory, open sessions and the object store come back, and are the
acknowledged examples all kept across replica kills?

A steady rate of sessions (``--sessions-per-min``), at most ``--max-in-flight`` of them at once (the
closed-loop cap: a session due while the cap is reached waits, and its lateness is recorded), each one
of (weights in :data:`MIX`):

  annotate - an upload with a first click, then ``clicks`` clicks by ``image_id`` (resent with the image
             on 404 ``image_not_cached``, as a client does after its owner replica died);
  fresh    - one new image with a box;
  predict  - ``/v1/predict`` of a new image on the soak's example collection (small AMG grid);
  examples - two examples added from one new image, one of them deleted again;
  video    - a session opened on ``video_frames`` bedroom frames, a box on frame 0, propagated, closed
             (every ``expire_every``-th one left open to expire by the TTL).

Images are the shared photos (benchmarks/loadgen.py: new bytes for every use, same pixels). A 503 is
retried after its ``Retry-After`` (at most :data:`RETRIES_503` times; every answer is recorded).
During the load, one replica each of MaskDecoder, Retriever, VideoSegmenter and Ingress is killed
(SIGKILL of its worker process) at fixed fractions of the run (:data:`KILLS`). Every ``sample_every_s``
it records per replica RSS, and its private part without the object store's shared pages
(:func:`process_memory`; the Ray workers under the `serve run` process, by title), ``/v1/stats``
(image-cache entries and bytes per decoder replica, open video sessions and their bytes) and the object
store's use (:class:`ObjectStoreProbe`). After the load it samples until the video sessions are back
to 0 (at most a TTL plus a margin), then lists the example collection.

Writes ``benchmarks/results/{--name}.json`` and, with matplotlib, ``{--name}.png``; prints the targets
of issue 25 (:func:`targets`). tests/e2e/test_soak.py runs the same code for about a minute.

    python -m benchmarks.soak [--minutes 60] [--sessions-per-min 12] [--max-in-flight 3] [--ttl 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

from benchmarks.common import REPO, RESULTS, SHARED_DATA, b64, serve_app, summarize, write_result
from benchmarks.loadgen import Photo, Record, click_points, load_photos, unique_jpeg
from benchmarks.procmem import MIB, title

#: Relative weights of the session kinds.
MIX = {"annotate": 4, "fresh": 2, "predict": 1, "examples": 2, "video": 1}
#: (deployment, fraction of the run) of each replica kill.
KILLS = (("MaskDecoder", 0.3), ("Retriever", 0.45), ("VideoSegmenter", 0.6), ("Ingress", 0.75))
#: A 503 is sent again after its Retry-After at most this often (then the session goes on or ends).
RETRIES_503 = 3
#: Seconds a Retry-After is honoured at most.
MAX_RETRY_AFTER_S = 10.0
#: Seconds between the video replica's sweeps of expired sessions (deployments/video.py, SWEEP_EVERY_S).
SWEEP_S = 10.0
REPLICA_TITLE = re.compile(r"ServeReplica:(?P<app>[\w-]+):(?P<deployment>\w+)")


@dataclass(frozen=True)
class SoakPlan:
    """What to run.

    Attributes:
        duration_s: seconds of load (sessions start only within it).
        sessions_per_min: session starts per minute (steady). Kinds follow a seeded shuffle of ``mix``
            (each kind as often as its weight), repeated: every kind runs in the first ``sum(mix)``.
        max_in_flight: sessions running at once at most (the closed-loop cap).
        sample_every_s: seconds between samples during the load.
        warmup_s: seconds from the start after which RSS counts for the slope and the "after warm-up" level.
        clicks: clicks per annotation session after its upload.
        video_frames: frames per video session (the first bedroom frames, 960x540).
        expire_every: every n-th video session is left open to expire (0: close all).
        session_ttl_s: the service's ``video.session_ttl_s`` (how long the cool-down may wait).
        kills: (deployment, fraction of ``duration_s``) of each SIGKILL.
        request_timeout_s: per request; a request past it is a timeout (status 0).
        collection: the example collection.
        seed: of the kind draw and the clicks.
        mix: relative weights (integers) of the session kinds.
    """

    duration_s: float = 3600.0
    sessions_per_min: float = 12.0
    max_in_flight: int = 3
    sample_every_s: float = 30.0
    warmup_s: float = 600.0
    clicks: int = 6
    video_frames: int = 4
    expire_every: int = 3
    session_ttl_s: float = 60.0
    kills: tuple[tuple[str, float], ...] = KILLS
    request_timeout_s: float = 120.0
    collection: str = "soak"
    seed: int = 0
    mix: dict = field(default_factory=lambda: dict(MIX))

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.sessions_per_min <= 0 or self.sample_every_s <= 0 or self.session_ttl_s <= 0:
            raise ValueError("duration_s, sessions_per_min, sample_every_s and session_ttl_s must be greater than 0")
        if self.max_in_flight < 1 or self.video_frames < 1 or self.clicks < 0 or self.expire_every < 0:
            raise ValueError("max_in_flight and video_frames must be >= 1, clicks and expire_every >= 0")
        unknown = set(self.mix) - set(MIX)
        if unknown or not any(self.mix.values()) or any(not isinstance(w, int) or w < 0 for w in self.mix.values()):
            raise ValueError(f"mix: integer weights >= 0 of {sorted(MIX)} (some > 0); got {self.mix}")


# --- processes and the object store ---------------------------------------------------------------------


def replica_processes(root_pid: int, app: str = "samgraph") -> dict[int, str]:
    """pid -> deployment name of every live Serve replica worker of ``app`` among the descendants of
    ``root_pid`` (a `serve run` or `samgraph serve` process: its local cluster's workers descend from it),
    found by their title ``ray::ServeReplica:{app}:{deployment}``."""
    out = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in psutil.Process(root_pid).children(recursive=True):
            m = REPLICA_TITLE.search(title(p))
            if m and m["app"] == app:
                out[p.pid] = m["deployment"]
    return out


def process_memory(pid: int) -> dict[str, int]:
    """``{"rss_bytes", "shmem_bytes", "private_bytes"}`` of a process: its resident set, the part of it in
    shared memory (``RssShmem`` of ``/proc/PID/status``), and the rest (``RssAnon + RssFile``).

    Why the split: Ray's object store is a shared-memory file (``/dev/shm/plasma*``) mapped into every
    worker; each object a replica reads or writes makes its pages resident in that replica, so a replica's
    RSS climbs as the store hands out new offsets, up to the store's size, with no memory of the replica's
    own. The store's use is measured on its own (:class:`ObjectStoreProbe`), so the leak targets read
    ``private_bytes``. Off Linux: psutil's RSS, and no shared part.

    Raises:
        psutil.NoSuchProcess: the process has gone.
    """
    try:
        fields = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssShmem"):
                    fields[key] = int(value.split()[0]) * 1024
        rss, shmem = fields["VmRSS"], fields.get("RssShmem", 0)
    except FileNotFoundError:
        raise psutil.NoSuchProcess(pid) from None
    except (OSError, KeyError, ValueError):
        rss, shmem = psutil.Process(pid).memory_info().rss, 0
    return {"rss_bytes": rss, "shmem_bytes": shmem, "private_bytes": rss - shmem}


def replica_rss(root_pid: int) -> dict[str, dict]:
    """``{"{deployment}:{pid}": {"deployment", "pid", "rss_bytes", "shmem_bytes", "private_bytes"}}`` of
    :func:`replica_processes` (see :func:`process_memory`)."""
    out = {}
    for pid, dep in replica_processes(root_pid).items():
        with contextlib.suppress(psutil.NoSuchProcess):
            out[f"{dep}:{pid}"] = {"deployment": dep, "pid": pid, **process_memory(pid)}
    return out


class ObjectStoreProbe:
    """The object store's use in the local cluster under ``root_pid``, as ``ray memory --stats-only``
    reads it: the GCS address off the raylet's command line, then the raylets' ``FormatGlobalMemoryInfo``
    RPC (``ray._private.internal_api``; no driver joins the cluster). A private Ray API: where it fails,
    :meth:`read` answers None and the soak goes on without this measurement."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self._state = None

    def read(self) -> dict | None:
        """``{"bytes_used", "bytes_avail", "objects", "spilled_bytes"}`` over all nodes, or None."""
        try:
            from ray._private.internal_api import get_memory_info_reply, get_state_from_address

            if self._state is None:
                raylet = next(p for p in psutil.Process(self.root_pid).children(recursive=True) if title(p).split(" ", 1)[0].endswith("/raylet"))
                gcs = next(a.split("=", 1)[1] for a in raylet.cmdline() if a.startswith("--gcs-address="))
                self._state = get_state_from_address(gcs)
            s = get_memory_info_reply(self._state, timeout_seconds=20).store_stats
            return {"bytes_used": s.object_store_bytes_used, "bytes_avail": s.object_store_bytes_avail, "objects": s.num_local_objects, "spilled_bytes": s.spilled_bytes_total}
        except Exception:  # noqa: BLE001 - a measurement that is missing, not a failure of the run
            return None


# --- the load ---------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Example ids whose add was acknowledged (200), and those whose delete was acknowledged."""

    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    delete_unknown: list[str] = field(default_factory=list)  # a delete that got no 200: either state is right


class Soak:
    """The load, the sampler and the kills against one running service (see the module docstring).

    Args:
        url: the service's base URL (loopback).
        root_pid: the `serve run` / `samgraph serve` process (its descendants are measured and killed).
        plan: :class:`SoakPlan`.
        photos: the photos to send (:func:`benchmarks.loadgen.load_photos`).
        frames: JPEG bytes of the video frames (at least ``plan.video_frames``).
    """

    def __init__(self, url: str, root_pid: int, plan: SoakPlan, photos: list[Photo], frames: list[bytes]) -> None:
        if len(frames) < plan.video_frames:
            raise ValueError(f"{plan.video_frames} video frames needed, got {len(frames)}")
        self.url, self.root_pid, self.plan, self.photos = url, root_pid, plan, photos
        self.frames = [{"base64": b64(f)} for f in frames[: plan.video_frames]]
        self.records: list[Record] = []
        self.samples: list[dict] = []
        self.kills: list[dict] = []
        self.sessions: list[dict] = []  # per session: n, kind, start_s, late_s, ok
        self.ledger = Ledger()
        self.store = ObjectStoreProbe(root_pid)
        self.t0 = time.monotonic()
        self.t_load0: float | None = None
        self.load_end_s: float | None = None
        self.listed: list[str] | None = None
        self._n_image = self._n_video = 0

    def now(self) -> float:
        """Seconds since the soak started."""
        return time.monotonic() - self.t0

    def _image(self) -> tuple[Photo, str]:
        self._n_image += 1
        photo = self.photos[self._n_image % len(self.photos)]
        return photo, b64(unique_jpeg(photo.jpeg, 10_000_000 + self._n_image))

    async def call(self, http, kind: str, method: str, path: str, body: dict | None = None, params: dict | None = None, stream: bool = False):
        """One request (sent again after a 503's Retry-After, :data:`RETRIES_503` times at most); every
        answer is a :class:`Record` (status 0: no answer, ``error`` the exception). Returns (status, JSON
        body or the list of NDJSON lines, or None)."""
        for attempt in range(RETRIES_503 + 1):
            start = time.monotonic()
            payload, retry_after = None, None
            try:
                if stream:
                    async with http.stream(method, path, json=body, params=params) as r:
                        raw = await r.aread()
                    payload = [json.loads(line) for line in raw.splitlines() if line.strip()] if r.status_code == 200 else _json(raw)
                else:
                    r = await http.request(method, path, json=body, params=params)
                    payload = _json(r.content)
                status = r.status_code
                if status == 503:
                    retry_after = min(float(r.headers.get("retry-after", 1)), MAX_RETRY_AFTER_S)
                error = None if status == 200 else _code(payload) or f"{status}"
                if stream and status == 200:  # an error after the 200 comes as the stream's last line
                    error = next((_code(line) or "stream_error" for line in payload if line.get("type") == "error"), None)
                self.records.append(Record(kind, status, start - self.t0, time.monotonic() - self.t0, {}, error))
            except Exception as e:  # noqa: BLE001 - recorded: a timeout or a dropped connection is a result
                self.records.append(Record(kind, 0, start - self.t0, time.monotonic() - self.t0, {}, f"{type(e).__name__}: {e}"[:200]))
                return 0, None
            if retry_after is None or attempt == RETRIES_503:
                return status, payload
            await asyncio.sleep(retry_after)
        raise AssertionError("unreachable")

    async def annotate(self, http, n: int) -> bool:
        """Session ``n`` of kind ``annotate`` (module docstring); True when every answer was 200 (a resend
        after ``image_not_cached`` included). The other kinds' methods below are alike."""
        photo, data = self._image()
        first, *clicks = click_points(photo, self.plan.clicks + 1, seed=self.plan.seed + n)
        status, body = await self.call(http, "upload", "POST", "/v1/segment", {"image": {"base64": data}, "prompts": [{"points": first}], "mask_format": "none"})
        if status != 200:
            return False
        image_id = body["image_id"]
        for points in clicks:
            req = {"image_id": image_id, "prompts": [{"points": points}]}
            status, body = await self.call(http, "click", "POST", "/v1/segment", req)
            if status == 404 and _code(body) == "image_not_cached":  # its owner died: resend with the image
                status, body = await self.call(http, "click_resend", "POST", "/v1/segment", {**req, "image": {"base64": data}})
            if status != 200:
                return False
        return True

    async def fresh(self, http, n: int) -> bool:
        """One new image with its box."""
        photo, data = self._image()
        status, _ = await self.call(http, "fresh", "POST", "/v1/segment", {"image": {"base64": data}, "prompts": [{"box_xyxy": list(photo.box_xyxy)}]})
        return status == 200

    async def predict(self, http, n: int) -> bool:
        """/v1/predict of a new image on the soak's collection (an 8x8 grid, 4 instances at most)."""
        _, data = self._image()
        body = {"image": {"base64": data}, "collection": self.plan.collection, "max_instances": 4, "amg": {"points_per_side": 8}, "mask_format": "none"}
        status, _ = await self.call(http, "predict", "POST", "/v1/predict", body)
        return status == 200

    async def add_example(self, http, body: dict) -> tuple[bool, dict | None]:
        """POST /v1/examples of ``body`` into the soak's collection: (stored, the answer's JSON)."""
        status, answer = await self.call(http, "example_add", "POST", "/v1/examples", {**body, "collection": self.plan.collection})
        if status == 200:
            self.ledger.added += answer["ids"]
        return status == 200, answer

    async def examples(self, http, n: int) -> bool:
        """Two examples from one new image (the second by ``image_id``), then the second deleted."""
        photo, data = self._image()
        x0, y0, x1, y1 = photo.box_xyxy
        ok, first = await self.add_example(http, {"image": {"base64": data}, "box_xyxy": [x0, y0, x1, y1], "label": f"label{n % 3}"})
        if not ok:
            return False
        inner = [x0 + 0.1 * (x1 - x0), y0 + 0.1 * (y1 - y0), x1 - 0.1 * (x1 - x0), y1 - 0.1 * (y1 - y0)]
        body = {"image_id": first["image_id"], "box_xyxy": inner, "label": f"label{(n + 1) % 3}"}
        ok, second = await self.add_example(http, body)
        if not ok and _code(second) == "image_not_cached":  # its owner died: send the image
            ok, second = await self.add_example(http, {**body, "image": {"base64": data}})
        if not ok:
            return False
        doomed = second["ids"][0]
        status, _ = await self.call(http, "example_delete", "DELETE", f"/v1/examples/{doomed}", params={"collection": self.plan.collection})
        (self.ledger.deleted if status == 200 else self.ledger.delete_unknown).append(doomed)
        return status == 200

    async def video(self, http, n: int) -> bool:
        """A video session: open, a box on frame 0, propagate every frame, close (or leave it to expire)."""
        video_n, self._n_video = self._n_video, self._n_video + 1
        status, opened = await self.call(http, "video_open", "POST", "/v1/video/sessions", {"frames": self.frames})
        if status != 200:
            return False
        base = f"/v1/video/sessions/{opened['session_id']}"
        w, h = opened["width"], opened["height"]
        prompt = {"frame_index": 0, "obj_id": 1, "box_xyxy": [0.3 * w, 0.0, 0.55 * w, 0.75 * h], "mask_format": "none"}
        status, _ = await self.call(http, "video_prompt", "POST", f"{base}/prompts", prompt)
        if status != 200:
            return False
        status, lines = await self.call(http, "video_propagate", "POST", f"{base}/propagate", {"mask_format": "none"}, stream=True)
        if status != 200 or sum(line.get("type") == "frame" for line in lines) != self.plan.video_frames:
            return False
        if self.plan.expire_every and video_n % self.plan.expire_every == 0:
            return True  # left open: the TTL ends it
        status, _ = await self.call(http, "video_close", "DELETE", base)
        return status == 200

    async def _session(self, http, n: int, kind: str, due_s: float, slots: asyncio.Semaphore) -> None:
        start = self.now()
        try:
            ok = await getattr(self, kind)(http, n)
        except Exception as e:  # noqa: BLE001 - an unexpected answer shape: the session failed, the soak goes on
            ok = False
            self.records.append(Record(kind, -1, self.now(), self.now(), {}, f"client: {type(e).__name__}: {e}"[:200]))
        finally:
            slots.release()
        self.sessions.append({"n": n, "kind": kind, "start_s": start, "late_s": start - due_s, "end_s": self.now(), "ok": ok})

    async def seed_collection(self, http) -> None:
        """One example, so that /v1/predict finds the collection.

        Raises:
            RuntimeError: the example was not stored.
        """
        photo, data = self._image()
        for _ in range(3):  # a service that just came up may still fail a first request
            ok, answer = await self.add_example(http, {"image": {"base64": data}, "box_xyxy": list(photo.box_xyxy), "label": "seed"})
            if ok:
                return
            await asyncio.sleep(10)
        if not ok:
            raise RuntimeError(f"the seed example was not stored: {self.records[-1]}")

    async def sample(self, http, phase: str) -> dict:
        """One sample (appended to :attr:`samples`)."""
        t = self.now()
        rss = await asyncio.to_thread(replica_rss, self.root_pid)
        store = await asyncio.to_thread(self.store.read)
        s: dict = {"t_s": t, "phase": phase, "rss": rss, "object_store": store}
        try:
            r = await http.get("/v1/stats", timeout=60)
            stats = r.json() if r.status_code == 200 else None
        except Exception:  # noqa: BLE001
            stats = None
        if stats is not None:
            reps = stats["decoder"]["replicas"]
            s["cache"] = {
                "entries": stats["cache"]["entries"],
                "bytes": stats["cache"]["bytes"],
                "replicas": {k: {f: d["cache"][f] for f in ("entries", "bytes", "max_entries", "max_bytes")} for k, d in reps.items()},
            }
            if "video" in stats:
                v = stats["video"]["sessions"]
                s["video"] = {k: v[k] for k in ("sessions", "bytes", "max_sessions", "max_bytes", "opened", "closed", "expired", "refused")}
        self.samples.append(s)
        return s

    async def _sampler(self, http, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample(http, "load")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.plan.sample_every_s)

    async def _kill(self, deployment: str, at_s: float) -> None:
        await asyncio.sleep(max(0.0, at_s - self.now()))
        pids = sorted(p for p, d in replica_processes(self.root_pid).items() if d == deployment)
        if not pids:
            self.kills.append({"deployment": deployment, "t_s": self.now(), "error": "no replica process found"})
            return
        pid = pids[0]
        os.kill(pid, signal.SIGKILL)
        kill = {"deployment": deployment, "pid": pid, "t_s": self.now(), "replicas_before": len(pids), "replacement_after_s": None}
        self.kills.append(kill)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            now = {p for p, d in replica_processes(self.root_pid).items() if d == deployment}
            if now - set(pids):
                kill["replacement_after_s"] = self.now() - kill["t_s"]
                return
            await asyncio.sleep(1.0)

    async def run(self) -> None:
        """Seed, load with samples and kills, wait for the sessions, cool down, list the examples."""
        import httpx

        p = self.plan
        limits = httpx.Limits(max_connections=p.max_in_flight + 4)
        order = [str(k) for k in np.random.default_rng(p.seed).permutation([k for k, w in p.mix.items() for _ in range(w)])]
        async with httpx.AsyncClient(base_url=self.url, timeout=p.request_timeout_s, limits=limits) as http:
            await self.seed_collection(http)
            await self.sample(http, "baseline")
            self.t_load0 = self.now()
            stop_sampling = asyncio.Event()
            sampler = asyncio.create_task(self._sampler(http, stop_sampling))
            killers = [asyncio.create_task(self._kill(dep, self.t_load0 + frac * p.duration_s)) for dep, frac in p.kills]
            slots = asyncio.Semaphore(p.max_in_flight)
            running: set[asyncio.Task] = set()
            end = self.t_load0 + p.duration_s
            n = 0
            while True:
                due = self.t_load0 + n * 60.0 / p.sessions_per_min
                if due >= end:
                    break
                await asyncio.sleep(max(0.0, due - self.now()))
                await slots.acquire()  # the closed-loop cap: a due session waits for a free slot
                if self.now() >= end:
                    slots.release()
                    break
                kind = order[n % len(order)]
                task = asyncio.create_task(self._session(http, n, kind, due, slots))
                running.add(task)
                task.add_done_callback(running.discard)
                n += 1
            if running:
                await asyncio.wait(running)
            self.load_end_s = self.now()
            for k in killers:
                k.cancel()
            await asyncio.gather(*killers, return_exceptions=True)
            stop_sampling.set()
            await sampler
            await self.cool_down(http)
            self.listed = await self.list_examples(http)

    async def cool_down(self, http) -> None:
        """Samples every few seconds until the video sessions are back to 0, at most a TTL plus two sweeps
        plus 15 s; then one more sample (the level "after the load")."""
        deadline = self.now() + self.plan.session_ttl_s + 2 * SWEEP_S + 15
        step = min(5.0, self.plan.sample_every_s)
        while self.now() < deadline:
            s = await self.sample(http, "cooldown")
            if s.get("video", {}).get("sessions") == 0:
                break
            await asyncio.sleep(step)
        await asyncio.sleep(step)
        await self.sample(http, "after")

    async def list_examples(self, http) -> list[str] | None:
        """Every id in the collection (None where the listing failed)."""
        ids, offset = [], None
        while True:
            params = {"collection": self.plan.collection, "limit": 1000, **({"offset": offset} if offset else {})}
            r = await http.get("/v1/examples", params=params)
            if r.status_code != 200:
                return None
            page = r.json()
            ids += [item["id"] for item in page["items"]]
            offset = page["next_offset"]
            if offset is None:
                return ids

    def result(self) -> dict:
        """The JSON payload: plan, records, samples, kills, sessions, examples and :func:`targets`."""
        payload = {
            "plan": {**asdict(self.plan), "kills": [list(k) for k in self.plan.kills]},
            "load_start_s": self.t_load0,
            "load_end_s": self.load_end_s,
            "kills": self.kills,
            "examples": {
                "acknowledged": len(self.ledger.added),
                "deleted": len(self.ledger.deleted),
                "delete_unanswered": len(self.ledger.delete_unknown),
                "listed": None if self.listed is None else len(self.listed),
            },
            "summary": _summaries(self.records),
            "sessions_by_kind": {
                k: {"started": sum(s["kind"] == k for s in self.sessions), "ok": sum(s["ok"] for s in self.sessions if s["kind"] == k)}
                for k in self.plan.mix
            },
            "late_starts": {  # sessions that waited for a slot (the closed-loop cap) past their due time
                "over_1s": sum(s["late_s"] > 1 for s in self.sessions),
                "max_s": max((s["late_s"] for s in self.sessions), default=None),
            },
            "samples": self.samples,
            "sessions": self.sessions,
            "records": [asdict(r) for r in self.records],
        }
        payload["targets"] = targets(payload, self.ledger, self.listed)
        return payload


def _json(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _code(payload) -> str | None:
    try:
        return payload["error"]["code"]
    except (TypeError, KeyError):
        return None


def _summaries(records: list[Record]) -> dict:
    out = {}
    for kind in sorted({r.kind for r in records}):
        sel = [r for r in records if r.kind == kind]
        statuses: dict[str, int] = {}
        for r in sel:
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        ok = [r.end_s - r.start_s for r in sel if r.status == 200]
        out[kind] = {"statuses": statuses, **({"latency_ok": summarize(ok)} if ok else {})}
    return out


# --- the targets ------------------------------------------------------------------------------------------


#: The memory the leak targets read: RSS without shared-memory pages (see :func:`process_memory`).
MEMORY = "private_bytes"


def rss_series(samples: list[dict], phases: tuple[str, ...], field: str = MEMORY) -> dict[str, list[tuple[float, int]]]:
    """Per replica (``deployment:pid``) its (t_s, ``field``) in the samples of ``phases`` (``field``:
    ``private_bytes`` or ``rss_bytes``; results written before the split have only ``rss_bytes``)."""
    out: dict[str, list[tuple[float, int]]] = {}
    for s in samples:
        if s["phase"] in phases:
            for key, r in s["rss"].items():
                out.setdefault(key, []).append((s["t_s"], r.get(field, r["rss_bytes"])))
    return out


def targets(result: dict, ledger: Ledger, listed: list[str] | None) -> dict:
    """Issue 25's targets from a soak's result (see :meth:`Soak.result`).

    Memory is each replica's private RSS (:data:`MEMORY`: without the object store's shared pages, which
    the ``object_store`` entry measures); ``raw_rss_slope_pct_per_h`` gives the same slopes of the whole RSS.

    - ``rss_slope_pct_per_h``: per replica, the least-squares slope of its private RSS over the load samples
      after ``warmup_s`` (from the load's start; for a replacement replica, also from when it was first
      seen), as % of its mean RSS per hour (replicas with 3+ such samples); ``max``: the
      largest.
    - ``rss_slope_second_half_pct_per_h``: the same over the second half of the load only (a steady
      slope there is a leak; a step earlier, after which the replica is flat, is not).
    - ``rss_after_vs_warmup``: per replica alive from the warm-up to the end, RSS of the last sample
      after the load over its level after the warm-up: the median of its load samples from ``warmup_s``
      on (one sample would catch transients: a /v1/predict's decoder batch takes ~26 MB a click);
      ``max``: the largest ratio.
    - ``sessions``: open video sessions at the end of the load and after it, and seconds from the load's
      end until they were 0 (None: not within the cool-down).
    - ``cache``: image-cache bytes and entries at the baseline, the end of the load and after it, and
      whether every replica stayed within its bounds at every sample (and the video sessions within theirs).
    - ``examples``: acknowledged adds missing from the final listing (deleted ones excepted), and
      acknowledged deletes still listed.
    - ``status``: 5xx answers by code, inside and outside the kill windows (a kill to its replacement
      plus 30 s), timeouts (no answer in ``request_timeout_s``), other failed connections, and
      ``session_lost`` answers (a 404, or the error line ending a propagation's stream); ``other_failures``:
      every other failed answer (4xx, no answer, a client error) by status and code, inside and outside.
    - ``object_store``: bytes used at the baseline, the largest during the load, and after it.
    """
    plan, samples = result["plan"], result["samples"]
    t_warm = result["load_start_s"] + plan["warmup_s"]
    first_seen = {key: pts[0][0] for key, pts in rss_series(samples, ("baseline", "load")).items()}

    def slopes_of(field: str, since_s: float = t_warm) -> dict:
        out = {}
        for key, pts in rss_series(samples, ("load",), field).items():
            # a replacement replica (after a kill) has its own warm-up, from when it was first seen
            pts = [(t, b) for t, b in pts if t >= max(since_s, first_seen[key] + plan["warmup_s"])]
            if len(pts) >= 3:
                t_h = np.asarray([t for t, _ in pts]) / 3600.0
                rss = np.asarray([b for _, b in pts], float)
                slope = float(np.polyfit(t_h, rss, 1)[0])
                out[key] = {"pct_per_h": 100.0 * slope / rss.mean(), "mean_mib": rss.mean() / MIB, "samples": len(pts)}
        return out

    slopes, raw_slopes = slopes_of(MEMORY), slopes_of("rss_bytes")
    # A leak is a steady slope; a replica that settles (one larger batch, an allocator reaching its working
    # set) has a slope over the whole window but none later: the second half of the load tells them apart.
    half = slopes_of(MEMORY, result["load_start_s"] + ((result["load_end_s"] or samples[-1]["t_s"]) - result["load_start_s"]) / 2)
    last = samples[-1]
    ratios = {}
    if last["phase"] == "after":
        for key, pts in rss_series([s for s in samples if s["t_s"] >= t_warm], ("load",)).items():
            if key in last["rss"]:
                level = float(np.median([b for _, b in pts]))
                after = last["rss"][key].get(MEMORY, last["rss"][key]["rss_bytes"])
                ratios[key] = {"warmup_mib": level / MIB, "after_mib": after / MIB, "ratio": after / level, "samples": len(pts)}

    load = [s for s in samples if s["phase"] == "load"]
    end_load = load[-1] if load else None
    zero_at = next((s["t_s"] for s in samples if s["phase"] in ("cooldown", "after") and s.get("video", {}).get("sessions") == 0), None)
    within = all(
        rep["bytes"] <= rep["max_bytes"] and rep["entries"] <= rep["max_entries"] for s in samples if "cache" in s for rep in s["cache"]["replicas"].values()
    ) and all(s["video"]["sessions"] <= s["video"]["max_sessions"] and s["video"]["bytes"] <= s["video"]["max_bytes"] for s in samples if "video" in s)

    def cache_at(s):
        return None if s is None or "cache" not in s else {"entries": s["cache"]["entries"], "bytes": s["cache"]["bytes"]}

    windows = [(k["t_s"], k["t_s"] + (k.get("replacement_after_s") or 300) + 30) for k in result["kills"] if "pid" in k]
    in_window = lambda r: any(a <= r["end_s"] and r["start_s"] <= b for a, b in windows)  # noqa: E731
    fivexx: dict[str, dict[str, int]] = {"in_kill_windows": {}, "outside": {}}
    other: dict[str, dict[str, int]] = {"in_kill_windows": {}, "outside": {}}
    timeouts = conn = lost = 0
    for r in result["records"]:
        if r["error"] is None:
            continue
        where = (fivexx if r["status"] >= 500 else other)["in_kill_windows" if in_window(r) else "outside"]
        key = f"{r['status']} {r['error'] if r['status'] > 0 else r['error'].split(':')[0]}"
        where[key] = where.get(key, 0) + 1
        if r["status"] == 0:
            timeouts += "Timeout" in r["error"]
            conn += "Timeout" not in r["error"]
        lost += r["error"] == "session_lost"
    present = set(listed or [])
    expected = set(ledger.added) - set(ledger.deleted) - set(ledger.delete_unknown)
    store = [s["object_store"]["bytes_used"] for s in samples if s.get("object_store")]
    store_load = [s["object_store"]["bytes_used"] for s in load if s.get("object_store")]
    return {
        "memory": f"{MEMORY}: RSS without shared-memory pages (the object store's; see process_memory)",
        "rss_slope_pct_per_h": {"replicas": slopes, "max": max((v["pct_per_h"] for v in slopes.values()), default=None)},
        "rss_slope_second_half_pct_per_h": {"replicas": half, "max": max((v["pct_per_h"] for v in half.values()), default=None)},
        "raw_rss_slope_pct_per_h": {"replicas": raw_slopes, "max": max((v["pct_per_h"] for v in raw_slopes.values()), default=None)},
        "rss_after_vs_warmup": {"replicas": ratios, "max": max((v["ratio"] for v in ratios.values()), default=None)},
        "sessions": {
            "at_load_end": None if end_load is None else end_load.get("video", {}).get("sessions"),
            "after": last.get("video", {}).get("sessions"),
            "zero_after_load_s": None if zero_at is None or result["load_end_s"] is None else max(0.0, zero_at - result["load_end_s"]),
            "ttl_s": plan["session_ttl_s"],
        },
        "cache": {"baseline": cache_at(samples[0]), "at_load_end": cache_at(end_load), "after": cache_at(last), "within_bounds": within},
        "examples": {
            "listing_ok": listed is not None,
            "lost": len(expected - present) if listed is not None else None,
            "deleted_but_listed": len(set(ledger.deleted) & present),
        },
        "status": {
            "5xx": fivexx,
            "5xx_outside_kill_windows": sum(fivexx["outside"].values()),
            "other_failures": other,
            "timeouts": timeouts,
            "connection_errors": conn,
            "session_lost": lost,
        },
        "object_store": {
            "baseline_bytes": store[0] if store else None,
            "max_load_bytes": max(store_load) if store_load else None,
            "after_bytes": store[-1] if store else None,
        },
    }


def print_targets(t: dict) -> None:
    """The targets as a few lines on stdout."""
    s = t["rss_slope_pct_per_h"]
    print("private RSS slope after warm-up, % of size per hour (target < 1):", "n/a" if s["max"] is None else f"max {s['max']:.2f}")
    for key, v in sorted(s["replicas"].items()):
        print(f"  {key:<28} {v['pct_per_h']:+8.2f} %/h  mean {v['mean_mib']:7.0f} MiB  ({v['samples']} samples)")
    h = t.get("rss_slope_second_half_pct_per_h")
    if h is not None:
        print("private RSS slope over the load's second half, % per hour:", "n/a" if h["max"] is None else f"max {h['max']:.2f}")
        for key, v in sorted(h["replicas"].items()):
            print(f"  {key:<28} {v['pct_per_h']:+8.2f} %/h  mean {v['mean_mib']:7.0f} MiB  ({v['samples']} samples)")
    a = t["rss_after_vs_warmup"]
    print("private RSS after the load / after warm-up:", "n/a" if a["max"] is None else f"max {a['max']:.3f}")
    for key, v in sorted(a["replicas"].items()):
        print(f"  {key:<28} {v['warmup_mib']:7.0f} -> {v['after_mib']:7.0f} MiB ({v['ratio']:.3f})")
    ss, c, e, st, o = t["sessions"], t["cache"], t["examples"], t["status"], t["object_store"]
    print(f"video sessions: {ss['at_load_end']} at the load's end, {ss['after']} after; back to 0 after {ss['zero_after_load_s']} s (TTL {ss['ttl_s']} s)")
    print(f"image cache: baseline {c['baseline']}, load end {c['at_load_end']}, after {c['after']}; within bounds: {c['within_bounds']}")
    print(f"examples: lost {e['lost']}, deleted but listed {e['deleted_but_listed']} (listing ok: {e['listing_ok']})")
    print(f"5xx outside kill windows: {st['5xx']['outside']}; inside: {st['5xx']['in_kill_windows']}")
    print(f"other failures outside kill windows: {st['other_failures']['outside']}; inside: {st['other_failures']['in_kill_windows']}")
    print(f"timeouts: {st['timeouts']}, connection errors: {st['connection_errors']}, session_lost: {st['session_lost']}")
    mib = lambda b: None if b is None else round(b / MIB, 1)  # noqa: E731
    print(f"object store MiB: baseline {mib(o['baseline_bytes'])}, max in load {mib(o['max_load_bytes'])}, after {mib(o['after_bytes'])}")


def plot(result: dict, path: Path) -> Path | None:
    """RSS per replica, image-cache bytes, open video sessions, object store and every answer's latency
    over time, kills marked; None (with a message) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return None
    samples = result["samples"]
    fig, ax = plt.subplots(4, 1, figsize=(11, 13), sharex=True)
    mins = lambda ts: np.asarray(ts) / 60.0  # noqa: E731
    for key, pts in sorted(rss_series(samples, ("baseline", "load", "cooldown", "after")).items()):
        ax[0].plot(mins([t for t, _ in pts]), [b / MIB for _, b in pts], marker=".", label=key)
    ax[0].set_ylabel("private RSS (MiB)")
    ax[0].legend(fontsize=6, ncol=3)
    cs = [s for s in samples if "cache" in s]
    ax[1].plot(mins([s["t_s"] for s in cs]), [s["cache"]["bytes"] / MIB for s in cs], marker=".", label="image cache (MiB)")
    vs = [s for s in samples if "video" in s]
    ax1b = ax[1].twinx()
    ax1b.step(mins([s["t_s"] for s in vs]), [s["video"]["sessions"] for s in vs], where="post", color="C3", label="open video sessions")
    ax[1].set_ylabel("image cache (MiB)")
    ax1b.set_ylabel("open video sessions", color="C3")
    os_ = [s for s in samples if s.get("object_store")]
    ax[2].plot(mins([s["t_s"] for s in os_]), [s["object_store"]["bytes_used"] / MIB for s in os_], marker=".")
    ax[2].set_ylabel("object store used (MiB)")
    recs = result["records"]
    for ok, color in ((True, "C0"), (False, "C3")):
        sel = [r for r in recs if (r["status"] == 200) == ok]
        ax[3].scatter(mins([r["start_s"] for r in sel]), [r["end_s"] - r["start_s"] for r in sel], s=3, color=color, label="200" if ok else "other")
    ax[3].set_yscale("log")
    ax[3].set_ylabel("latency (s)")
    ax[3].set_xlabel("minutes")
    ax[3].legend()
    for a in ax:
        for k in result["kills"]:
            a.axvline(k["t_s"] / 60.0, color="k", ls=":", lw=0.8)
        for edge in (result["load_start_s"], result["load_end_s"]):
            if edge is not None:
                a.axvline(edge / 60.0, color="g", ls="--", lw=0.8)
    ax[0].set_title("samgraph soak (dotted: replica kills; dashed: load start and end)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def video_frames(n: int) -> list[bytes]:
    """The first ``n`` bedroom frames (JPEG bytes) from the shared data."""
    folder = SHARED_DATA / "video" / "bedroom" / "frames"
    return [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[:n]]


def soak_config(config: dict, ttl_s: float) -> dict:
    """A Serve config (configs/serve.yaml's shape) with ``video.session_ttl_s`` set to ``ttl_s`` (changed
    in place)."""
    config["applications"][0]["args"].setdefault("video", {})["session_ttl_s"] = ttl_s
    return config


def main() -> None:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--warmup-minutes", type=float, default=None, help="default: a sixth of the run, at most 10")
    p.add_argument("--sessions-per-min", type=float, default=12.0)
    p.add_argument("--max-in-flight", type=int, default=3)
    p.add_argument("--sample-every", type=float, default=30.0, help="seconds")
    p.add_argument("--ttl", type=float, default=60.0, help="video.session_ttl_s of the soak's service")
    p.add_argument("--video-frames", type=int, default=4)
    p.add_argument("--no-kills", action="store_true")
    p.add_argument("--name", default="soak", help="results file benchmarks/results/NAME.json (and .png)")
    p.add_argument("--log", type=Path, default=None, help="keep the service's log here")
    args = p.parse_args()
    warmup_min = args.warmup_minutes if args.warmup_minutes is not None else min(10.0, args.minutes / 6)
    plan = SoakPlan(
        duration_s=args.minutes * 60,
        sessions_per_min=args.sessions_per_min,
        max_in_flight=args.max_in_flight,
        sample_every_s=args.sample_every,
        warmup_s=warmup_min * 60,
        video_frames=args.video_frames,
        session_ttl_s=args.ttl,
        kills=() if args.no_kills else KILLS,
    )
    config = soak_config(yaml.safe_load(open(args.config).read()), args.ttl)
    photos = load_photos(SHARED_DATA)
    with tempfile.TemporaryDirectory() as data, serve_app(config, {"SAMGRAPH_WEIGHTS": "random", "SAMGRAPH_DATA_DIR": data}, keep_log=args.log) as served:
        soak = Soak(served.url, served.pid, plan, photos, video_frames(plan.video_frames))
        asyncio.run(soak.run())
    result = soak.result()
    result["note"] = "seeded random weights; 2 shared CPU cores, other jobs may have run at the same time"
    path = write_result(args.name, result)
    print_targets(result["targets"])
    print(f"sessions started: {len(soak.sessions)}, ok: {sum(s['ok'] for s in soak.sessions)}; requests: {len(soak.records)}")
    print(f"wrote {path}")
    plot(result, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
