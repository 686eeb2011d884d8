"""Per-frame cost of an interactive video session against the one-shot path, on the bedroom clip.

Both run ``models.sam2_video_session.VideoSession`` (what ``VideoSegmenter`` runs) on the same SAM 2.1
tiny seeded random weights (the test checkpoint's positive object-score bias, so every frame has masks
and the full memory path runs), 2 torch threads, frames decoded in memory:

  one-shot - ``/v1/segment/video``'s path: a private session with pruning (old non-conditioning outputs
             dropped as the propagation goes), a box on frame 0, forward to the end;
  session  - ``/v1/video/sessions``: the full state kept for later corrections, the same box and
             forward pass (the baseline's work exactly), then a correction click on the middle frame and
             a forward pass from there (what a correction costs).

The two alternate, ``--runs`` times each, in one process. Reports per-frame propagate p50/p95 and mean
of each, the session/one-shot ratio, the state bytes at the end, and the correction's per-frame cost;
writes ``benchmarks/results/video_session_cost.json``.

At SAM 2.1's 1024 px a frame takes about 20 s on 2 CPU cores; ``--image-size 256`` (sam2's override, the
same weights) makes a 40-frame run, past the 17-frame memory window, take minutes.

    python -m benchmarks.video_session_cost [--frames 30] [--runs 2] [--threads 2] [--image-size 1024]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import SHARED_DATA, summarize, write_result
from benchmarks.video_memory import BOX, POINT, _state_dict


def _frames(n: int) -> np.ndarray:
    from PIL import Image

    paths = [SHARED_DATA / "video" / "bedroom" / "frames" / f"{i:05d}.jpg" for i in range(n)]
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def _timed(steps) -> list[float]:
    out, prev = [], time.perf_counter()
    for _ in steps:
        now = time.perf_counter()
        out.append(now - prev)
        prev = now
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=1024, help="the model's input side (sam2's image_size override; 1024 is SAM 2.1's)")
    args = ap.parse_args(argv)
    import torch

    from models.sam2_video import build_sam2_video_model
    from models.sam2_video_session import VideoSession
    from models.sam2_video_types import FramePrompt

    torch.set_num_threads(args.threads)
    predictor = build_sam2_video_model("sam2.1_hiera_tiny", _state_dict(1234), image_size=args.image_size)
    frames = _frames(args.frames)
    box = FramePrompt(0, box_xyxy=np.array(BOX, np.float32))
    mid = args.frames // 2
    click = FramePrompt(mid, point_coords=np.array([POINT], np.float32), point_labels=np.array([1], np.int32))
    one_shot, session, correction, state_mb = [], [], [], {}  # per-frame seconds; MiB of state
    for _ in range(args.runs):
        for kind in ("one-shot", "session"):
            s = VideoSession(predictor, frames, prune=kind == "one-shot")
            s.add_prompt(1, box)
            per_frame = _timed(s.propagate(direction="forward"))
            (one_shot if kind == "one-shot" else session).extend(per_frame)
            if kind == "session":
                t0 = time.perf_counter()
                s.add_prompt(1, click, clear_old_points=False)
                correction.append(time.perf_counter() - t0)
                session_after = _timed(s.propagate(start_frame=mid, direction="forward"))
                state_mb["session_after_correction"] = s.nbytes() / 2**20
                state_mb.setdefault("correction_pass_frames", len(session_after))
                state_mb["correction_pass_per_frame_s"] = summarize(session_after)
            state_mb[kind] = s.nbytes() / 2**20
    a, b = summarize(one_shot), summarize(session)
    payload = {
        "frames": args.frames,
        "runs": args.runs,
        "threads": args.threads,
        "image_size": args.image_size,
        "one_shot_per_frame_s": a,
        "session_per_frame_s": b,
        "session_vs_one_shot_p50": b["p50_ms"] / a["p50_ms"],
        "correction_click_s": summarize(correction),
        "state_mib": state_mb,
    }
    print(f"{args.frames} bedroom frames at {args.image_size} px, {args.runs} runs each, {args.threads} threads")
    print(f"{'path':<10} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'state MiB':>10}")
    for name, t in (("one-shot", a), ("session", b)):
        print(f"{name:<10} {t['p50_ms']:>8.0f} {t['p95_ms']:>8.0f} {t['mean_ms']:>8.0f} {state_mb[name]:>10.0f}")
    print(f"session / one-shot per-frame p50: {payload['session_vs_one_shot_p50']:.3f}")
    print(f"correction click on frame {mid}: p50 {payload['correction_click_s']['p50_ms']:.0f} ms; then "
          f"{state_mb['correction_pass_frames']} frames at p50 {state_mb['correction_pass_per_frame_s']['p50_ms']:.0f} ms")
    write_result("video_session_cost", payload)
    return payload


if __name__ == "__main__":
    main()
