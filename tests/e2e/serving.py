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


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a `serve run` (or `samgraph serve`) started with ``start_new_session=True``: SIGINT to its
    process group, so that it cleans up the app and its local cluster; SIGKILL after 60 s."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def serve_run(config: dict, port: int, tmp: Path, env: dict, ready_timeout_s: float = 240) -> Iterator[tuple[str, Path]]:
    """Run ``config`` with `serve run`; yields (base URL, log path) once ``/readyz`` answers 200, and stops
    the app and its cluster afterwards (SIGINT, then SIGKILL after 60 s).

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
