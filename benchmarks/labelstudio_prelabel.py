"""Pre-labelling a Label Studio project (`samgraph labelstudio prelabel`) against `samgraph batch` on the same
photos, with the same model and settings, measured in the same run.

Both run the same Ray Data pipeline (load -> encode -> decode (automatic masks) -> fade -> embed -> retrieve)
in a fresh process with its own local Ray, SAMGRAPH_WEIGHTS=random (seeded: the real SAM 2.1 tiny and CLIP
ViT-B-32 compute), over the 32 COCO val2017 photos of ../shared/data/coco_subset, labelling the automatic
masks from the same few-shot examples (one per COCO category of those photos, its ground-truth mask,
embedded once beforehand into a store both runs read). What differs is what the prelabel job adds: Label
Studio's REST API (the project's config, tasks and predictions), each image fetched from Label Studio
instead of read from a file, and the predictions built (brush RLE by label-studio-sdk) and imported into
Label Studio, where `samgraph batch` writes COCO results and Parquet.

Automatic masks: an 8x8 grid with the IoU and stability filters off (random weights score low: the
defaults would keep nothing), the same for both. images/s is each command's own pipeline time (Ray's start
excluded; the prelabel job's includes its posts to Label Studio); the process times, Ray's start
included, are written too.

Label Studio runs from `$SAMGRAPH_LABEL_STUDIO` or ../lsvenv (as tests/integration/test_labelstudio.py
starts it, its migrated data folder cached).

    python benchmarks/labelstudio_prelabel.py [--n 32] [--points-per-side 8]

Writes benchmarks/results/labelstudio_prelabel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, SHARED_DATA, write_result

COCO = SHARED_DATA / "coco_subset" / "annotations" / "instances_val2017_subset32.json"
PHOTOS = SHARED_DATA / "coco_subset" / "val2017"
COLLECTION = "coco"


def add_examples(store: Path, n_images: int) -> list[str]:
    """One example per COCO category of the first ``n_images`` photos (its first non-crowd ground-truth
    mask), embedded by random CLIP into ``store``; the category names, sorted."""
    import numpy as np
    from PIL import Image

    from deployments.runtime.vectorstore import ExampleStore
    from models.masks import decode_rle, segmentation_to_rle
    from serve_app.local import LocalPipeline

    coco = json.loads(COCO.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images = {im["id"]: im for im in sorted(coco["images"], key=lambda im: im["id"])[:n_images]}
    first: dict[int, dict] = {}
    for ann in coco["annotations"]:
        if ann["image_id"] in images and not ann.get("iscrowd") and ann["category_id"] not in first:
            first[ann["category_id"]] = ann
    with ExampleStore(path=store) as s:
        pipe = LocalPipeline.load("sam2.1_hiera_tiny", weights="random", store=s)
        for cid, ann in first.items():
            im = images[ann["image_id"]]
            rgb = np.asarray(Image.open(PHOTOS / im["file_name"]).convert("RGB"))
            mask = decode_rle(segmentation_to_rle(ann["segmentation"], im["height"], im["width"]))
            if mask.any():
                pipe.add_example(rgb, names[cid], mask=mask, collection=COLLECTION)
    return sorted({names[c] for c in first})


def label_config(names: list[str]) -> str:
    labels = "".join(f'<Label value="{n}"/>' for n in names)
    return f'<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">{labels}</BrushLabels></View>'


def run(cmd: list[str]) -> tuple[float, str]:
    """(seconds, stdout) of a samgraph command in a fresh process with its own local Ray."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local", "SAMGRAPH_WEIGHTS": "random"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "serve_app.cli.main", *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=3 * 3600)
    if proc.returncode != 0:
        raise RuntimeError(f"samgraph {cmd[0]} failed: {proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="photos (of the 32)")
    ap.add_argument("--points-per-side", type=int, default=8, help="automatic-mask grid of both runs")
    ap.add_argument("--name", default="labelstudio_prelabel")
    args = ap.parse_args()
    from tests.integration.test_labelstudio import TOKEN, LabelStudio, _cache_dir, _executable

    exe = _executable()
    if exe is None:
        sys.exit("Label Studio not found: set SAMGRAPH_LABEL_STUDIO or install it into ../lsvenv")
    photos = sorted(PHOTOS.glob("*.jpg"))[: args.n]
    sets = [f"amg.points_per_side={args.points_per_side}", "amg.pred_iou_thresh=0", "amg.stability_score_thresh=0"]
    with tempfile.TemporaryDirectory(prefix="samgraph-lsbench-") as tmp:
        tmp = Path(tmp)
        store = tmp / "qdrant"
        t0 = time.perf_counter()
        names = add_examples(store, args.n)
        print(f"{len(names)} examples (one per category) in {time.perf_counter() - t0:.1f} s", flush=True)
        sets.append(f"retriever.path={store}")
        folder = tmp / "photos"
        folder.mkdir()
        for p in photos:
            os.symlink(p, folder / p.name)

        print(f"samgraph batch on {len(photos)} photos ...", flush=True)
        batch_cmd = ["batch", "--input", str(folder), "--output", str(tmp / "out"), "--prompts", "auto"]
        batch_cmd += ["--predict", "--collection", COLLECTION, "--quiet", *[f"--set={s}" for s in sets]]
        batch_process_s, _ = run(batch_cmd)
        batch = json.loads((tmp / "out" / "summary.json").read_text())

        data, cache = tmp / "ls-data", _cache_dir(exe)
        if (cache / "label_studio.sqlite3").is_file():
            shutil.copytree(cache, data)
        ls = LabelStudio(exe, data, tmp / "label-studio.log")
        try:
            print(f"Label Studio up in {ls.wait_up():.1f} s", flush=True)
            r = ls.api.post("/api/projects", json={"title": "coco32", "label_config": label_config(names)})
            pid = r.json()["id"]
            files = [(f"file{i}", (p.name, p.read_bytes(), "image/jpeg")) for i, p in enumerate(photos)]
            assert ls.api.post(f"/api/projects/{pid}/import", files=files).json()["task_count"] == len(photos)
            print(f"samgraph labelstudio prelabel on project {pid} ...", flush=True)
            pre_cmd = ["labelstudio", "prelabel", str(pid), "--url", ls.url, "--api-key", TOKEN, "--collection", COLLECTION]
            pre_cmd += ["--quiet", "--json", *[f"--set={s}" for s in sets]]
            prelabel_process_s, out = run(pre_cmd)
            prelabel = json.loads(out)
            stored = [p for p in ls.api.get("/api/predictions", params={"project": pid}).json() if p["model_version"] == prelabel["model_version"]]
        finally:
            ls.stop()
    assert len(stored) == prelabel["predicted"] == len(photos), (len(stored), prelabel)
    ratio = prelabel["images_per_s"] / batch["images_per_s"]
    print(f"\n{'':<34}{'images':>8}{'images/s':>10}{'process s':>11}")
    print(f"{'samgraph batch':<34}{batch['images_ok']:>8}{batch['images_per_s']:>10.3f}{batch_process_s:>11.1f}")
    print(f"{'samgraph labelstudio prelabel':<34}{prelabel['predicted']:>8}{prelabel['images_per_s']:>10.3f}{prelabel_process_s:>11.1f}")
    print(f"ratio prelabel / batch: {ratio:.3f}")
    path = write_result(
        args.name,
        {
            "photos": str(PHOTOS),
            "n": len(photos),
            "model_id": "sam2.1_hiera_tiny",
            "weights": "random",
            "settings": sets[:-1],
            "examples": {"collection": COLLECTION, "labels": names},
            "samgraph_batch": {
                "images": batch["images_ok"],
                "instances": batch["instances"],
                "pipeline_wall_s": batch["wall_s"],
                "images_per_s": batch["images_per_s"],
                "process_wall_s": batch_process_s,
                "stage_ms_per_image": batch["stage_ms_per_image"],
            },
            "samgraph_labelstudio_prelabel": {
                "tasks": prelabel["tasks"],
                "predicted": prelabel["predicted"],
                "failed": prelabel["failed"],
                "regions": prelabel["regions"],
                "pipeline_wall_s": prelabel["wall_s"],
                "images_per_s": prelabel["images_per_s"],
                "process_wall_s": prelabel_process_s,
                "stage_ms_per_image": prelabel["stage_ms_per_image"],
            },
            "ratio_prelabel_over_batch": ratio,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
