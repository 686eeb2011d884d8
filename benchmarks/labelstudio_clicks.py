"""Interactive clicks through Label Studio against the same clicks sent straight to samgraph, measured in one
run on the same cached image: what Label Studio adds to a click, and what samgraph's own part is.

Service: `serve run configs/serve.yaml` (the shipped CPU config) on 127.0.0.1 with SAMGRAPH_WEIGHTS=random
(seeded: the real SAM 2.1 tiny compute), ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` set so that every
ingress replica reads Label Studio's files. Label Studio 1.23 (from PyPI, unmodified) runs from
``$SAMGRAPH_LABEL_STUDIO`` or ../lsvenv, started as tests/integration/test_labelstudio.py starts it (its
class, imported; the migrated data folder cached), with a project of truck.jpg connected to samgraph as its
interactive ML backend.

Per round, one keypoint on truck.jpg (1800x1200), sent three ways one after the other:
  label_studio - Label Studio's REST call that its labeling page makes for a smart-tool click,
                 ``POST /api/ml/{id}/interactive-annotating`` (Label Studio forwards it to samgraph's
                 ``/integrations/label-studio/predict`` and answers its prediction);
  ls_route     - the body Label Studio sends there, sent straight to samgraph: samgraph's Label Studio
                 protocol (task image by its remembered id, brush RLE by label-studio-sdk) without Label
                 Studio;
  segment      - ``POST /v1/segment`` by ``image_id`` with the same point and ``max_masks: 1``: the API alone.
The image is fetched and encoded in the warm-up rounds (every ingress replica's first click); the measured
rounds must not encode (``/v1/stats`` ``cache.encodes`` does not grow; the run fails otherwise).

Reports p50/p95/p99 of each, the differences of the medians and per round (Label Studio's own added
latency: label_studio - ls_route; samgraph's protocol: ls_route - segment), samgraph's own part
(``/v1/segment``'s server ``timing_ms``: total and stages), the masks' size (area, brush RLE length,
answer bytes) and label-studio-sdk's brush RLE encode time in this process on the last mask and on a box
of the truck (a smooth mask). With random weights the masks are noise over most of the photo, whose brush
RLE is long: the protocol's and Label Studio's parts grow with it. Writes
benchmarks/results/labelstudio_clicks.json.

    python -m benchmarks.labelstudio_clicks [--rounds 40] [--warmup 4]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, SHARED_DATA, serve_config, stage_medians, summarize, write_result

PHOTO = SHARED_DATA / "images" / "truck.jpg"
W, H = 1800, 1200
#: A brush mask control over the image, as tests/integration/test_labelstudio.py's config has.
CONFIG_XML = '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image"><Label value="truck"/></BrushLabels></View>'


def clicks(n: int, seed: int = 0) -> list[tuple[float, float]]:
    """``n`` points (x, y) in pixels of truck.jpg, seeded, inside the truck's box (100..1700, 200..1100)."""
    rng = np.random.default_rng(seed)
    return [
        (float(x), float(y)) for x, y in zip(rng.uniform(100, 1700, n).round(1), rng.uniform(200, 1100, n).round(1))
    ]


def keypoint(x: float, y: float) -> dict:
    """A smart keypoint region "truck" at (x, y) pixels of truck.jpg as Label Studio's page sends it in
    ``context.result`` (the integration test's body, in percent)."""
    from tests.integration.test_labelstudio import _keypoint

    return _keypoint(x / W * 100, y / H * 100, W, H)


def _timed(client, path: str, body: dict) -> tuple[float, dict]:
    """(seconds, JSON answer) of one POST; the answer's size in bytes is added as ``_bytes``."""
    t = time.perf_counter()
    r = client.post(path, json=body)
    answer = r.json()
    seconds = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:500]}")
    return seconds, {**answer, "_bytes": len(r.content)}


