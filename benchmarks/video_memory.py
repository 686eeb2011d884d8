"""Video tracking on CPU: per-frame propagation time and peak memory on the 200-frame bedroom clip,
against sam2's own SAM2VideoPredictor measured in the same run.

Both trackers run the same SAM 2.1 tiny weights (seeded random weights, with the test checkpoint's
positive object-score bias so that every frame has masks and the full memory path runs; the compute is
that of the real model), the same two objects (a box and a click on frame 0, as in Meta's notebook),
2 torch threads, each in its own subprocess so that its peak RSS (``VmHWM``) is its own:

  samgraph - models.sam2_video.Sam2VideoTracker on the frames decoded in memory (uint8), frames
             preprocessed on access, memory bank bounded to the model's window (what VideoSegmenter runs);
  sam2     - SAM2VideoPredictor.init_state(<folder of the 200 JPEGs>, offload_video_to_cpu=True,
             offload_state_to_cpu=True), then propagate_in_video: every frame preprocessed up front to
             float32 1024x1024 and every frame's memory kept.

Warm-up: frame 0's encoding inside init (reported as init_ms, not in the per-frame times).
Reports per-frame propagate p50/p95/p99 and mean, frames/s, RSS after 50/100/150/200 frames, peak RSS,
and the ratios samgraph/sam2; writes benchmarks/results/video.json.

    python -m benchmarks.video_memory [--frames 200] [--threads 2] [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from benchmarks.baselines import MODEL_ID, sam2_video_masks
from benchmarks.common import REPO, SHARED_DATA, summarize, write_result
from benchmarks.procmem import MIB, peak_rss_bytes, rss_bytes

BOX = [300, 0, 500, 400]
POINT = [460, 60]


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB (benchmarks/procmem.py)."""
    pid = os.getpid()
    return rss_bytes(pid) / MIB, peak_rss_bytes(pid) / MIB


def _state_dict(seed: int):
    from models.sam2_image import build_sam2_model

    state = build_sam2_model(MODEL_ID, seed=seed).state_dict()
    head = sorted(k for k in state if k.startswith("sam_mask_decoder.pred_obj_score_head.") and k.endswith(".bias"))
    state[head[-1]].fill_(10.0)
    return state


def propagate_timed(masks_of_frames) -> tuple[list[float], list[int], dict[int, float]]:
    """Time each frame of a propagation (each ``next`` of ``masks_of_frames``, (objects, H, W) bool).

    Returns:
        (seconds per frame, mask pixels per frame, RSS in MiB after every 50th frame).
    """
    per_frame, masks_px, rss_at = [], [], {}
    t_prev = time.perf_counter()
    for masks in masks_of_frames:
        now = time.perf_counter()
        per_frame.append(now - t_prev)
        t_prev = now
        masks_px.append(int(masks.sum()))
        if len(per_frame) % 50 == 0:
            rss_at[len(per_frame)] = _rss_mb()[0]
    return per_frame, masks_px, rss_at


