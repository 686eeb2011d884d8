"""/v1/segment latency against the bare model, measured in the same run.

Baseline ("bare", benchmarks/baselines.py): samgraph's own batched encoder and decoder (models/), in
this process, same weights and torch threads as the shipped config, no serving. Service: `serve run configs/serve.yaml` on
127.0.0.1 with the same seeded random weights (the compute is the real SAM 2.1 cost).

Workloads, one request at a time (latency, not throughput; see the load benchmarks for that):
  cold  - a new image every request (the truck photo with one pixel changed), one box;
  click - a point prompt on a cached image, by image_id (what an annotation tool sends per click).

Reports p50/p95/p99 and the ratios service/bare, writes benchmarks/results/segment_latency.json.

    python benchmarks/segment_latency.py [--config configs/serve.yaml] [--cold 5] [--clicks 40]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml

from benchmarks.baselines import bare_encode_decode, load_rgb
from benchmarks.common import (
    REPO,
    SHARED_DATA,
    b64,
    png_variants,
    serve_config,
    stage_medians,
    summarize,
    timed_post,
    write_result,
)

TRUCK_BOX = [75, 275, 1725, 850]
CLICK_XY = [500, 375]


def service(url: str, rgb: np.ndarray, args) -> dict:
    """/v1/segment, one request at a time: ``args.cold`` new images with a box (after one unmeasured),
    then ``args.clicks`` clicks on the last one by image_id (after 3 warm-up clicks)."""
    import httpx

    with httpx.Client(base_url=url, timeout=300) as c:
        first, *images = [{"image": {"base64": b64(data)}, "prompts": [{"box_xyxy": TRUCK_BOX}]} for data in png_variants(rgb, args.cold + 1)]
        c.post("/v1/segment", json=first)
        cold = [timed_post(c, body) for body in images]
        click_body = {"image_id": cold[-1][1]["image_id"], "prompts": [{"points": [[*CLICK_XY, 1]]}]}
        for _ in range(3):
            c.post("/v1/segment", json=click_body)
        click = [timed_post(c, click_body) for _ in range(args.clicks)]
    return {
        "cold": summarize([s for s, _ in cold]),
        "click": summarize([s for s, _ in click]),
        "cold_stage_median_ms": stage_medians([r["timing_ms"] for _, r in cold]),
        "click_stage_median_ms": stage_medians([r["timing_ms"] for _, r in click]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    p.add_argument("--model-id", default="sam2.1_hiera_tiny")
    p.add_argument("--cold", type=int, default=5, help="cold requests (each encodes, ~3 s on 2 CPU cores)")
    p.add_argument("--clicks", type=int, default=40)
    args = p.parse_args()

    rgb = load_rgb(SHARED_DATA / "images" / "truck.jpg")
    from serve_app.config import AppArgs

    cfg = AppArgs.model_validate(yaml.safe_load(open(args.config))["applications"][0]["args"])  # threads_per_node resolved
    enc_t, dec_t = cfg.encoder.torch_threads or 1, cfg.decoder.torch_threads or 1

    # first, alone on the machine
    b = bare_encode_decode(rgb, args.model_id, args.cold, args.clicks, enc_t, dec_t, TRUCK_BOX, CLICK_XY)
    with serve_config(Path(args.config), {"SAMGRAPH_WEIGHTS": "random", "SAMGRAPH_SEED": "0"}) as url:
        s = service(url, rgb, args)

    cold_base = b["encode"]["p50_ms"] + b["decode_box"]["p50_ms"]
    ratios = {
        "cold_p50_service_over_bare": s["cold"]["p50_ms"] / cold_base,
        "click_p50_service_over_bare_decoder": s["click"]["p50_ms"] / b["decode_click"]["p50_ms"],
        "click_p50_overhead_ms": s["click"]["p50_ms"] - b["decode_click"]["p50_ms"],
    }
    rows = [
        ("bare encode (truck 1800x1200)", b["encode"]),
        ("bare decode, box", b["decode_box"]),
        ("bare decode, click (3 masks)", b["decode_click"]),
        ("/v1/segment cold (new image, box)", s["cold"]),
        ("/v1/segment click (cached image_id)", s["click"]),
    ]
    print(f"{'workload':<40} {'n':>4} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}")
    for name, r in rows:
        print(f"{name:<40} {r['n']:>4} {r['p50_ms']:>9.1f} {r['p95_ms']:>9.1f} {r['p99_ms']:>9.1f}")
    for kind in ("cold", "click"):
        print(f"{kind} request, server-side median per stage (ms):", {k: round(v, 1) for k, v in s[f"{kind}_stage_median_ms"].items()})
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    path = write_result(
        "segment_latency",
        {"config": str(Path(args.config).relative_to(REPO)), "model_id": args.model_id, "threads": {"encoder": enc_t, "decoder": dec_t}, "bare": b, "service": s, "ratios": ratios},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
