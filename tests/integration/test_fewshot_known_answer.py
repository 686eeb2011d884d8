"""Few-shot labels with a known answer, through the whole graph over HTTP.

Six labels, two on each of three photos. Each label's one example is an automatic mask of its photo, so
predicting on that photo again finds the same mask, and its embedding is the example's own: cosine
similarity ~1 to it and below that to every other example. That holds for any weights, so it is a real
check with random ones. It would fail if:

- the fader ignored the mask (both instances of a photo would embed alike and tie; one gets the other's
  label),
- the vote summed another instance's neighbours, or the wrong scores (instances of one request have
  different labels, and ``top_k`` brings the other labels into every vote),
- a score were paired with the wrong neighbour id.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from models.knn import Neighbor, vote
from tests.conftest import shared_file

COLLECTION = "known_answer"
PHOTOS = ("truck.jpg", "dog.jpg", "cars.jpg")
TOP_K = 4
# Box NMS off: random weights give sparse masks that span the whole photo, which NMS would merge into one.
# The two instances kept then share their bounding box, so only the mask tells them apart.
AMG = {"box_nms_thresh": 1.0}


def _post(client, path: str, body: dict) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _predict(client, image: dict, collection: str) -> list[dict]:
    return _post(client, "/v1/predict", {"image": image, "collection": collection, "top_k": TOP_K, "max_instances": 2, "amg": AMG})["instances"]


@pytest.fixture(scope="module")
def labelled(client) -> list[tuple[dict, list[str], list[str]]]:
    """Per photo: (its image body, the two labels, their example ids) after adding one example per label.

    The examples are the photo's first two automatic masks; the collection used to find them
    (``scratch``) holds one dummy example only so that ``/v1/predict`` has something to search.
    """
    scratch = "known_answer_scratch"
    out = []
    for name in PHOTOS:
        data = shared_file("images", name).read_bytes()
        image = {"base64": base64.b64encode(data).decode()}
        image_id = hashlib.sha256(data).hexdigest()  # the service's id for these bytes
        if not out:
            _post(client, "/v1/examples", {"image": image, "box_xyxy": [0, 0, 64, 64], "label": "dummy", "collection": scratch})
        instances = _predict(client, image, scratch)
        assert len(instances) == 2, f"{name}: automatic masks found {len(instances)} objects, need 2"
        labels = [f"{name.split('.')[0]}_{k}" for k in range(2)]
        ids = []
        for label, inst in zip(labels, instances):
            body = {"image_id": image_id, "mask_rle": inst["rle"], "label": label, "collection": COLLECTION}
            ids += _post(client, "/v1/examples", body)["ids"]
        out.append((image, labels, ids))
    return out


def test_each_photo_gets_its_own_labels_first(client, labelled):
    listing = client.get("/v1/examples", params={"collection": COLLECTION}).json()
    assert listing["counts"] == {label: 1 for _, labels, _ in labelled for label in labels}  # 6 labels, 3 photos
    for image, labels, ids in labelled:
        instances = _predict(client, image, COLLECTION)
        assert [inst["label"] for inst in instances] == labels
        for inst, own_id in zip(instances, ids):
            first, *rest = inst["neighbors"]
            assert first["id"] == own_id and first["score"] == pytest.approx(1.0, abs=1e-3)
            # every other example embeds differently (random CLIP weights put all crops near one direction,
            # so the margins are small, but a fader that ignored the mask would make them exact ties)
            assert len(rest) == TOP_K - 1 and all(n["score"] < first["score"] for n in rest), inst["neighbors"]
            assert {n["label"] for n in rest} - {inst["label"]}, "the vote saw no other label"
            label, confidence = vote([Neighbor(**n) for n in inst["neighbors"]])
            assert (inst["label"], inst["confidence"]) == (label, pytest.approx(confidence))
