"""/v1/examples, /v1/predict and text prompts over real HTTP, on real photos, through the whole graph."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from models.knn import Neighbor, vote
from models.masks import decode_rle, encode_rle
from tests.conftest import TRUCK_BOX, shared_file

COLLECTION = "things"
DOG_BOX = [50, 50, 700, 500]


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _post(client, path: str, body: dict, status: int = 200) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json()


@pytest.fixture(scope="module")
def dog_path():
    return shared_file("images", "dog.jpg")


@pytest.fixture(scope="module")
def examples(client, truck_path, dog_path) -> dict:
    """Two labels added by box, plus one by mask: {"truck": ..., "dog": ..., "by_mask": ...} responses."""
    truck = _post(client, "/v1/examples", {"image": {"base64": _b64(truck_path)}, "box_xyxy": TRUCK_BOX, "label": "truck", "collection": COLLECTION})
    dog = _post(client, "/v1/examples", {"image": {"base64": _b64(dog_path)}, "box_xyxy": DOG_BOX, "label": "dog", "collection": COLLECTION})
    h, w = 1200, 1800
    mask = np.zeros((h, w), bool)
    mask[300:800, 100:1700] = True
    by_mask = _post(client, "/v1/examples", {"image_id": truck["image_id"], "mask_rle": encode_rle(mask), "label": "truck", "collection": COLLECTION})
    assert by_mask["area_px"] == int(mask.sum())
    return {"truck": truck, "dog": dog, "by_mask": by_mask}


def test_examples_are_counted_listed_and_deleted(client, examples):
    listing = client.get("/v1/examples", params={"collection": COLLECTION}).json()
    assert listing["counts"] == {"truck": 2, "dog": 1}
    assert listing["total"] == 3 and listing["dim"] == 512
    ids, offset = [], None
    while True:  # paged listing visits every id once
        params = {"collection": COLLECTION, "limit": 1, **({"offset": offset} if offset else {})}
        page = client.get("/v1/examples", params=params).json()
        ids += [item["id"] for item in page["items"]]
        offset = page["next_offset"]
        if offset is None:
            break
    added = [*examples["truck"]["ids"], *examples["dog"]["ids"], *examples["by_mask"]["ids"]]
    assert sorted(ids) == sorted(added)

    extra = _post(client, "/v1/examples", {"image_id": examples["dog"]["image_id"], "points": [[400, 250, "fg"]], "label": "scratch", "collection": COLLECTION})
    (extra_id,) = extra["ids"]
    assert client.get("/v1/examples", params={"collection": COLLECTION}).json()["counts"]["scratch"] == 1
    r = client.delete(f"/v1/examples/{extra_id}", params={"collection": COLLECTION})
    assert r.status_code == 200 and r.json()["deleted"] == extra_id
    assert "scratch" not in client.get("/v1/examples", params={"collection": COLLECTION}).json()["counts"]
    r = client.delete(f"/v1/examples/{extra_id}", params={"collection": COLLECTION})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_example"


def test_examples_listing_filters_by_label(client, examples):
    def listed(label: str) -> list[dict]:
        page = client.get("/v1/examples", params={"collection": COLLECTION, "label": label})
        assert page.status_code == 200, page.text
        assert page.json()["counts"] == {"truck": 2, "dog": 1}  # the counts stay the collection's
        return page.json()["items"]

    trucks = listed("truck")
    assert sorted(item["id"] for item in trucks) == sorted([*examples["truck"]["ids"], *examples["by_mask"]["ids"]])
    assert {item["label"] for item in trucks} == {"truck"}
    assert [item["id"] for item in listed("dog")] == examples["dog"]["ids"]
    assert listed("cat") == []


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_examples_limit_outside_1_to_1000_is_422(client, examples, limit):
    r = client.get("/v1/examples", params={"collection": COLLECTION, "limit": limit})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "limit" and "limit" in err["message"]


def test_examples_limit_at_the_bounds_is_accepted(client, examples):
    for limit, n in ((1, 1), (1000, 3)):
        page = client.get("/v1/examples", params={"collection": COLLECTION, "limit": limit})
        assert page.status_code == 200 and len(page.json()["items"]) == n


def test_unknown_collection_is_404_on_list_and_delete(client, examples):
    uuid = examples["dog"]["ids"][0]  # an id that exists, but in another collection
    for r in (
        client.get("/v1/examples", params={"collection": "never_made"}),
        client.delete(f"/v1/examples/{uuid}", params={"collection": "never_made"}),
    ):
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert err["code"] == "unknown_collection" and err["field"] == "collection"
    assert client.get("/v1/examples", params={"collection": COLLECTION}).json()["total"] == 3  # nothing deleted


def test_delete_of_an_id_that_is_not_a_uuid_is_422(client, examples):
    r = client.delete("/v1/examples/not-a-uuid", params={"collection": COLLECTION})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["field"] == "example_id"
    assert client.get("/v1/examples", params={"collection": COLLECTION}).json()["total"] == 3


def test_predict_labels_instances_from_the_examples(client, examples):
    out = _post(client, "/v1/predict", {"image_id": examples["truck"]["image_id"], "collection": COLLECTION, "top_k": 3})
    assert out["encode_cached"] is True and out["collection"] == COLLECTION
    assert set(out["timing_ms"]) >= {"amg", "fade", "embed", "retrieve", "total"}
    assert out["instances"], "automatic masks found nothing"
    for inst in out["instances"]:
        mask = decode_rle(inst["rle"])
        assert inst["area_px"] == int(mask.sum()) > 0
        nbrs = inst["neighbors"]
        assert len(nbrs) == 3
        assert {n["label"] for n in nbrs} <= {"truck", "dog"}
        assert [n["score"] for n in nbrs] == sorted((n["score"] for n in nbrs), reverse=True)
        label, confidence = vote([Neighbor(**n) for n in nbrs], 0.0)
        assert (inst["label"], inst["confidence"]) == (label, pytest.approx(confidence))
        assert inst["label"] in ("truck", "dog") and 0 < inst["confidence"] <= 1


def test_predict_min_score_and_formats(client, examples):
    body = {"image_id": examples["truck"]["image_id"], "collection": COLLECTION, "min_score": 1.0, "mask_format": "none", "max_instances": 1}
    out = _post(client, "/v1/predict", body)
    assert len(out["instances"]) == 1
    inst = out["instances"][0]
    assert "rle" not in inst and "png" not in inst
    assert inst["label"] is None and inst["confidence"] == 0.0  # nothing reaches similarity 1.0


def test_an_example_embeds_like_its_own_crop(client, examples):
    """Adding a mask and predicting with that same mask as an instance finds the example at similarity ~1."""
    out = _post(client, "/v1/predict", {"image_id": examples["truck"]["image_id"], "collection": COLLECTION, "max_instances": 1})
    inst = out["instances"][0]
    added = _post(client, "/v1/examples", {"image_id": examples["truck"]["image_id"], "mask_rle": inst["rle"], "label": "self", "collection": "selfcheck"})
    again = _post(client, "/v1/predict", {"image_id": examples["truck"]["image_id"], "collection": "selfcheck", "max_instances": 1, "top_k": 1})
    (nbr,) = again["instances"][0]["neighbors"]
    assert nbr["id"] == added["ids"][0]
    assert nbr["score"] == pytest.approx(1.0, abs=1e-4)


def test_text_prompt_ranks_masks(client, examples):
    body = {"image_id": examples["truck"]["image_id"], "prompts": [{"box_xyxy": TRUCK_BOX}, {"text": "a white pickup truck"}], "max_masks": 2}
    out = _post(client, "/v1/segment", body)
    box_result, text_result = out["results"]
    assert "text_score" not in box_result["masks"][0]
    scores = [m["text_score"] for m in text_result["masks"]]
    assert 1 <= len(scores) <= 2 and scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert decode_rle(text_result["masks"][0]["rle"]).sum() == text_result["masks"][0]["area_px"]
    assert {"amg", "fade", "embed"} <= set(out["timing_ms"])


BAD = [
    ("unknown_fade", {"fade": {"strategy": "blur"}}, 422, "fade.strategy"),
    ("sigma_le_0", {"fade": {"strategy": "gaussian", "sigma_px": 0}}, 422, "fade.sigma_px"),
    ("top_k_0", {"top_k": 0}, 422, "top_k"),
    ("top_k_101", {"top_k": 101}, 422, "top_k"),
    ("unknown_collection", {"collection": "nope"}, 404, "collection"),
    ("bad_collection_name", {"collection": "a/b"}, 422, "collection"),
    ("amg_out_of_range", {"amg": {"points_per_side": 0}}, 422, "amg.points_per_side"),
]


@pytest.mark.parametrize("name,extra,status,field", BAD, ids=[b[0] for b in BAD])
def test_bad_predict_requests(client, examples, name, extra, status, field):
    body = {"image_id": examples["truck"]["image_id"], "collection": COLLECTION, **extra}
    err = _post(client, "/v1/predict", body, status)["error"]
    assert err["field"] == field


BAD_EXAMPLES = [
    ("empty_label", {"label": ""}, 422, "label"),
    ("blank_label", {"label": "   "}, 422, "label"),
    ("long_label", {"label": "x" * 101}, 422, "label"),
    ("no_object", {"box_xyxy": None}, 422, None),
    ("mask_and_box", {"mask_rle": {"size": [1200, 1800], "counts": "0"}}, 422, None),
    ("box_outside", {"box_xyxy": [0, 0, 5000, 10]}, 422, "box_xyxy"),
]


@pytest.mark.parametrize("name,extra,status,field", BAD_EXAMPLES, ids=[b[0] for b in BAD_EXAMPLES])
def test_bad_example_requests(client, examples, name, extra, status, field):
    body = {"image_id": examples["truck"]["image_id"], "box_xyxy": TRUCK_BOX, "label": "truck", "collection": COLLECTION, **extra}
    body = {k: v for k, v in body.items() if v is not None}
    err = _post(client, "/v1/examples", body, status)["error"]
    if field is not None:
        assert err["field"] == field
    assert client.get("/v1/examples", params={"collection": COLLECTION}).json()["total"] == 3  # nothing stored


def test_bad_masks_for_examples(client, examples):
    base = {"image_id": examples["truck"]["image_id"], "label": "truck", "collection": COLLECTION}
    wrong_size = encode_rle(np.ones((10, 10), bool))
    assert _post(client, "/v1/examples", {**base, "mask_rle": wrong_size}, 422)["error"]["field"] == "mask_rle"
    empty = encode_rle(np.zeros((1200, 1800), bool))
    assert _post(client, "/v1/examples", {**base, "mask_rle": empty}, 422)["error"]["code"] == "empty_mask"


def test_dimension_mismatch_leaves_the_collection_untouched(client, examples):
    from ray import serve

    retriever = serve.get_deployment_handle("Retriever", app_name="samgraph")
    retriever.add.remote("small", np.ones((1, 8), np.float32), ["eight"], None).result()
    before = client.get("/v1/examples", params={"collection": "small"}).json()
    err = _post(client, "/v1/examples", {"image_id": examples["truck"]["image_id"], "box_xyxy": TRUCK_BOX, "label": "truck", "collection": "small"}, 409)["error"]
    assert err["code"] == "dimension_mismatch" and err["field"] == "collection"
    assert "8" in err["message"] and "512" in err["message"]
    assert client.get("/v1/examples", params={"collection": "small"}).json() == before
