"""Probe: where a 2-core CPU loses encode time, in-process and between two processes (no serving).

Part 1, one process (``--threads``): the steps of benchmarks/baselines.py's bare ``fresh`` loop one by
one (JPEG decode, ``Sam2ImageEncoder.encode``, one box decode + RLE) next to Meta's
``SAM2ImagePredictor.set_image`` on the same model, interleaved image by image so that a neighbour's
load on a shared machine hits both alike.

Part 2, two processes, as ImageEncoder and MaskDecoder replicas share a node: an encoder process encodes
``--encodes`` images while a decoder process clicks on one image's features in a loop, for each
(encoder threads, decoder threads) pair of ``--pairs``; plus each alone. Reported: encode p50 and the
decoder's clicks per second while the encoder runs. Seeded random weights (seed 0).

    python -m benchmarks.thread_probe [--threads 2] [--images 3] [--encodes 3] [--pairs 2x2,2x1,1x1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.baselines import build_sam, rgb_of, segment_rle
from benchmarks.common import REPO, SHARED_DATA, summarize, write_result
from benchmarks.loadgen import click_points, load_photos, unique_jpeg


def in_process(photos, n_images: int, threads: int) -> dict:
    """Bare-loop steps and ``set_image``, interleaved, ``n_images`` each (after one warm-up each)."""
    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from models.prompts import PromptSpec

    torch.set_num_threads(threads)
    encoder, decoder = build_sam()
    predictor = SAM2ImagePredictor(encoder.model)
    rgb0 = rgb_of(photos[0].jpeg)
    encoder.encode(rgb0)
    predictor.set_image(rgb0)
    steps: dict[str, list[float]] = {"jpeg_decode": [], "encode": [], "box_decode_rle": [], "bare_fresh_total": [], "set_image": []}
    for i in range(n_images):
        p = photos[i % len(photos)]
        t0 = time.perf_counter()
        rgb = rgb_of(unique_jpeg(p.jpeg, i))
        t1 = time.perf_counter()
        feats = encoder.encode(rgb)
        t2 = time.perf_counter()
        segment_rle(decoder, feats, PromptSpec(box_xyxy=np.asarray(p.box_xyxy, np.float32)), False)
        t3 = time.perf_counter()
        predictor.set_image(rgb)
        t4 = time.perf_counter()
        for k, v in (("jpeg_decode", t1 - t0), ("encode", t2 - t1), ("box_decode_rle", t3 - t2), ("bare_fresh_total", t3 - t0), ("set_image", t4 - t3)):
            steps[k].append(v)
    return {k: summarize(v) for k, v in steps.items()}


def role_encoder(n: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    photos = load_photos(SHARED_DATA)
    encoder, _ = build_sam()
    rgb = rgb_of(photos[0].jpeg)
    encoder.encode(rgb)
    print("READY", flush=True)
    sys.stdin.readline()  # GO
    times = []
    for _ in range(n):
        t = time.perf_counter()
        encoder.encode(rgb)
        times.append(time.perf_counter() - t)
    return summarize(times)


def role_decoder(threads: int, seconds: float) -> dict:
    """Clicks (one point, three masks, RLE) on one image until stdin says STOP or ``seconds`` pass."""
    import select

    import torch

    from benchmarks.baselines import points_prompt

    torch.set_num_threads(threads)
    photos = load_photos(SHARED_DATA)
    encoder, decoder = build_sam()
    feats = encoder.encode(rgb_of(photos[0].jpeg))
    clicks = click_points(photos[0], 16, seed=0)
    for pts in clicks[:3]:
        segment_rle(decoder, feats, *points_prompt(pts))
    print("READY", flush=True)
    sys.stdin.readline()  # GO
    times, t0, i = [], time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        segment_rle(decoder, feats, *points_prompt(clicks[i % len(clicks)]))
        times.append(time.perf_counter() - t)
        i += 1
        if select.select([sys.stdin], [], [], 0)[0]:
            break
    return {**summarize(times), "clicks_per_s": len(times) / (time.perf_counter() - t0)}


EXTRA_ENV: dict[str, str] = {}  # --omp-wait-policy


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", **EXTRA_ENV}
    p = subprocess.Popen([sys.executable, "-m", "benchmarks.thread_probe", *args], cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "READY"
    return p


def finish(p: subprocess.Popen, stop: bool = False) -> dict:
    if stop:
        p.stdin.write("STOP\n")
        p.stdin.flush()
    out, _ = p.communicate(timeout=600)
    return json.loads(out.strip().splitlines()[-1])


def pair(enc_threads: int | None, dec_threads: int | None, n_encodes: int, alone_s: float) -> dict:
    """Encoder and/or decoder processes started together (None: that one absent)."""
    enc = spawn(["--role", "encoder", "--encodes", str(n_encodes), "--threads", str(enc_threads)]) if enc_threads else None
    dec = spawn(["--role", "decoder", "--threads", str(dec_threads), "--seconds", str(alone_s if enc is None else 600)]) if dec_threads else None
    for p in (enc, dec):
        if p is not None:
            p.stdin.write("GO\n")
            p.stdin.flush()
    out = {}
    if enc is not None:
        out["encode"] = finish(enc)
    if dec is not None:
        out["click"] = finish(dec, stop=enc is not None)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=("encoder", "decoder"), default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--encodes", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--pairs", default="2x2,2x1,1x1")
    p.add_argument("--skip-in-process", action="store_true")
    p.add_argument("--skip-alone", action="store_true")
    p.add_argument("--omp-wait-policy", choices=("ACTIVE", "PASSIVE"), default=None, help="OMP_WAIT_POLICY of the two processes (unset: libgomp's default)")
    p.add_argument("--out", default="thread_probe")
    args = p.parse_args()
    if args.role == "encoder":
        print(json.dumps(role_encoder(args.encodes, args.threads)))
        return
    if args.role == "decoder":
        print(json.dumps(role_decoder(args.threads, args.seconds)))
        return

    if args.omp_wait_policy:
        EXTRA_ENV["OMP_WAIT_POLICY"] = args.omp_wait_policy
    result: dict = {"machine_note": f"{os.cpu_count()} CPU cores, shared with another engineer's test runs (noisy)", "omp_wait_policy": args.omp_wait_policy}
    if not args.skip_in_process:
        result["in_process"] = in_process(load_photos(SHARED_DATA), args.images, args.threads)
        for k, v in result["in_process"].items():
            print(f"in-process {k:<18} p50 {v['p50_ms']:8.1f} ms  (n={v['n']})", flush=True)
    alone = {} if args.skip_alone else {
             "encoder_2": pair(2, None, args.encodes, 0)["encode"], "encoder_1": pair(1, None, args.encodes, 0)["encode"],
             "decoder_2": pair(None, 2, 0, args.seconds)["click"], "decoder_1": pair(None, 1, 0, args.seconds)["click"]}
    result["alone"] = alone
    for k, v in alone.items():
        print(f"alone {k:<10} p50 {v['p50_ms']:8.1f} ms" + (f"  {v['clicks_per_s']:.2f} clicks/s" if "clicks_per_s" in v else ""), flush=True)
    result["together"] = {}
    for spec in args.pairs.split(","):
        e, d = (int(x) for x in spec.split("x"))
        r = pair(e, d, args.encodes, 0)
        result["together"][spec] = r
        print(f"together enc {e} + dec {d} threads: encode p50 {r['encode']['p50_ms']:8.1f} ms  click p50 {r['click']['p50_ms']:7.1f} ms  {r['click']['clicks_per_s']:.2f} clicks/s", flush=True)
    print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
