"""/v1/segment latency against the bare model, measured in the same run.

Baseline ("bare"): samgraph's own batched encoder and decoder (models/), in this process, same weights
and torch threads as the shipped config, no serving. Service: `serve run configs/serve.yaml` on
127.0.0.1 with the same seeded random weights (the compute is the real SAM 2.1 cost).

Workloads, one request at a time (latency, not throughput; see the load benchmarks for that):
  cold  - a new image every request (the truck photo with one pixel changed), one box;
  click - a point prompt on a cached image, by image_id (what an annotation tool sends per click).

Reports p50/p95/p99 and the ratios service/bare, writes benchmarks/results/segment_latency.json.

    python benchmarks/segment_latency.py [--config configs/serve.yaml] [--cold 5] [--clicks 40]
"""

from __future__ import annotations

import argparse
import base64
import io
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from benchmarks.common import REPO, SHARED_DATA, serve_config, summarize, write_result

TRUCK_BOX = [75, 275, 1725, 850]


def variants(rgb: np.ndarray, n: int) -> list[bytes]:
    """``n`` PNGs of the photo, each with one pixel changed: new bytes, new image_id, same compute."""
    out = []
    for i in range(n):
        img = rgb.copy()
        img[0, i] = (img[0, i].astype(int) + 1) % 256
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
        out.append(buf.getvalue())
    return out


def bare(rgb: np.ndarray, args, enc_threads: int, dec_threads: int) -> dict:
    import torch

    from models.sam2_decoder import PromptSpec, Sam2MaskDecoder
    from models.sam2_image import Sam2ImageEncoder, build_sam2_model

    model = build_sam2_model(args.model_id, seed=0)
    encoder, decoder = Sam2ImageEncoder(model), Sam2MaskDecoder(model)
    box = PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32))
    click = PromptSpec(point_coords=np.array([[500, 375]], np.float32), point_labels=np.ones(1, np.int32))
    torch.set_num_threads(enc_threads)
    encoder.encode(rgb)  # warm-up
    enc = []
    for _ in range(args.cold):
        t = time.perf_counter()
        feats = encoder.encode(rgb)
        enc.append(time.perf_counter() - t)
    torch.set_num_threads(dec_threads)
    for _ in range(3):
        decoder.predict(feats, click, True)
    dec_box, dec_click = [], []
    for _ in range(args.clicks):
        t = time.perf_counter()
        decoder.predict(feats, box, False)
        dec_box.append(time.perf_counter() - t)
        t = time.perf_counter()
        decoder.predict(feats, click, True)
        dec_click.append(time.perf_counter() - t)
    return {"encode": summarize(enc), "decode_box": summarize(dec_box), "decode_click": summarize(dec_click)}


def service(url: str, rgb: np.ndarray, args) -> dict:
    import httpx

    cold, click, parts = [], [], []
    with httpx.Client(base_url=url, timeout=300) as c:
        images = variants(rgb, args.cold + 1)
        c.post("/v1/segment", json={"image": {"base64": base64.b64encode(images[0]).decode()}, "prompts": [{"box_xyxy": TRUCK_BOX}]})
        for data in images[1:]:
            body = {"image": {"base64": base64.b64encode(data).decode()}, "prompts": [{"box_xyxy": TRUCK_BOX}]}
            t = time.perf_counter()
            r = c.post("/v1/segment", json=body)
            cold.append(time.perf_counter() - t)
            r.raise_for_status()
            parts.append(r.json()["timing_ms"])
        image_id = r.json()["image_id"]
        body = {"image_id": image_id, "prompts": [{"points": [[500, 375, 1]]}]}
        for _ in range(3):
            c.post("/v1/segment", json=body)
        click_parts = []
        for _ in range(args.clicks):
            t = time.perf_counter()
            r = c.post("/v1/segment", json=body)
            click.append(time.perf_counter() - t)
            r.raise_for_status()
            click_parts.append(r.json()["timing_ms"])

    def medians(ps: list[dict]) -> dict:
        return {k: float(np.median([p[k] for p in ps])) for k in ps[0]}

    return {"cold": summarize(cold), "click": summarize(click), "cold_stage_median_ms": medians(parts), "click_stage_median_ms": medians(click_parts)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    p.add_argument("--model-id", default="sam2.1_hiera_tiny")
    p.add_argument("--cold", type=int, default=5, help="cold requests (each encodes, ~3 s on 2 CPU cores)")
    p.add_argument("--clicks", type=int, default=40)
    args = p.parse_args()

    with Image.open(SHARED_DATA / "images" / "truck.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))
    app = yaml.safe_load(open(args.config))["applications"][0]["args"]
    enc_t, dec_t = app["encoder"].get("torch_threads") or 1, app["decoder"].get("torch_threads") or 1

    b = bare(rgb, args, enc_t, dec_t)  # first, alone on the machine
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
