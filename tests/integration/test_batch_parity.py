"""`samgraph batch` (Ray Data, its own local Ray) against the online service with the same weights:
the same masks for the same boxes, and the same labels for the same examples and automatic masks.

Each batch run is a subprocess; the service is asked the same questions while it runs (its start-up, a
local Ray and an actor per stage, waits mostly on process starts), and the answers compared afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from models.masks import decode_rle, segmentation_to_rle
from tests.conftest import REPO, mask_iou, shared_file
from tests.e2e.serving import stop_group
from tests.integration.conftest import AMG

IMAGES = (41888, 143931)  # three birds; a bus and a person


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """A COCO file with two images of coco_subset, and its images folder."""
    src = shared_file("coco_subset", "annotations", "instances_val2017_subset32.json")
    data = json.loads(src.read_text())
    data["images"] = [im for im in data["images"] if im["id"] in IMAGES]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in IMAGES]
    path = tmp_path_factory.mktemp("subset") / "instances_val2017_two.json"
    path.write_text(json.dumps(data))
    return path, src.parent.parent / "val2017", data


@contextlib.contextmanager
def batch(tmp_path, subset, tiny_checkpoint, *flags) -> Iterator[Callable[[], tuple]]:
    """Start `samgraph batch` over :func:`subset` in a subprocess (its own local Ray), so that the test can
    ask the online service while it runs; yields a function that waits for it (600 s at most) and returns
    (output folder, summary.json, stdout). A run still going on exit is stopped with its Ray."""
    path, images, _ = subset
    out = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local", "SAMGRAPH_SEED": "0"}
    amg = [f"--set=amg.{k}={v}" for k, v in AMG.items()]
    cmd = [sys.executable, "-m", "serve_app.cli.main", "batch", "--input", str(path), "--images", str(images), "--output", str(out),
           "--weights", "file", "--checkpoint", str(tiny_checkpoint), "--clip-weights", "random", "--store", str(tmp_path.parent / "store"),
           "--quiet", *amg, *flags]
    # files, not pipes: Ray's log lines could fill a pipe while the test is busy with the service
    with open(tmp_path / "stdout.txt", "w+") as stdout, open(tmp_path / "stderr.txt", "w+") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout, stderr=stderr, text=True, start_new_session=True)

        def result() -> tuple:
            proc.wait(timeout=600)
            stdout.seek(0), stderr.seek(0)
            assert proc.returncode == 0, stderr.read()[-3000:]
            return out, json.loads((out / "summary.json").read_text()), stdout.read()

        try:
            yield result
        finally:
            if proc.poll() is None:
                stop_group(proc)


# slow (about 75 s: two `samgraph batch` runs beside the service) for the 15-minute budget; the default run
# checks the batch stages against sam2's predictor (tests/unit/test_batch.py) and runs `samgraph batch`
# end to end (tests/e2e/test_offline_cli.py)
@pytest.mark.slow
def test_batch_masks_and_labels_equal_the_online_service(api, subset, tiny_checkpoint, tmp_path_factory):
    path, images, data = subset
    cats = {c["id"]: c["name"] for c in data["categories"]}
    files = {im["id"]: images / im["file_name"] for im in data["images"]}
    anns = {image_id: [a for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"]] for image_id in files}

    # 1. boxes -> masks, and every ground-truth instance stored as an example; the service answers the same
    # boxes, and stores the same examples, while the batch runs
    with batch(tmp_path_factory.mktemp("add"), subset, tiny_checkpoint, "--add-examples", "--collection", "parity") as result:
        segmented = {}
        for image_id, file in files.items():
            prompts = [{"box_xyxy": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]} for a in anns[image_id]]
            segmented[image_id] = api.segment({"prompts": prompts}, image=file.read_bytes())
            im = next(i for i in data["images"] if i["id"] == image_id)
            for a in anns[image_id]:  # the same examples, stored through the API
                rle = segmentation_to_rle(a["segmentation"], im["height"], im["width"])
                api.add_example({"mask_rle": rle, "label": cats[a["category_id"]], "collection": "parity-online"}, image=file.read_bytes())
        out, summary, stdout = result()
    assert summary["images_ok"] == 2 and summary["images_failed"] == 0
    assert summary["examples_added"] == 5 and summary["instances"] == 5
    assert "encode" in summary["stage_ms_per_image"] and "images/s" in stdout
    results = json.loads((out / "results.json").read_text())
    for image_id in files:
        offline = [r for r in results if r["image_id"] == image_id]
        assert len(offline) == len(anns[image_id])
        for a, res, rec in zip(anns[image_id], segmented[image_id]["results"], offline):
            assert rec["category_id"] == a["category_id"]
            ours, theirs = decode_rle(rec["segmentation"]), decode_rle(res["masks"][0]["rle"])
            assert ours.any() and mask_iou(ours, theirs) >= 0.999
            assert rec["score"] == pytest.approx(res["masks"][0]["predicted_iou"], abs=1e-4)

    # 2. automatic masks -> crops -> embeddings -> labels, from the batch store (filled by run 1) vs the
    # service's (filled above); the service answers while the batch runs
    flags = ("--prompts", "auto", "--predict", "--collection", "parity", "--embeddings")
    with batch(tmp_path_factory.mktemp("predict"), subset, tiny_checkpoint, *flags) as result:
        predicted = {image_id: api.predict({"collection": "parity-online"}, image=file.read_bytes())["instances"] for image_id, file in files.items()}
        out, summary, _ = result()
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "instances.parquet").to_pylist()
    assert summary["images_ok"] == 2 and rows and all(len(r["embedding"]) == 512 for r in rows)
    labels_seen = set()
    for image_id, online in predicted.items():
        offline = [r for r in rows if r["image_id"] == image_id]
        assert len(offline) == len(online) > 0
        for rec, inst in zip(offline, online):
            ours = decode_rle({"size": rec["rle_size"], "counts": rec["rle_counts"]})
            assert mask_iou(ours, decode_rle(inst["rle"])) >= 0.999
            assert rec["label"] == inst["label"] and rec["label"] in cats.values()
            assert rec["confidence"] == pytest.approx(inst["confidence"], abs=1e-4)
            labels_seen.add(rec["label"])
    assert np.isfinite([r["predicted_iou"] for r in rows]).all() and labels_seen
