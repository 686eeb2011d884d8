"""Examples survive a restart of the app: the embedded Qdrant store is on disk under the data dir."""

from __future__ import annotations

import base64

from tests.conftest import TRUCK_BOX
from tests.integration.conftest import run_app


def test_examples_survive_a_restart(client, app_args, truck_path):
    from ray import serve

    image = {"base64": base64.b64encode(truck_path.read_bytes()).decode()}
    r = client.post("/v1/examples", json={"image": image, "box_xyxy": TRUCK_BOX, "label": "kept", "collection": "durable"})
    assert r.status_code == 200, r.text
    before = client.get("/v1/examples", params={"collection": "durable"}).json()
    assert before["counts"] == {"kept": 1}

    serve.delete("samgraph")  # the whole app goes: replicas, the ingress cache, the store's client
    run_app(app_args)

    after = client.get("/v1/examples", params={"collection": "durable"}).json()
    assert after["counts"] == before["counts"] and after["items"] == before["items"]
    r = client.post("/v1/predict", json={"image": image, "collection": "durable", "max_instances": 2})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["encode_cached"] is False  # the cache did not survive, the examples did
    assert out["instances"] and all(i["label"] == "kept" for i in out["instances"])
