"""`samgraph batch` throughput and memory against the bare batched model, measured in the same run.

Baseline ("bare"): samgraph's batched SAM 2 encoder and decoder (models/) in this process, batch 1 (the
best batch on CPU), the same torch threads as the batch stages, a centre click per image and its RLE:
the work `samgraph batch --prompts center-points` does, without Ray Data, file reading or writing. It
runs on half of --baseline-n frames before the pipeline and on the other half after it, so a change in
the machine's load shows (both rates are written) and averages out.

Pipeline: `samgraph batch` in a fresh process with its own local Ray, SAMGRAPH_WEIGHTS=random (seeded:
the real SAM 2.1 compute), over the first --n frames of the bedroom clip (960x540 JPEGs), as a folder.
Memory: the resident set of the batch process and every process it starts (Ray's raylet, workers and
object store), sampled every 0.5 s (psutil, benchmarks/procmem.py); the peak of the sum, which counts
shared object-store pages once per process that maps them, so it is an upper bound.

    python benchmarks/batch_throughput.py [--n 200] [--baseline-n 16] [--set encode.batch_size=2 ...]

Writes benchmarks/results/batch_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.baselines import bare_center_click, load_rgb
from benchmarks.common import REPO, SHARED_DATA, write_result
from benchmarks.procmem import MIB, tree_rss_bytes


def bare(frames: list[Path], threads: int) -> dict:
    """:func:`benchmarks.baselines.bare_center_click` on the decoded ``frames`` (JPEG files)."""
    return bare_center_click([load_rgb(p) for p in frames], threads)


def pipeline(frames: list[Path], sets: list[str]) -> dict:
    """`samgraph batch` over ``frames`` in a fresh process, its process tree's resident set sampled every 0.5 s."""
    with tempfile.TemporaryDirectory(prefix="samgraph-bench-") as tmp:
        src = Path(tmp) / "frames"
        src.mkdir()
        for p in frames:
            os.symlink(p, src / p.name)
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local", "SAMGRAPH_WEIGHTS": "random"}
        cmd = [sys.executable, "-m", "serve_app.cli.main", "batch", "--input", str(src), "--output", f"{tmp}/out", "--quiet", *[f"--set={s}" for s in sets]]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
                done.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, err = proc.communicate(timeout=3 * 3600)
        done.set()
        sampler.join()
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"samgraph batch failed: {err[-2000:]}")
        summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
    return {
        "images": summary["images_ok"],
        "failed": summary["images_failed"],
        "pipeline_wall_s": summary["wall_s"],
        "images_per_s": summary["images_per_s"],
        "process_wall_s": total,
        "stage_ms_per_image": summary["stage_ms_per_image"],
        "peak_tree_rss_mb": peak[0] / MIB,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", default=str(SHARED_DATA / "video" / "bedroom" / "frames"))
    ap.add_argument("--n", type=int, default=200, help="frames for samgraph batch")
    ap.add_argument("--baseline-n", type=int, default=16, help="frames for the bare model, half before and half after")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the bare model (the encode stage's)")
    ap.add_argument("--set", action="append", default=[], help="override a batch setting (samgraph batch --set)")
    ap.add_argument("--name", default="batch_throughput")
    args = ap.parse_args()
    frames = sorted(Path(args.frames).glob("*.jpg"))
    if not frames:
        sys.exit(f"no frames in {args.frames}")
    half = max(1, args.baseline_n // 2)
    print(f"bare model on {half} frames ...", flush=True)
    before = bare(frames[:half], args.threads)
    print(f"samgraph batch on {min(args.n, len(frames))} frames ...", flush=True)
    ours = pipeline(frames[: args.n], args.set)
    print(f"bare model on {half} frames again ...", flush=True)
    after = bare(frames[half : 2 * half] or frames[:half], args.threads)
    # before and after the pipeline, so that a change in the machine's load shows and averages out
    n = before["images"] + after["images"]
    wall = before["wall_s"] + after["wall_s"]
    base = {"images": n, "wall_s": wall, "images_per_s": n / wall, "before": before, "after": after}
    ratio = ours["images_per_s"] / base["images_per_s"]
    print(f"\n{'':<28}{'images':>8}{'images/s':>10}{'ratio':>8}")
    print(f"{'bare model (1 process)':<28}{base['images']:>8}{base['images_per_s']:>10.3f}{1.0:>8.2f}"
          f"   (before {before['images_per_s']:.3f}, after {after['images_per_s']:.3f})")
    print(f"{'samgraph batch (Ray Data)':<28}{ours['images']:>8}{ours['images_per_s']:>10.3f}{ratio:>8.2f}")
    print(f"process wall incl. Ray start: {ours['process_wall_s']:.1f} s; peak RSS of the process tree: {ours['peak_tree_rss_mb']:.0f} MB")
    print("stage ms/image:", ", ".join(f"{k} {v:.0f}" for k, v in ours["stage_ms_per_image"].items()))
    path = write_result(args.name, {"frames": args.frames, "settings": args.set, "bare": base, "samgraph_batch": ours, "ratio_batch_over_bare": ratio})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
