"""The samgraph Serve app, started by the tests on a local Ray cluster and reached over HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve_app.client import SamgraphClient
from tests.conftest import MODEL_ID

# Small limits so the 413 paths are cheap to hit; truck.jpg (1800x1200 = 2.16 MP, 0.3 MB) fits.
MAX_BODY_BYTES = 4 * 2**20
# An examples file of ~700 examples (512-d) fits; tests/integration/test_examples_transfer.py sends one over it.
MAX_IMPORT_BYTES = 8 * 2**20
MAX_IMAGE_PIXELS = 4_000_000
# Small video limits: the bedroom clip (200 frames) is over VIDEO_MAX_FRAMES; its 960x540 frames fit.
VIDEO_MAX_FRAMES = 16
VIDEO_MAX_FRAME_PIXELS = 1_000_000
# The video model at sam2's own ``++model.image_size=256`` override (``video.image_size``), as the unit tests
# run it: the same weights and code path at 1/16 of the image tokens of 1024 px. The sam2 references of the
# video tests are built with the same override (VIDEO_SIZE_OVERRIDE).
VIDEO_IMAGE_SIZE = 256
VIDEO_SIZE_OVERRIDE = f"++model.image_size={VIDEO_IMAGE_SIZE}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A small automatic-mask grid with the filters off: random weights give low predicted IoU and stability,
# so the default thresholds would leave nothing; NMS still deduplicates.
AMG = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="package")
def app_args(tiny_checkpoint, tmp_path_factory) -> dict:
    """SAM 2 from the test checkpoint file, CLIP with random weights, Qdrant embedded in a temp dir."""
    return {
        "model_id": MODEL_ID,
        "weights": "file",
        "checkpoint": str(tiny_checkpoint),
        "encoder": {"device": "cpu", "torch_threads": 2},
        "decoder": {"device": "cpu", "torch_threads": 2},
        "video": {"device": "cpu", "torch_threads": 2, "max_frames": VIDEO_MAX_FRAMES, "max_frame_pixels": VIDEO_MAX_FRAME_PIXELS, "image_size": VIDEO_IMAGE_SIZE},
        "clip": {"weights": "random", "device": "cpu", "torch_threads": 2},
        "retriever": {"path": str(tmp_path_factory.mktemp("qdrant"))},
        "amg": AMG,
        "text_candidates": 8,
        "limits": {"max_body_bytes": MAX_BODY_BYTES, "max_image_pixels": MAX_IMAGE_PIXELS, "max_import_bytes": MAX_IMPORT_BYTES},
    }


#: The package's app: deployed once, by ``app_url``, and shared by every test of the package.
APP_NAME = "samgraph"
#: Deployment options for the apps the tests deploy and delete (or redeploy) beside it: a replica being
#: stopped checks for requests still in flight every 0.1 s instead of Serve's 2 s, so that it still waits
#: for them but does not sleep out a 2 s loop first (each ``serve.delete`` 3.0 s -> 1.0 s).
QUICK_DRAIN = {"graceful_shutdown_wait_loop_s": 0.1}


def run_app(args: dict) -> None:
    """Deploy the app (what configs/serve.yaml imports) and wait until it is running."""
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(args), name=APP_NAME, route_prefix="/")


def app_stages() -> dict:
    """Handles to the package app's stage deployments, by the ``Ingress`` argument they fill."""
    from ray import serve

    names = {"encoder": "ImageEncoder", "decoder": "MaskDecoder", "fader": "Fader", "embedder": "Embedder", "retriever": "Retriever", "video": "VideoSegmenter"}
    return {arg: serve.get_deployment_handle(name, app_name=APP_NAME) for arg, name in names.items()}


def deploy_side_app(name: str, args: dict, **own) -> str:
    """Deploy (or redeploy) a configuration variant next to the package's app, instead of redeploying it:
    the app ``name`` at the route prefix ``/name``, an ``Ingress`` (one replica, no CPU share,
    :data:`QUICK_DRAIN`) built from ``args`` over the package app's stages, except the stages given in
    ``own`` (``decoder=``, ``retriever=``, ...: bound deployments of the side app's own, e.g. a MaskDecoder
    with a smaller cache; give them :data:`QUICK_DRAIN` too).

    Returns:
        The route prefix; the app answers under it (``{app_url}/name/v1/...``).
    """
    from ray import serve

    from serve_app.app import Ingress
    from serve_app.config import AppArgs
    from serve_app.preflight import preflight

    cfg = AppArgs.model_validate(args)
    stages = {**app_stages(), **own}
    video = stages.pop("video")
    encoders, decoders = {MODEL_ID: stages.pop("encoder")}, {MODEL_ID: stages.pop("decoder")}
    ingress = Ingress.options(num_replicas=1, ray_actor_options={"num_cpus": 0}, **QUICK_DRAIN).bind(
        encoders, decoders, *stages.values(), cfg.model_dump(), video=video, require_keys=preflight(cfg, store=False).api_keys > 0
    )
    serve.run(ingress, name=name, route_prefix=f"/{name}")
    return f"/{name}"


@contextlib.contextmanager
def side_app(name: str, args: dict, **own) -> Iterator[str]:
    """:func:`deploy_side_app`, deleted afterwards; yields the side app's base URL."""
    from ray import serve

    prefix = deploy_side_app(name, args, **own)
    try:
        yield prefix
    finally:
        serve.delete(name)


@pytest.fixture(scope="package")
def app_url(app_args):
    """Start Ray (2 CPUs) and the app; stop both afterwards.

    The cluster is this fixture's own (``address="local"``), so ``ray.shutdown()`` stops it with the app's
    replicas in it. No ``serve.shutdown()`` before it: that drains each replica gracefully (about 7 s on 2
    cores) for an app that no test calls any more.
    """
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # a new cluster, never an old one
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        run_app(app_args)
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()


@pytest.fixture(scope="package")
def client(app_url):
    with httpx.Client(base_url=app_url, timeout=300) as c:
        yield c


@pytest.fixture(scope="package")
def api(app_url):
    """The service through :class:`serve_app.client.SamgraphClient` (errors raise)."""
    with SamgraphClient(app_url, timeout_s=300) as c:
        yield c


# ---------------------------------------------------------------- the browser for the /ui tests
CHROMIUM = Path(os.environ.get("SAMGRAPH_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium's own connections are refused on closed networks.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str):
    if os.environ.get("SAMGRAPH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and SAMGRAPH_REQUIRE_BROWSER=1")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (headless) driven by Playwright; no browser download. Where it is absent the test
    skips, unless ``SAMGRAPH_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes that a failure."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found (Debian: apt-get install chromium); browser tests need it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()

