"""The service the single-node e2e tests share: configs/serve.yaml started once by `samgraph serve`, as a
user starts it (its own local Ray cluster), for the README flow and the overload test.

Four changes to the shipped config, each for one of its users, and none in the others' way:

- the automatic-mask filters off (:data:`AMG`): with random weights the shipped thresholds leave no mask,
  so `samgraph predict` would answer no instance and a text prompt no mask (tests/e2e/test_readme_flow.py);
- tight queues on the Ingress and the ImageEncoder (:func:`tight_queues`), so that a burst of 12
  requests overflows them (tests/e2e/test_backpressure.py). The README flow sends one request at a time,
  the short soak at most two;
- video sessions that expire after :data:`VIDEO` ``session_ttl_s`` and a 256 px video model, so that the
  short soak's sessions left open expire within the test and its tracking is cheap
  (tests/e2e/test_soak.py; no other test here opens a video session);
- at most :data:`CACHE_ENTRIES` cached images per decoder replica, so that the short soak fills the cache
  in its warm-up (the other tests use one or two images at a time).

The tests that use it run one after another, last in the package (:func:`pytest_collection_modifyitems`),
and it stops with the package: no other cluster of the e2e tests runs beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.e2e.serving import stop_group
from tests.integration.conftest import free_port
from tests.polling import wait_until

SAMGRAPH = [sys.executable, "-m", "serve_app.cli.main"]
# Filters off so that random weights give automatic masks (NMS still deduplicates); a small grid for CPU.
AMG = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
#: The Ingress's queue: past ``max_ongoing_requests + max_queued_requests`` in flight the proxy refuses.
INGRESS_LIMITS = {"max_ongoing_requests": 6, "max_queued_requests": 4, "backpressure_config": {"retry_after_s": 2}}
#: The ImageEncoder's queue: past 2 encodes in flight the ingress gets ``BackPressureError`` (503 JSON).
ENCODER_LIMITS = {"max_ongoing_requests": 1, "max_queued_requests": 1, "backpressure_config": {"retry_after_s": 3}}
#: The video stage's changes: a short session TTL and a small model input side.
VIDEO = {"session_ttl_s": 15.0, "image_size": 256}
#: Images each decoder replica caches at most (the shipped 64 would take the short soak minutes to fill).
CACHE_ENTRIES = 4


def tight_queues(config: dict) -> dict:
    """``config`` with :data:`INGRESS_LIMITS` and :data:`ENCODER_LIMITS` (changed in place)."""
    by_name = {d["name"]: d for d in config["applications"][0]["deployments"]}
    by_name["Ingress"].update(INGRESS_LIMITS)
    by_name["ImageEncoder"].update(ENCODER_LIMITS)
    return config


def pytest_collection_modifyitems(config, items):
    """Move the e2e tests that use :func:`service` after the other e2e tests (each group keeps its order),
    so that the service starts after the other e2e clusters have stopped."""
    slots = [i for i, item in enumerate(items) if Path(str(item.fspath)).parent == Path(__file__).parent]
    e2e = [items[i] for i in slots]
    ordered = [t for t in e2e if "service" not in t.fixturenames] + [t for t in e2e if "service" in t.fixturenames]
    for i, item in zip(slots, ordered):
        items[i] = item


@dataclass(frozen=True)
class Service:
    """The running service: its base URL, the environment the CLI runs in, a temp folder, ``samgraph
    ping``'s answer once it was ready, the log of `samgraph serve` (its replicas' logs included), and the
    pid of `samgraph serve` (its local Ray cluster's processes descend from it)."""

    api: str
    env: dict
    tmp: Path
    ready: dict
    log_path: Path
    pid: int


@pytest.fixture(scope="package")
def service(tmp_path_factory) -> Service:
    """configs/serve.yaml (with :data:`AMG`, :func:`tight_queues`, :data:`VIDEO` and :data:`CACHE_ENTRIES`) on a free port with
    SAMGRAPH_WEIGHTS=random, started by `samgraph serve`; ready once `samgraph ping` says so."""
    tmp = tmp_path_factory.mktemp("e2e")
    config = tight_queues(yaml.safe_load((REPO / "configs" / "serve.yaml").read_text()))
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["amg"].update(AMG)
    config["applications"][0]["args"]["video"].update(VIDEO)
    config["applications"][0]["args"]["cache"]["max_entries"] = CACHE_ENTRIES
    config_path = tmp / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "SAMGRAPH_WEIGHTS": "random",
        "SAMGRAPH_DATA_DIR": str(tmp / "data"),
        "RAY_AUTH_MODE": "disabled",
        "RAY_ADDRESS": "local",  # a fresh local cluster, never one that happens to be running
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log_path = tmp / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([*SAMGRAPH, "serve", "--config", str(config_path)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, f"samgraph serve exited: {log_path.read_text()[-3000:]}"
        try:
            return httpx.get(f"{api}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 240, f"service ready (log: {log_path})", interval_s=0.5)
        ping = subprocess.run([*SAMGRAPH, "ping", "--api", api, "--timeout", "5"], cwd=REPO, env=env, capture_output=True, text=True)
        assert ping.returncode == 0, ping.stderr
        yield Service(api, env, tmp, json.loads(ping.stdout), log_path, proc.pid)
    finally:
        stop_group(proc)
        log.close()
