"""Examples survive a restart of the app: the embedded Qdrant store is on disk under the data dir.

The app restarted is a side app next to the package's app (:func:`tests.integration.conftest.side_app`)
with the stages that hold state of its own: the Retriever (the store, in its own folder) and the
MaskDecoder (the image cache), over the package app's stateless stages. Deleting it takes its replicas,
the ingress, the image cache and the store's client, as a restart of the whole app would; the package's
app is never redeployed.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.conftest import TRUCK_BOX
from tests.integration.conftest import QUICK_DRAIN, app_stages, deploy_side_app

NAME = "durable"


def _deploy(args: dict) -> str:
    """The side app with its own MaskDecoder and Retriever (one replica each, no CPU share); its prefix."""
    from deployments.decoder import MaskDecoder
    from deployments.retriever import Retriever
    from serve_app.config import AppArgs
    from serve_app.preflight import preflight

    cfg = AppArgs.model_validate(args)
    ready = preflight(cfg, clip=False)
    cache = {"max_entries": cfg.cache.max_entries, "max_bytes": cfg.cache.max_bytes}
    no_cpu = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}, **QUICK_DRAIN}
    decoder = MaskDecoder.options(**no_cpu).bind(cfg.model_id, ready.model.as_dict(), "cpu", 1, cfg.decoder.accel(), app_stages()["encoder"], cache)
    return deploy_side_app(NAME, args, decoder=decoder, retriever=Retriever.options(**no_cpu).bind(**ready.store))


# ~25 s; the default run checks the same store reopened by a new replica after a SIGKILL
# (tests/integration/test_retriever_kill.py), so this whole-app restart is left to -m slow (test-time budget).
@pytest.mark.slow
def test_examples_survive_a_restart(app_url, app_args, truck_path, tmp_path):
    from ray import serve

    args = {**app_args, "retriever": {"path": str(tmp_path / "qdrant")}}
    image = {"base64": base64.b64encode(truck_path.read_bytes()).decode()}
    with httpx.Client(base_url=app_url + _deploy(args), timeout=300) as client:
        try:
            r = client.post("/v1/examples", json={"image": image, "box_xyxy": TRUCK_BOX, "label": "kept", "collection": "durable"})
            assert r.status_code == 200, r.text
            before = client.get("/v1/examples", params={"collection": "durable"}).json()
            assert before["counts"] == {"kept": 1}

            serve.delete(NAME)  # the whole app goes: replicas, the ingress, the image cache, the store's client
            _deploy(args)

            after = client.get("/v1/examples", params={"collection": "durable"}).json()
            assert after["counts"] == before["counts"] and after["items"] == before["items"]
            r = client.post("/v1/predict", json={"image": image, "collection": "durable", "max_instances": 2})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["encode_cached"] is False  # the cache did not survive, the examples did
            assert out["instances"] and all(i["label"] == "kept" for i in out["instances"])
        finally:
            serve.delete(NAME)
