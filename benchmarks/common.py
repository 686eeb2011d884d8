"""Helpers for benchmark programs: percentiles, result files, starting configs/serve.yaml on a free port,
images to send.

Processes and their memory: benchmarks/procmem.py; the load loop: benchmarks/closed_loop.py; the
in-process baselines: benchmarks/baselines.py.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"


def summarize(samples_s: list[float]) -> dict:
    """p50/p95/p99/mean/min in milliseconds and the count of a list of durations in seconds."""
    a = np.asarray(samples_s) * 1e3
    return {"n": len(a), "mean_ms": float(a.mean()), "min_ms": float(a.min()), **{f"p{q}_ms": float(np.percentile(a, q)) for q in (50, 95, 99)}}


def stage_medians(timings: list[dict]) -> dict:
    """Median per key of the responses' ``timing_ms`` dicts (keys of the first), in ms."""
    return {k: float(np.median([t[k] for t in timings])) for k in timings[0]}


def b64(data: bytes) -> str:
    """``data`` as base64 text, as request bodies carry images."""
    return base64.b64encode(data).decode("ascii")


def random_png(size: int = 512, seed: int = 0) -> bytes:
    """A (size, size) PNG of seeded uniform noise: RGB uint8 in [0, 255]."""
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def png_variants(rgb: np.ndarray, n: int, start: int = 0) -> list[bytes]:
    """``n`` PNGs of ``rgb`` ((H, W, 3) uint8, W >= start + n), each with one pixel of row 0 changed (the
    pixels ``start`` to ``start + n - 1``): new bytes (a new image_id), the same compute."""
    from PIL import Image

    out = []
    for i in range(start, start + n):
        img = rgb.copy()
        img[0, i] = (img[0, i].astype(int) + 1) % 256
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
        out.append(buf.getvalue())
    return out


def cpu_info() -> dict:
    """``{"model", "flags"}`` of this machine's CPU (:func:`deployments.runtime.cpu.cpu_info`): its model name
    and, for each of :data:`deployments.runtime.cpu.CPU_FLAGS_OF_INTEREST`, whether it has it."""
    from deployments.runtime.cpu import CPU_FLAGS_OF_INTEREST
    from deployments.runtime.cpu import cpu_info as read_cpu

    cpu = read_cpu()
    return {"model": cpu["model"], "flags": {f: f in cpu["flags"] for f in CPU_FLAGS_OF_INTEREST}}


def machine() -> dict:
    """What the numbers were measured on: CPU model and flags (:func:`cpu_info`), cores, load average at
    the time of writing, versions, GPU."""
    import torch

    cpu = cpu_info()
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu["model"],
        "cpu_flags": cpu["flags"],
        "cores": os.cpu_count(),
        "loadavg_1_5_15": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(name: str, payload: dict) -> Path:
    """Write ``benchmarks/results/{name}.json`` (atomically): the machine, the time, then ``payload``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}, indent=2))
    os.replace(tmp, path)
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float, log_name: str) -> None:
    """Poll ``url`` until it answers 200.

    Raises:
        RuntimeError: ``proc`` exited or ``timeout_s`` passed first (the message names the log).
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up; see {log_name}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)


def stop_group(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGINT to the process group of ``proc`` (started with ``start_new_session=True``); SIGKILL after
    ``timeout_s`` seconds. `serve run` cleans up its app and local cluster on SIGINT."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Served:
    """A running `serve run`: ``url`` on 127.0.0.1, ``pid`` of the `serve run` process (its raylet, and
    through it every Ray worker of that local cluster, descends from it)."""

    url: str
    pid: int


def _exit_on_sigterm(signum, frame):  # noqa: ARG001 - a signal handler's signature
    raise SystemExit(128 + signum)


@contextmanager
def serve_app(config: dict, env_extra: dict, ready_timeout_s: float = 300, keep_log: Path | None = None) -> Iterator[Served]:
    """`serve run` a copy of the Serve config ``config`` on a free 127.0.0.1 port (its own local Ray
    cluster: ``RAY_ADDRESS=local``); yields :class:`Served` once ``/readyz`` is 200; stops it after,
    moving its log to ``keep_log`` if given. A SIGTERM to the benchmark (``kill``, ``pkill``) stops it
    too: while the service runs, SIGTERM raises ``SystemExit`` in the main thread, so this cleanup runs
    instead of leaving the service and its Ray cluster behind."""
    import threading

    import yaml

    config = copy.deepcopy(config)
    port = free_port()
    config["http_options"].update({"host": "127.0.0.1", "port": port})
    tmp = RESULTS / f".serve-{port}.yaml"
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local", **env_extra}
    serve_bin = str(Path(sys.executable).parent / "serve")
    log = open(RESULTS / f".serve-{port}.log", "w")
    proc = subprocess.Popen([serve_bin, "run", str(tmp)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
    try:
        wait_ready(proc, f"{url}/readyz", ready_timeout_s, log.name)
        yield Served(url, proc.pid)
    finally:
        stop_group(proc, 60)
        if main:
            signal.signal(signal.SIGTERM, previous)
        log.close()
        tmp.unlink(missing_ok=True)
        if keep_log is not None:
            os.replace(log.name, keep_log)
        Path(log.name).unlink(missing_ok=True)


@contextmanager
def serve_config(config_path: Path, env_extra: dict, ready_timeout_s: float = 300):
    """`serve run` a copy of ``config_path`` on a free 127.0.0.1 port; yields the base URL; stops it after."""
    import yaml

    with serve_app(yaml.safe_load(config_path.read_text()), env_extra, ready_timeout_s) as served:
        yield served.url


def timed_post(client, body: dict, path: str = "/v1/segment") -> tuple[float, dict]:
    """(seconds, JSON answer) of one POST of ``body`` to ``path`` with an ``httpx.Client``.

    Raises:
        RuntimeError: the answer is not 200 (its status and the start of its body in the message).
    """
    t = time.perf_counter()
    r = client.post(path, json=body)
    seconds = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:500]}")
    return seconds, r.json()
