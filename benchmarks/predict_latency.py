"""/v1/predict per-stage latency, and samgraph's automatic masks against sam2's own generator, same run.

Baselines, measured in this process before the service starts (same seeded random weights, threads):
  sam2 AMG     - Meta's SAM2AutomaticMaskGenerator.generate (encode included), the same settings;
  ours AMG     - samgraph's encoder + models.amg.generate_masks over the split decoder;
  one-process  - SAM2AutomaticMaskGenerator + fade/crop + open_clip + numpy brute-force k-NN in a loop
                 (what a script without serving would do).
Service: `serve run configs/serve.yaml` with the same settings; /v1/predict on truck.jpg, cold (new
image) and warm (cached image_id), with the server-side time of each stage.

Random weights give predicted IoU near 0.5 and stability 0, so the filters are set to
pred_iou_thresh 0.5 and stability 0 (reported: how many masks survive), else nothing would.

    python -m benchmarks.predict_latency [--points-per-side 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.baselines import OneProcessPredict, load_rgb, timed
from benchmarks.common import REPO, SHARED_DATA, b64, png_variants, serve_config, stage_medians, summarize, write_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    p.add_argument("--points-per-side", type=int, default=16)
    p.add_argument("--max-instances", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    amg = {"points_per_side": args.points_per_side, "points_per_batch": 64, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.0, "box_nms_thresh": 0.7}

    from models.amg import AmgSettings, generate_masks
    from models.sam2_decoder import Sam2MaskDecoder
    from models.sam2_image import Sam2ImageEncoder

    rgb = load_rgb(SHARED_DATA / "images" / "truck.jpg")
    one = OneProcessPredict(amg, args.max_instances, args.threads)
    one.store([rgb[275:850, 75:1725]], normalize=False)  # one stored example: a k-NN over one vector
    encoder, decoder = Sam2ImageEncoder(one.sam), Sam2MaskDecoder(one.sam)  # the same weights

    t_ref, t_ours, t_one, n_masks = [], [], [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        ref_masks = one.generator.generate(rgb)
        t_ref.append(time.perf_counter() - t)
        t = time.perf_counter()
        ours = generate_masks(decoder, encoder.encode(rgb), AmgSettings(**amg))
        t_ours.append(time.perf_counter() - t)
        n_masks.append(len(ours))
        assert len(ours) == len(ref_masks)
        t_one += timed(lambda: one(rgb), 1)

    stages, cold, warm = [], [], []
    with serve_config(Path(args.config), {"SAMGRAPH_WEIGHTS": "random", "SAMGRAPH_SEED": "0", "SAMGRAPH_DATA_DIR": str(REPO / "benchmarks" / "results" / ".data")}) as url:
        import httpx

        from serve_app.client import SamgraphClient

        images = [b64(x) for x in png_variants(rgb, args.runs + 1)]
        with SamgraphClient(url, timeout_s=600) as api:
            api.add_example({"image": {"base64": images[0]}, "box_xyxy": [75, 275, 1725, 850], "label": "truck", "collection": "bench"})
        with httpx.Client(base_url=url, timeout=600) as c:  # the timed calls: the bare HTTP round trip
            body = {"collection": "bench", "max_instances": args.max_instances, "amg": amg}
            for data in images[1:]:
                t = time.perf_counter()
                r = c.post("/v1/predict", json={**body, "image": {"base64": data}})
                cold.append(time.perf_counter() - t)
                r.raise_for_status()
                stages.append(r.json()["timing_ms"])
                t = time.perf_counter()
                c.post("/v1/predict", json={**body, "image_id": r.json()["image_id"]}).raise_for_status()
                warm.append(time.perf_counter() - t)
            instances = len(r.json()["instances"])

    med = stage_medians(stages)
    result = {
        "settings": amg,
        "masks_after_nms": n_masks,
        "instances_per_predict": instances,
        "sam2_amg_generate": summarize(t_ref),
        "samgraph_encode_plus_amg": summarize(t_ours),
        "one_process_predict": summarize(t_one),
        "service_predict_cold": summarize(cold),
        "service_predict_warm": summarize(warm),
        "service_cold_stage_median_ms": med,
        "ratios": {
            "samgraph_amg_over_sam2_amg": float(np.median(t_ours) / np.median(t_ref)),
            "service_cold_over_one_process": float(np.median(cold) / np.median(t_one)),
        },
    }
    print(f"settings {amg}; masks after NMS {n_masks}; instances per predict {instances}")
    print(f"{'workload':<46} {'n':>3} {'p50 ms':>10}")
    for name in ("sam2_amg_generate", "samgraph_encode_plus_amg", "one_process_predict", "service_predict_cold", "service_predict_warm"):
        print(f"{name:<46} {result[name]['n']:>3} {result[name]['p50_ms']:>10.1f}")
    print("service cold, server-side median per stage (ms):", {k: round(v, 1) for k, v in med.items()})
    for k, v in result["ratios"].items():
        print(f"{k}: {v:.3f}")
    print(f"wrote {write_result('predict_latency', result)}")


if __name__ == "__main__":
    main()
