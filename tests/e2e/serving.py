"""`serve run` of a Serve config in a subprocess (its own local Ray cluster), for the e2e tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from tests.conftest import REPO
from tests.integration.conftest import free_port


def config_on_free_port(edit=lambda config: config) -> tuple[dict, int]:
    """configs/serve.yaml, changed by ``edit``, on a free port: (config, port)."""
    config = edit(yaml.safe_load((REPO / "configs" / "serve.yaml").read_text()))
    port = free_port()
    config["http_options"]["port"] = port
    return config, port


def stop_group(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Stop a `serve run` (or `samgraph serve`, or `samgraph batch`) started with ``start_new_session=True``,
    and every process it started (its local Ray cluster, if any): SIGKILL to its process group and to each
    of its descendants, then wait until all are gone.

    No SIGINT and graceful drain first: the tests have read all they check by then and throw the app's
    state away, and Serve's drain costs 7-10 s per app on 2 cores.

    Raises:
        AssertionError: a process of the group was still alive after ``timeout_s``.
    """
    import psutil

    try:
        procs = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in procs:  # Ray's own processes may have left the group
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=timeout_s)
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    assert not alive, f"still running after SIGKILL: {alive}"


@contextlib.contextmanager
def serve_run(config: dict, port: int, tmp: Path, env: dict, ready_timeout_s: float = 240) -> Iterator[tuple[str, Path]]:
    """Run ``config`` with `serve run`; yields (base URL, log path) once ``/readyz`` answers 200, and stops
    `serve run` and any cluster it started afterwards (:func:`stop_group`).

    Raises:
        AssertionError: `serve run` exited, or was not ready in ``ready_timeout_s`` (with the log's tail).
    """
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp / "serve.log"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local", **env}
    serve_bin = str(Path(sys.executable).parent / "serve")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [serve_bin, "run", str(path)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_timeout_s
            while True:
                assert proc.poll() is None, f"serve run exited: {log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"not ready in {ready_timeout_s} s: {log_path.read_text()[-3000:]}"
                try:
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            yield url, log_path
        finally:
            stop_group(proc)
