"""The README's flow, as a user runs it: `samgraph serve` (configs/serve.yaml), `samgraph ping`,
`samgraph segment` on truck.jpg with overlay and cutout, examples, `samgraph predict` and text prompts, all
through the installed CLI.

The service is the e2e package's (tests/e2e/conftest.py): configs/serve.yaml with the automatic-mask
filters off (``pred_iou_thresh`` and ``stability_score_thresh`` 0, an 8x8 grid), because with random
weights the shipped thresholds leave no mask, so `predict` would answer no instance and `--text` no mask
and their checks would hold vacuously."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from models.masks import decode_rle
from tests.conftest import REPO, TRUCK_BOX
from tests.e2e.conftest import SAMGRAPH


@pytest.fixture(scope="module")
def served(service):
    """(base URL, the CLI's environment, a temp folder, `samgraph ping`'s answer) of the e2e package's
    service (tests/e2e/conftest.py)."""
    return service.api, service.env, service.tmp, service.ready


def test_ping_reports_random_weights(served):
    _, _, _, ready = served
    assert ready["status"] == "ready"
    assert ready["weights"] == "random"
    assert any("meaningless" in w for w in ready["warnings"])


def test_segment_cli_writes_json_overlay_and_cutout(served, truck_path):
    api, env, tmp, _ = served
    out, overlay, cutout = tmp / "result.json", tmp / "overlay.png", tmp / "cutout.png"
    box = ",".join(str(v) for v in TRUCK_BOX)
    cmd = [*SAMGRAPH, "segment", "--api", api, "--image", str(truck_path), "--box", box, "--out", str(out), "--overlay", str(overlay), "--cutout", str(cutout)]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "meaningless" in run.stderr  # random weights are announced on every call
    result = json.loads(out.read_text())
    assert result["weights"] == "random" and result["encode_cached"] is False
    mask = result["results"][0]["masks"][0]
    assert mask["area_px"] > 0 and len(mask["bbox_xyxy"]) == 4
    with Image.open(truck_path) as im:
        photo = np.asarray(im.convert("RGB"))
    with Image.open(overlay) as im:
        drawn = np.asarray(im.convert("RGB"))
    assert drawn.shape == photo.shape and not np.array_equal(drawn, photo)
    with Image.open(cutout) as im:
        assert im.mode == "RGBA"
        alpha = np.asarray(im)[..., 3]
    assert int((alpha > 0).sum()) == mask["area_px"]

    # A click on the same photo: the CLI re-sends the bytes, the service answers from its cache.
    again = subprocess.run([*SAMGRAPH, "segment", "--api", api, "--image", str(truck_path), "--point", "500,375", "--point", "1125,625,bg"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["encode_cached"] is True and summary["timing_ms"]["encode"] == 0


def test_segment_cli_reports_api_errors(served, tmp_path):
    api, env, _, _ = served
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    run = subprocess.run([*SAMGRAPH, "segment", "--api", api, "--image", str(not_image)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "invalid_image" in run.stderr and "field image" in run.stderr


def test_serve_without_weights_fails_fast_naming_the_options(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMGRAPH_")}
    env["SAMGRAPH_CACHE_DIR"] = str(tmp_path)  # empty cache
    env["SAMGRAPH_SAM2_CHECKPOINT"] = str(tmp_path / "missing.pt")
    run = subprocess.run([*SAMGRAPH, "serve"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "missing.pt" in run.stderr and "does not exist" in run.stderr


def test_examples_and_predict_through_the_cli(served, truck_path):
    api, env, _, _ = served
    box = ",".join(str(v) for v in TRUCK_BOX)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*SAMGRAPH, *args, "--api", api], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    add = cli("examples", "add", "--image", str(truck_path), "--box", box, "--label", "truck")
    assert add.returncode == 0, add.stderr
    assert json.loads(add.stdout)["label"] == "truck"
    listing = cli("examples", "list")
    assert listing.returncode == 0, listing.stderr
    assert "1 examples, 512-d" in listing.stdout and "truck" in listing.stdout
    predict = cli("predict", "--image", str(truck_path), "--json")
    assert predict.returncode == 0, predict.stderr
    out = json.loads(predict.stdout)
    assert out["collection"] == "default" and {"amg", "fade", "embed", "retrieve"} <= set(out["timing_ms"])
    instances = out["instances"]
    assert 0 < len(instances) <= 20  # the CLI's default --max-instances
    for inst in instances:  # one example, labelled "truck": every instance gets its label, whole, and a mask
        assert inst["label"] == "truck" and inst["confidence"] == pytest.approx(1.0)
        assert inst["neighbors"] and all(n["label"] == "truck" for n in inst["neighbors"])
        assert inst["area_px"] > 0 and decode_rle(inst["rle"]).sum() == inst["area_px"]
    text = cli("segment", "--image", str(truck_path), "--text", "a truck", "--json")
    assert text.returncode == 0, text.stderr
    (ranked,) = json.loads(text.stdout)["results"]  # one result per prompt
    masks = ranked["masks"]
    assert masks and all(m["area_px"] > 0 and decode_rle(m["rle"]).sum() == m["area_px"] for m in masks)
    scores = [m["text_score"] for m in masks]
    assert all(-1.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)  # ranked by CLIP
    missing = cli("predict", "--image", str(truck_path), "--collection", "nope")
    assert missing.returncode == 1 and "unknown_collection" in missing.stderr


def test_serve_fails_fast_on_an_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMGRAPH_")}
    env.update({"SAMGRAPH_WEIGHTS": "random", "SAMGRAPH_DATA_DIR": str(blocker / "data")})
    run = subprocess.run([*SAMGRAPH, "serve"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "not writable" in run.stderr and str(blocker) in run.stderr
