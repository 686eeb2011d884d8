"""Helpers for benchmark programs: percentiles, starting configs/serve.yaml on a free port, result files."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"


def summarize(samples_s: list[float]) -> dict:
    """p50/p95/p99/mean in milliseconds and the count of a list of durations in seconds."""
    a = np.asarray(samples_s) * 1e3
    return {"n": len(a), "mean_ms": float(a.mean()), **{f"p{q}_ms": float(np.percentile(a, q)) for q in (50, 95, 99)}}


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}, indent=2))
    os.replace(tmp, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_config(config_path: Path, env_extra: dict, ready_timeout_s: float = 300):
    """`serve run` a copy of ``config_path`` on a free 127.0.0.1 port; yields the base URL; stops it after."""
    import httpx
    import yaml

    config = yaml.safe_load(config_path.read_text())
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
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service did not start; see {log.name}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        tmp.unlink(missing_ok=True)
        Path(log.name).unlink(missing_ok=True)