def worker(kind: str, n_frames: int, threads: int, out_path: str) -> None:
    """One tracker over the clip in this process; writes its timings and memory to ``out_path``."""
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    paths = [SHARED_DATA / "video" / "bedroom" / "frames" / f"{i:05d}.jpg" for i in range(n_frames)]
    state_dict = _state_dict(1234)
    rss0, _ = _rss_mb()
    with ExitStack() as stack:
        if kind == "samgraph":
            from models.sam2_video import Sam2VideoTracker, VideoSettings, build_sam2_video_model
            from models.sam2_video_types import FramePrompt, VideoObject

            tracker = Sam2VideoTracker(build_sam2_video_model(MODEL_ID, state_dict), VideoSettings(offload_video_to_cpu=True))
            frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])  # what the ingress decodes
            objects = [
                VideoObject(1, (FramePrompt(0, box_xyxy=np.array(BOX, np.float32)),)),
                VideoObject(2, (FramePrompt(0, point_coords=np.array([POINT], np.float32), point_labels=np.array([1], np.int32)),)),
            ]
            steps = tracker.propagate(frames, objects)
            init_ms = next(steps)["init_ms"]  # state, frame 0 encoding and the prompts
            masks_of_frames = (item.masks for item in steps)
        else:
            init_ms, masks_of_frames = stack.enter_context(sam2_video_masks(paths, state_dict, BOX, POINT))
        per_frame, masks_px, rss_at = propagate_timed(masks_of_frames)
    _, peak = _rss_mb()
    Path(out_path).write_text(
        json.dumps(
            {
                "kind": kind,
                "frames": len(per_frame),
                "init_ms": init_ms,
                "per_frame_s": per_frame,
                "rss_before_mb": rss0,
                "rss_at_frame_mb": rss_at,
                "peak_rss_mb": peak,
                "mask_px_total": sum(masks_px),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs-dir", help="keep each tracker's raw result here and reuse one already measured (same --frames)")
    ap.add_argument("--worker", choices=["samgraph", "sam2"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.frames, args.threads, args.out)
        return
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.runs_dir) if args.runs_dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for kind in ("samgraph", "sam2"):  # one after the other: each gets the same cores
            out = folder / f"{kind}.json"
            if out.exists() and json.loads(out.read_text())["frames"] == args.frames:
                print(f"reusing {out} ({kind}, {args.frames} frames)", flush=True)
            else:
                cmd = [sys.executable, "-m", "benchmarks.video_memory", "--worker", kind, "--frames", str(args.frames), "--threads", str(args.threads), "--out", str(out)]
                print(f"running {kind} on {args.frames} frames ...", flush=True)
                subprocess.run(cmd, cwd=REPO, check=True, stderr=subprocess.DEVNULL)
            runs[kind] = json.loads(out.read_text())
    table = {}
    for kind, r in runs.items():
        s = summarize(r["per_frame_s"])
        table[kind] = {
            "frames": r["frames"],
            "init_ms": r["init_ms"],
            "propagate_per_frame": s,
            "frames_per_s": r["frames"] / sum(r["per_frame_s"]),
            "rss_at_frame_mb": r["rss_at_frame_mb"],
            "peak_rss_mb": r["peak_rss_mb"],
            "mask_px_total": r["mask_px_total"],
        }
    ours, base = table["samgraph"], table["sam2"]
    ratios = {
        "propagate_mean": ours["propagate_per_frame"]["mean_ms"] / base["propagate_per_frame"]["mean_ms"],
        "propagate_p50": ours["propagate_per_frame"]["p50_ms"] / base["propagate_per_frame"]["p50_ms"],
        "peak_rss": ours["peak_rss_mb"] / base["peak_rss_mb"],
    }
    print(f"\n{args.frames} frames of bedroom (960x540), 2 objects, SAM 2.1 tiny, CPU, {args.threads} threads")
    print(f"{'':<10} {'init ms':>9} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9} {'fps':>6} {'peak RSS MiB':>13}  RSS at 50/100/150/200 frames")
    for kind, t in table.items():
        p = t["propagate_per_frame"]
        at = " / ".join(f"{v:.0f}" for v in t["rss_at_frame_mb"].values())
        print(f"{kind:<10} {t['init_ms']:>9.0f} {p['p50_ms']:>9.0f} {p['p95_ms']:>9.0f} {p['mean_ms']:>9.0f} {t['frames_per_s']:>6.2f} {t['peak_rss_mb']:>13.0f}  {at}")
    print(f"ratio samgraph/sam2: propagate mean {ratios['propagate_mean']:.3f}, p50 {ratios['propagate_p50']:.3f}, peak RSS {ratios['peak_rss']:.3f}")
    print(f"same masks in total: {ours['mask_px_total'] == base['mask_px_total']} ({ours['mask_px_total']} vs {base['mask_px_total']} px)")
    path = write_result("video", {"config": {"frames": args.frames, "threads": args.threads, "model_id": MODEL_ID, "objects": 2}, "runs": table, "ratio_samgraph_over_sam2": ratios})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