def brush_encode_ms(mask, reps: int = 10) -> float:
    """Median ms of :func:`serve_app.labelstudio.brush_result` (label-studio-sdk's brush RLE) on ``mask``
    ((H, W) bool), in this process."""
    from serve_app.labelstudio import brush_result, parse_label_config

    control = parse_label_config(CONFIG_XML).mask_control
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        brush_result(mask, control, "truck")
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def measure(ls, app_url: str, config_xml: str, rounds: int, warmup: int) -> dict:
    """Set up the project on Label Studio ``ls`` (a running ``LabelStudio``), then ``warmup`` + ``rounds``
    rounds of the three calls; the measured rounds' durations and checks."""
    import httpx

    from models.masks import decode_rle

    api = ls.api
    pid = api.post("/api/projects", json={"title": "samgraph clicks", "label_config": config_xml}).json()["id"]
    files = [("file", (PHOTO.name, PHOTO.read_bytes(), "image/jpeg"))]
    assert api.post(f"/api/projects/{pid}/import", files=files).json()["task_count"] == 1
    (task,) = api.get("/api/tasks", params={"project": pid}).json()["tasks"]
    connection = {"url": f"{app_url}/integrations/label-studio", "project": pid, "is_interactive": True}
    ml = api.post("/api/ml", json={**connection, "title": "samgraph"}).json()
    if ml.get("state") != "CO":
        raise RuntimeError(f"Label Studio did not connect samgraph: {ml}")
    task_body = {"id": task["id"], "data": task["data"]}
    image_id = hashlib.sha256(PHOTO.read_bytes()).hexdigest()  # what samgraph names the photo by

    points = clicks(warmup + rounds)
    out = {
        k: [] for k in ("label_studio", "ls_route", "segment", "segment_server", "brush_rle_len", "mask_px", "bytes")
    }
    with httpx.Client(base_url=app_url, timeout=300) as sg:
        for i, (x, y) in enumerate(points):
            if i == warmup:
                before = sg.get("/v1/stats").json()["cache"]
            ctx = {"result": [keypoint(x, y)]}
            via_ls, answer = _timed(
                api, f"/api/ml/{ml['id']}/interactive-annotating", {"task": task["id"], "context": ctx}
            )
            if "errors" in answer or answer["data"]["result"][0]["type"] != "brushlabels":
                raise RuntimeError(f"Label Studio answered {str(answer)[:500]}")
            body = {"tasks": [task_body], "project": f"{pid}.0", "label_config": config_xml, "params": {"context": ctx}}
            route_s, routed = _timed(sg, "/integrations/label-studio/predict", body)
            assert routed["results"][0]["result"][0]["type"] == "brushlabels"
            seg = {"image_id": image_id, "prompts": [{"points": [[x, y, 1]]}], "max_masks": 1, "mask_format": "rle"}
            seg_s, direct = _timed(sg, "/v1/segment", seg)
            if i >= warmup:
                out["label_studio"].append(via_ls)
                out["ls_route"].append(route_s)
                out["segment"].append(seg_s)
                out["segment_server"].append(direct["timing_ms"])
                out["brush_rle_len"].append(len(routed["results"][0]["result"][0]["value"]["rle"]))
                mask = decode_rle(direct["results"][0]["masks"][0]["rle"])
                out["mask_px"].append(int(mask.sum()))
                out["bytes"].append(routed["_bytes"])
        after = sg.get("/v1/stats").json()["cache"]
    encodes = after["encodes"] - before["encodes"]
    if encodes:
        raise RuntimeError(f"{encodes} encode(s) during the measured rounds: the clicks were not all cache hits")
    # label-studio-sdk's brush RLE, in this process: on the last measured mask, and on a box of the truck
    # (a smooth mask, as a real model's is) for comparison
    box = np.zeros((H, W), bool)
    box[200:1100, 100:1700] = True
    out["brush_encode_ms"] = {"measured_mask": brush_encode_ms(mask), "truck_box_mask": brush_encode_ms(box)}
    out["cache"] = {
        "encodes_during_measured_rounds": encodes,
        "hits_during_measured_rounds": after["hits"] - before["hits"],
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--warmup", type=int, default=4, help="rounds not measured (fetch and encode on each replica)")
    args = p.parse_args()

    from tests.integration.test_labelstudio import CONFIG, TOKEN, LabelStudio, _cache_dir, _executable

    exe = _executable()
    load_at_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="samgraph-lsclicks-") as tmp:
        tmp = Path(tmp)
        cache = _cache_dir(exe)
        if (cache / "label_studio.sqlite3").is_file():
            shutil.copytree(cache, tmp / "ls-data")
        ls = LabelStudio(exe, tmp / "ls-data", tmp / "label-studio.log")
        try:
            print(f"Label Studio up in {ls.wait_up():.1f} s at {ls.url}")
            env = {
                "SAMGRAPH_WEIGHTS": "random",
                "SAMGRAPH_SEED": "0",
                "SAMGRAPH_DATA_DIR": str(tmp / "data"),
                "LABEL_STUDIO_URL": ls.url,
                "LABEL_STUDIO_API_KEY": TOKEN,
            }
            with serve_config(Path(args.config), env) as url:
                print(f"samgraph up at {url}")
                raw = measure(ls, url, CONFIG, args.rounds, args.warmup)
        finally:
            ls.stop()

    import importlib.metadata as md

    summaries = {k: summarize(raw[k]) for k in ("label_studio", "ls_route", "segment")}
    server = raw["segment_server"]
    paired = {
        "label_studio_minus_ls_route": summarize([a - b for a, b in zip(raw["label_studio"], raw["ls_route"])]),
        "ls_route_minus_segment": summarize([a - b for a, b in zip(raw["ls_route"], raw["segment"])]),
        "label_studio_minus_segment": summarize([a - b for a, b in zip(raw["label_studio"], raw["segment"])]),
    }
    p50 = {k: v["p50_ms"] for k, v in summaries.items()}
    p95 = {k: v["p95_ms"] for k, v in summaries.items()}
    result = {
        "config": str(Path(args.config).relative_to(REPO)),
        "weights": "random (SAMGRAPH_WEIGHTS=random, seed 0)",
        "label_studio_version": _ls_version(exe),
        "label_studio_sdk": md.version("label-studio-sdk"),
        "image": {"name": PHOTO.name, "width": W, "height": H},
        "rounds": args.rounds,
        "warmup": args.warmup,
        "clicks": summaries,
        "samgraph_server_ms": {
            "segment_total": summarize([t["total"] / 1e3 for t in server]),
            "segment_stage_medians": stage_medians(server),
        },
        "added_ms": {
            "label_studio_p50": p50["label_studio"] - p50["ls_route"],
            "label_studio_p95": p95["label_studio"] - p95["ls_route"],
            "ls_protocol_p50": p50["ls_route"] - p50["segment"],
            "ls_protocol_p95": p95["ls_route"] - p95["segment"],
            "through_label_studio_vs_segment_p50": p50["label_studio"] - p50["segment"],
            "through_label_studio_vs_segment_p95": p95["label_studio"] - p95["segment"],
        },
        "paired_differences_per_round": paired,
        "mask": {
            "area_px_median": float(np.median(raw["mask_px"])),
            "area_fraction_median": float(np.median(raw["mask_px"])) / (W * H),
            "brush_rle_len_median": float(np.median(raw["brush_rle_len"])),
            "ls_route_answer_bytes_median": float(np.median(raw["bytes"])),
            "brush_encode_ms_in_process": raw["brush_encode_ms"],
        },
        "loadavg_1_5_15_at_start": load_at_start,
        "cache": raw["cache"],
    }
    path = write_result("labelstudio_clicks", result)
    for k, v in summaries.items():
        print(f"{k:>13}: p50 {v['p50_ms']:7.1f} ms  p95 {v['p95_ms']:7.1f} ms  p99 {v['p99_ms']:7.1f} ms")
    print(f"samgraph server (/v1/segment total): p50 {result['samgraph_server_ms']['segment_total']['p50_ms']:.1f} ms")
    for k, v in paired.items():
        print(f"{k}: p50 {v['p50_ms']:.1f} ms, p95 {v['p95_ms']:.1f} ms (per round)")
    print(f"mask: {result['mask']}; load average at start {load_at_start}")
    print(f"wrote {path}")


def _ls_version(exe: Path) -> str:
    """Label Studio's version, from its virtual environment's package metadata (no process start)."""
    for meta in exe.resolve().parent.parent.glob("lib/python*/site-packages/label_studio-*.dist-info/METADATA"):
        for line in meta.read_text().splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
