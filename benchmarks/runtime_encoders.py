"""Each runtime and precision of a model's encoder and decoder against eager torch fp32, in one process.

For every model measured (default: SAM 2.1 tiny and MobileSAM, the families that export), with seeded random
weights (the real compute; masks meaningless) and the same torch/runtime thread count:

1. the model is built through its family and exported (``SegmenterFamily.export_onnx``) into a temporary
   directory; each runtime loads that ONNX (``models.runtime.load_graph``; OpenVINO's first conversion is
   timed as ``load_s``, with its compiled-model cache in the same directory);
2. **encoder**: one real photo (truck.jpg, 1800x1200), encoded by every variant in turn, round after round
   (so load from other processes falls on all alike); p50 per variant, and the speed-up = torch fp32 p50 /
   variant p50;
3. **accuracy**: the largest absolute difference of every feature array to torch fp32's, and the IoU of the
   masks the torch decoder draws from the variant's features for the truck box and a click, to fp32's
   (reported, not asserted: bf16 changes features);
4. **decoder**: ``--clicks`` clicks on cached features, torch fp32 against each runtime's decoder graph: a new
   seeded random click each round, three masks and one in turn, the decoders in a new random order each
   round; the worst mask IoU to torch's over the rounds;
5. **grid**: the automatic-mask generator's forward pass, ``--grid-clicks`` (64, sam2's ``points_per_batch``)
   clicks of its point grid, three masks each, in one batch (``decode_points``), torch fp32 against each
   decoder graph, with the IoU of their low-res masks to torch's.

Variants on CPU: torch fp32, torch bf16 (autocast), onnxruntime fp32, openvino fp32, openvino bf16 -- the bf16
ones only where the CPU runs bf16 natively (AVX-512 BF16 or AMX; elsewhere they would fall back to fp32), unless
``--all-precisions``. On a GPU (``--device cuda``): torch fp32 and bf16, TensorRT fp32 and fp16. Writes ``benchmarks/results/runtime_encoders.json`` with the CPU model and flags.

    python -m benchmarks.runtime_encoders [--models sam2.1_hiera_tiny mobile_sam] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SHARED_DATA, cpu_info, summarize, write_result

DEFAULT_MODELS = ("sam2.1_hiera_tiny", "mobile_sam")
TRUCK_BOX = [75, 275, 1725, 850]
CLICK_XY = [500, 375]
#: (runtime, precision) pairs measured; torch fp32 is the baseline.
VARIANTS = (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))
#: The same on a GPU (``--device cuda``, benchmarks/gpu_check.sh).
GPU_VARIANTS = (("torch", "fp32"), ("torch", "bf16"), ("tensorrt", "fp32"), ("tensorrt", "fp16"))


def load_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def feature_arrays(features) -> list[np.ndarray]:
    """The float arrays of a family's opaque features object (dataclass fields, nested tuples flattened)."""
    import dataclasses

    out = []
    for f in dataclasses.fields(features):
        value = getattr(features, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                out.append(v)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def prompts():
    """(name, PromptSpec, multimask_output) of the box and the click measured."""
    from models.prompts import PromptSpec

    box = PromptSpec(box_xyxy=np.asarray(TRUCK_BOX, np.float32))
    click = PromptSpec(point_coords=np.asarray([CLICK_XY], np.float32), point_labels=np.asarray([1], np.int32))
    return [("box", box, False), ("click", click, True)]


def masks_of(decoder, features) -> dict[str, np.ndarray]:
    """The masks ``decoder`` draws for :func:`prompts` on ``features``."""
    return {name: decoder.predict(features, p, multimask).masks for name, p, multimask in prompts()}


def measure_model(
    model_id: str,
    rounds: int,
    threads: int,
    clicks: int,
    variants: list[tuple[str, str]],
    device: str = "cpu",
    grid_clicks: int = 64,
    grid_rounds: int = 3,
) -> dict:
    """Every variant of ``model_id``'s encoder and decoder against torch fp32 (see the module docstring)."""
    import torch

    from models.accel import AccelSettings
    from models.registry import family_of, get_model_spec
    from models.runtime import RuntimeSettings, load_graph, resolve
    from models.segmenter import DECODER_FILE, ENCODER_FILE

    torch.set_num_threads(threads)
    family = family_of(model_id)
    model = family.build(get_model_spec(model_id), None, seed=0, device=device)
    flags = frozenset(f for f, on in cpu_info()["flags"].items() if on)
    rgb = load_rgb(SHARED_DATA / "images" / "truck.jpg")
    out: dict = {"family": family.name, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        files = family.export_onnx(model)
        out["export_s"] = time.perf_counter() - t
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        out["export_mb"] = {name: len(data) / 1e6 for name, data in files.items()}
        encoders, decoders = {}, {}
        for runtime, precision in variants:
            key = f"{runtime} {precision}"
            fallbacks: list[str] = []
            asked = RuntimeSettings(runtime, precision, device, threads=threads, cache_dir=str(Path(tmp) / "cache"))
            in_force = resolve(asked, flags, family.runtimes, fallbacks.append, key)
            out["variants"][key] = {"in_force": f"{in_force.runtime} {in_force.precision}", "fallbacks": fallbacks}
            t = time.perf_counter()
            if f"{in_force.runtime} {in_force.precision}" in encoders:
                continue  # fell back to a variant already measured: its fallbacks are the record
            if in_force.runtime == "torch":
                encoders[key] = family.encoder(model, AccelSettings(precision=in_force.precision))
                if in_force.precision == "fp32":
                    decoders[key] = family.decoder(model)
            else:
                graph = load_graph(str(Path(tmp) / ENCODER_FILE), in_force)
                encoders[key] = family.encoder(model, graph=graph)
                if in_force.precision == "fp32":
                    decoders[key] = family.decoder(model, graph=load_graph(str(Path(tmp) / DECODER_FILE), in_force))
            out["variants"][key]["load_s"] = time.perf_counter() - t
        base = "torch fp32"
        times: dict[str, list[float]] = {k: [] for k in encoders}
        features = {}
        for _ in range(rounds + 1):  # round 0 warms every variant up
            for key, encoder in encoders.items():
                t = time.perf_counter()
                features[key] = encoder.encode_batch([rgb])[0]
                times[key].append(time.perf_counter() - t)
        torch_decoder = decoders[base]
        ref_masks = masks_of(torch_decoder, features[base])
        ref_arrays = feature_arrays(features[base])
        base_p50 = float(np.median(times[base][1:]))
        for key, samples in times.items():
            v = out["variants"][key]
            v["encode"] = summarize(samples[1:])
            v["encode_speedup"] = base_p50 / v["encode"]["p50_ms"] * 1e3
            v["feature_max_abs_diff"] = max(
                float(np.abs(a - b).max()) for a, b in zip(feature_arrays(features[key]), ref_arrays)
            )
            v["feature_max_abs"] = max(float(np.abs(a).max()) for a in ref_arrays)
            masks = masks_of(torch_decoder, features[key])
            v["mask_iou_to_fp32"] = {n: min(iou(a, b) for a, b in zip(masks[n], ref_masks[n])) for n in ref_masks}
        # Clicks: a new seeded random click each round, three masks and one in turn, the decoders in a new
        # random order each round (so neither the click nor the position in the round favours one).
        from models.prompts import PromptSpec

        rng = np.random.default_rng(0)
        h, w = features[base].orig_hw
        dec_times: dict[str, list[float]] = {k: [] for k in decoders}
        for r in range(clicks + 1):
            xy = rng.uniform([0, 0], [w, h]).astype(np.float32)[None]
            click = PromptSpec(point_coords=xy, point_labels=np.asarray([1], np.int32))
            order = list(decoders)
            rng.shuffle(order)
            preds = {}
            for key in order:
                t = time.perf_counter()
                preds[key] = decoders[key].predict(features[base], click, r % 2 == 0)
                dec_times[key].append(time.perf_counter() - t)
            for key in decoders:
                if key != base:
                    worst = min(iou(a, b) for a, b in zip(preds[key].masks, preds[base].masks))
                    v = out["variants"][key]
                    v["decoder_mask_iou_to_torch"] = min(worst, v.get("decoder_mask_iou_to_torch", 1.0))
        dec_base = float(np.median(dec_times[base][1:]))
        for key, samples in dec_times.items():
            v = out["variants"][key]
            v["click_decoder"] = summarize(samples[1:])
            v["click_speedup"] = dec_base / v["click_decoder"]["p50_ms"] * 1e3
        # The automatic-mask grid's forward pass: ``grid_clicks`` clicks, three masks each, in one batch
        # (``decode_points``, as models.amg.generate_masks calls it), low-res logits compared to torch's.
        from models.amg import grid_points

        side = int(round(grid_clicks**0.5))
        grid = grid_points(side, features[base].orig_hw)
        grid_times: dict[str, list[float]] = {k: [] for k in decoders}
        grid_ref = None
        for _ in range(grid_rounds + 1):
            for key, decoder in decoders.items():
                t = time.perf_counter()
                low_res, _ = decoder.decode_points(features[base], grid, multimask_output=True)
                grid_times[key].append(time.perf_counter() - t)
                if key == base:
                    grid_ref = low_res > 0
                elif grid_ref is not None:
                    both = (grid_ref & (low_res > 0)).sum().item()
                    either = (grid_ref | (low_res > 0)).sum().item()
                    out["variants"][key]["grid_low_res_iou_to_torch"] = both / max(either, 1)
        grid_base = float(np.median(grid_times[base][1:]))
        for key, samples in grid_times.items():
            v = out["variants"][key]
            v["grid_decoder"] = summarize(samples[1:])
            v["grid_clicks"] = len(grid)
            v["grid_speedup"] = grid_base / v["grid_decoder"]["p50_ms"] * 1e3
        areas = {n: [int(m.sum()) for m in ms] for n, ms in ref_masks.items()}
        out["reference_mask_areas_px"] = areas  # non-empty and different between prompts: a real comparison
    return out


def print_table(result: dict) -> None:
    """The encoder and decoder tables, as docs/performance.md shows them."""
    for model_id, r in result["models"].items():
        print(f"\n{model_id} (export {r['export_s']:.1f} s)")
        print(
            f"{'variant':<18} {'load s':>7} {'encode p50':>11} {'speed-up':>8} {'max |dF|':>9} {'IoU box/click':>14} {'click p50':>10} {'x':>5} {'grid p50':>9} {'x':>5}"
        )
        for key, v in r["variants"].items():
            if "encode" not in v:
                print(f"{key:<18} fell back to {v['in_force']}: {v['fallbacks']}")
                continue
            dec = v.get("click_decoder")
            ious = v["mask_iou_to_fp32"]
            print(
                f"{key:<18} {v['load_s']:>7.1f} {v['encode']['p50_ms']:>9.0f}ms {v['encode_speedup']:>7.2f}x "
                f"{v['feature_max_abs_diff']:>9.2g} {ious['box']:>6.4f}/{ious['click']:.4f} "
                + (f"{dec['p50_ms']:>8.1f}ms {v['click_speedup']:>4.2f}x" if dec else "")
                + (f" {v['grid_decoder']['p50_ms']:>7.0f}ms {v['grid_speedup']:>4.2f}x" if dec else "")
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--rounds", type=int, default=5, help="encodes per variant (after one warm-up)")
    p.add_argument("--clicks", type=int, default=20, help="decoder clicks per variant (after one warm-up)")
    p.add_argument("--grid-clicks", type=int, default=64, help="clicks of the automatic-mask grid pass (a square)")
    p.add_argument("--grid-rounds", type=int, default=3, help="grid passes per decoder (after one warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU variants")
    p.add_argument("--all-precisions", action="store_true", help="measure bf16 even where the CPU emulates it")
    p.add_argument("--out", default="runtime_encoders")
    args = p.parse_args()
    from models.runtime import native_bf16

    flags = {f for f, on in cpu_info()["flags"].items() if on}
    if args.device == "cpu":
        variants = [v for v in VARIANTS if v[1] == "fp32" or args.all_precisions or native_bf16(flags)]
    else:
        variants = list(GPU_VARIANTS)
    result = {
        "threads": args.threads,
        "device": args.device,
        "rounds": args.rounds,
        "image": "truck.jpg 1800x1200",
        "variants": [f"{r} {p}" for r, p in variants],
        "models": {
            m: measure_model(
                m, args.rounds, args.threads, args.clicks, variants, args.device, args.grid_clicks, args.grid_rounds
            )
            for m in args.models
        },
    }
    print_table(result)
    print(write_result(args.out, result))


if __name__ == "__main__":
    main()
