"""`samgraph batch` on a folder of video frames and `samgraph eval` on COCO, as a user runs them
(installed CLI, a fresh local Ray, random weights)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import REPO, shared_file

SAMGRAPH = [sys.executable, "-m", "serve_app.cli.main"]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local", "SAMGRAPH_WEIGHTS": "random"}


def run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SAMGRAPH, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_batch_over_frames_skips_bad_files_and_writes_atomically(tmp_path):
    frames = shared_file("video", "bedroom", "frames")
    src = tmp_path / "frames"
    src.mkdir()
    for name in ("00000.jpg", "00100.jpg"):
        shutil.copy(frames / name, src / name)
    (src / "00050.jpg").write_bytes(b"truncated")
    (src / "README.txt").write_text("frames of bedroom.mp4")
    out = tmp_path / "out"
    proc = run("batch", "--input", str(src), "--output", str(out), "--quiet")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_ok"] == 2 and summary["images_failed"] == 2
    assert {f["path"].rsplit("/", 1)[-1] for f in summary["failed"]} == {"00050.jpg", "README.txt"}
    assert "skipped" in proc.stdout and "images/s" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["image_id"] for r in results) == [1, 3]  # one centre click per readable frame
    assert all(r["segmentation"]["size"] == [540, 960] for r in results)
    assert sorted(p.name for p in out.iterdir()) == ["instances.parquet", "results.json", "summary.json"]


def test_eval_end_to_end_with_random_weights(tmp_path):
    from pycocotools.coco import COCO

    ann = shared_file("coco_subset", "annotations", "instances_val2017_subset32.json")
    report_path = tmp_path / "report.json"
    proc = run("eval", "--coco", str(ann), "--prompt", "center-point", "--limit", "2", "--output", str(report_path), "--quiet")
    report = json.loads(report_path.read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
    first_two = sorted(gt.getImgIds())[:2]
    n = len([a for a in gt.loadAnns(gt.getAnnIds(imgIds=first_two)) if not a["iscrowd"]])
    assert report["prompt"] == "center-point" and report["weights"] == "random"
    assert report["images"] == 2 and report["instances"] == n == len(report["ious"])
    assert 0.0 <= report["miou"] <= 1.0
    assert sum(v["count"] for v in report["per_area"].values()) == n
    assert set(report["coco_segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert "mIoU" in proc.stdout and "area small" in proc.stdout
    with Image.open(report_path.with_suffix(".png")) as im:
        assert im.format == "PNG"


@pytest.mark.parametrize("args", [["--input", "/nonexistent", "--output", "x"], ["--input", "{frames}", "--output", "x", "--prompts", "coco-boxes"]])
def test_batch_refuses_bad_arguments_before_starting_ray(args, tmp_path):
    args = [a.replace("{frames}", str(tmp_path)) for a in args]
    proc = subprocess.run([*SAMGRAPH, "batch", *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
