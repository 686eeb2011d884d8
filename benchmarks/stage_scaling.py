"""Per-stage scaling: each Serve stage alone, over replicas x batch size, against the bare model (same run).

For one stage at a time the program deploys that stage alone as its own Serve app on a local Ray
(``--num-cpus``, default 2), with the options of ``configs/serve.yaml`` (num_replicas, max_ongoing_requests,
num_cpus, user_config max_batch_size / batch_wait_timeout_s) and the app's bind arguments (threads,
fader, AMG), overridden by ``--set Deployment.key=value`` and by the sweep point. Each sweep point is a
fresh deployment (new replicas), driven through a DeploymentHandle by a closed loop of concurrent calls
with the inputs the graph sends (arrays go by ObjectRef, as the ingress sends them):

  encoder    ImageEncoder.encode(truck.jpg 1800x1200)                           unit: images
  decoder    MaskDecoder.decode(features, one box or one click, RLE)            unit: decode calls
  amg        MaskDecoder.generate(features, the config's AMG grid)              unit: images (no @serve.batch)
  fader      Fader.fade_masks(truck.jpg, K RLE masks)                           unit: crops (a batch holds jobs of K)
  embedder   Embedder.embed_crops(K 224x224 crops)                              unit: crops
  retriever  Retriever.knn(K queries, top_k 5) over 200 random examples         unit: k-NN jobs (one per /v1/predict)

After one warm-up call per replica, the loop submits calls for ``--seconds`` (x ``--slow-factor`` for
encoder and AMG; at least ``--min-calls``), then lets the calls in flight finish. Throughput is all
calls over the time from the first submission to the last completion (fill and drain included: exact
for a replica working at a steady pace, where a window opened at some completion is biased by the
bursts in which batches complete); latency p50/p95 is per call and includes the wait in the replica's
queue (closed loop: latency ~ in-flight / throughput). In flight: ``--concurrency`` calls, or by default
enough to fill every replica's batch twice (AMG, not batched: one per replica).

Baseline ("bare"), measured in this process before the stage's deployments, same threads, same batch:
the stage's batched model function on the same inputs (Sam2ImageEncoder.encode_batch,
Sam2MaskDecoder.predict_batch + RLE, models.amg.generate_masks, RLE decode + fade_and_crop_batch,
ClipEmbedder.embed_images, run_search_jobs on an embedded Qdrant). Ratio = stage / bare.

Peak memory per replica: VmHWM (peak resident set, MiB) of each replica process after the run, and
its resident set then (idle after load), by benchmarks/procmem.py (the replica processes are found by
their process title, which holds the app's unique name). Resident sets count the object-store pages a
replica has read (features are read zero-copy), so they are upper bounds on the replica's own memory.

Capacity: each stage's best throughput is turned into requests/s of /v1/segment on a fresh image
(1 encode + 1 decode) and /v1/predict on a fresh image (1 encode + 1 AMG + K fades + K embeds +
1 k-NN job); the stage with the lowest capacity is the bottleneck of that workload. Each stage is
measured alone with the whole machine; in the full graph the stages share the cores.

Weights: SAM 2.1 tiny and CLIP ViT-B-32 with seeded random weights (seed 0): the real compute. Random
weights give low predicted IoU and stability, so the AMG filters are set to pred_iou_thresh 0.5 and
stability 0 (as benchmarks/predict_latency.py does; ``--amg-as-config`` keeps the config's), else no
mask survives and AMG skips its upsampling and RLE work.

The Retriever stays at one replica: embedded Qdrant (a data folder) allows one client per folder; more
replicas need a Qdrant server (SAMGRAPH_QDRANT_URL), which this program does not start.

    python -m benchmarks.stage_scaling [--stages encoder,embedder] [--seconds 8] [--min-calls 6] [--replot]
        [--set Embedder.num_replicas=2] [--batch Embedder=1,8,32] [--replicas Embedder=1,2] [--k 8]

Writes benchmarks/results/stage_scaling.json and benchmarks/results/stage_scaling.png.

Modules: stage_setup (the stages, their settings, the sweep), stage_inputs (what each stage is fed and
how it is deployed), stage_report (table, capacities, plot); the bare baselines are
benchmarks.baselines.StageBaselines and the load loop is benchmarks.closed_loop.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.baselines import StageBaselines
from benchmarks.closed_loop import Budget, closed_loop
from benchmarks.common import REPO, RESULTS, summarize, write_result
from benchmarks.procmem import replica_memory
from benchmarks.stage_inputs import COLLECTION, Inputs, bind_stage, build_inputs, caller
from benchmarks.stage_report import capacities, plot, print_table, report
from benchmarks.stage_setup import (
    STAGES,
    UNITS,
    Stage,
    auto_concurrency,
    deployment_settings,
    load_config,
    parse_grid,
    parse_sets,
    setting_label,
    stage_key,
    sweep_points,
)

MAX_ERRORS = 20  # a sweep point stops submitting after this many failed calls


async def measure_calls(call: Callable[[int], object], concurrency: int, seconds: float, min_calls: int, max_seconds: float, drain_s: float = 600) -> dict:
    """Keep ``concurrency`` calls in flight (:func:`benchmarks.closed_loop.closed_loop`); stop submitting
    once ``seconds`` have passed and ``min_calls`` were submitted (or at ``max_seconds``, or after
    ``MAX_ERRORS`` failures), then wait for the calls in flight (up to ``drain_s``).

    Throughput counts every call, from the first submission to the last completion: pipeline fill and
    drain are included, which makes it exact for a replica that works at a steady pace (sequentially,
    in batches or in parallel threads), where a window that starts at some completion is biased when
    completions come in bursts.

    Args:
        call: ``call(i)`` -> an awaitable (a DeploymentResponse) of the i-th call.

    Returns:
        ``{"calls", "wall_s", "calls_per_s", "latency": summarize(...), "errors", "in_flight_cancelled"}``.

    Raises:
        RuntimeError: no call completed.
    """
    latencies: list[float] = []
    errors: list[str] = []
    t_begin = time.perf_counter()
    last_done = t_begin

    async def step(client: int, turn: int) -> None:
        nonlocal last_done
        t = time.perf_counter()
        try:
            await call(client + turn)
        except Exception as e:  # noqa: BLE001 - recorded and reported; the loop goes on
            errors.append(f"{type(e).__name__}: {e}"[:300])
            return
        last_done = time.perf_counter()
        latencies.append(last_done - t)

    budget = Budget(seconds=seconds, min_steps=min_calls, max_seconds=max_seconds, stop=lambda: len(errors) > MAX_ERRORS)
    state = await closed_loop(step, concurrency, budget, timeout_s=max_seconds + drain_s)
    if not latencies:
        raise RuntimeError(f"no call completed; first error: {errors[0] if errors else 'none (timed out)'}")
    wall = last_done - t_begin
    return {
        "calls": len(latencies),
        "wall_s": wall,
        "calls_per_s": len(latencies) / wall,
        "latency": summarize(latencies),
        "errors": errors[:5],
        "in_flight_cancelled": state.cancelled,
    }


async def measure_setting(stage: Stage, handle, inp: Inputs, settings: dict, args) -> dict:
    """Warm-up calls (one per replica), then :func:`measure_calls` with the sweep's bounds."""
    call = caller(stage, handle, inp)
    replicas = int(settings["num_replicas"])
    if stage.warmup:  # each replica's first call(s), not measured
        await asyncio.gather(*(call(i) for i in range(replicas)))
    concurrency = args.concurrency or auto_concurrency(stage, settings)
    seconds = args.seconds * (args.slow_factor if stage.key in ("encoder", "amg") else 1)
    min_calls = stage.min_calls if stage.min_calls is not None else args.min_calls
    loop = await measure_calls(call, concurrency, seconds, min_calls, max_seconds=max(4 * seconds, 60))
    return {"concurrency": concurrency, **loop, "items_per_s": loop["calls_per_s"] * stage.items_per_call}


async def run_stage(stage: Stage, points: list[dict], base: dict, bare: StageBaselines, inp: Inputs, cfg, args, tmp: Path) -> list[dict]:
    """Each sweep point of ``stage``: its bare rate, then a fresh one-stage Serve app measured and deleted.

    Returns:
        One row per point (``error`` in place of the measurements where the point failed).
    """
    from ray import serve

    rows = []
    for idx, settings in enumerate(points):
        label = setting_label(stage, settings)
        is_default = settings["max_batch_size"] == base["max_batch_size"] and settings["num_replicas"] == base["num_replicas"]
        row = {"stage": stage.key, "deployment": stage.deployment, "unit": stage.unit, "setting": label, "settings": settings, "is_config_default": is_default}
        print(f"[{time.strftime('%H:%M:%S')}] {stage.key} {label}: bare ...", flush=True)
        row["bare"] = bare.rate(stage, settings["max_batch_size"] or 1, settings)
        app_name = f"stagescale-{os.getpid()}-{stage.key}-{idx}"
        try:
            t0 = time.perf_counter()
            qdrant_dir = tmp / f"qdrant-{idx}"
            handle = serve.run(bind_stage(stage, cfg, settings, {"kind": "random", "checkpoint": None, "seed": 0}, qdrant_dir), name=app_name, route_prefix=None)
            if stage.key == "retriever":
                await handle.add.remote(COLLECTION, inp.examples, inp.labels)
            row["deploy_s"] = time.perf_counter() - t0
            print(f"[{time.strftime('%H:%M:%S')}] {stage.key} {label}: deployed in {row['deploy_s']:.0f} s, measuring ...", flush=True)
            row.update(await measure_setting(stage, handle, inp, settings, args))
            row["ratio_vs_bare"] = row["items_per_s"] / row["bare"]["items_per_s"]
            row["replica_memory"] = replica_memory(app_name, stage.deployment)
        except Exception as e:  # noqa: BLE001 - one failed point is reported, the sweep goes on
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        finally:
            try:
                serve.delete(app_name)
            except Exception as e:  # noqa: BLE001
                print(f"  could not delete {app_name}: {e}", flush=True)
        rows.append(row)
        print_table([row])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {', '.join(STAGES)}")
    ap.add_argument("--set", action="append", default=[], metavar="Deployment.key=value", help="override a deployment setting for every sweep point")
    ap.add_argument("--batch", action="append", default=[], metavar="Stage=b1,b2", help="max_batch_size sweep of a stage")
    ap.add_argument("--replicas", action="append", default=[], metavar="Stage=r1,r2", help="num_replicas sweep of a stage")
    ap.add_argument("--k", type=int, default=8, help="masks per image in /v1/predict: crops per fader/embedder call")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds of submitting calls per setting (then the calls in flight finish)")
    ap.add_argument("--slow-factor", type=float, default=2.5, help="--seconds times this for encoder and amg")
    ap.add_argument("--min-calls", type=int, default=6, help="at least this many calls per setting (AMG: 1)")
    ap.add_argument("--bare-seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=0, help="calls in flight (0: fill every replica's batch twice)")
    ap.add_argument("--num-cpus", type=float, default=2, help="CPUs of the local Ray")
    ap.add_argument("--amg-as-config", action="store_true", help="keep the config's AMG filters (with random weights nothing survives them)")
    ap.add_argument("--name", default="stage_scaling")
    ap.add_argument("--replot", action="store_true", help="only print the table and redraw the plot of results/<name>.json")
    args = ap.parse_args()
    if args.replot:
        payload = json.loads((RESULTS / f"{args.name}.json").read_text())
        report(payload)
        plot(payload["rows"], UNITS, RESULTS / f"{args.name}.png")
        return

    keys = [k.strip() for k in args.stages.split(",") if k.strip()]
    keys = [stage_key(k) or k for k in keys]
    unknown = [k for k in keys if k not in STAGES]
    if unknown:
        sys.exit(f"unknown stages {unknown}; known: {', '.join(STAGES)}")
    sets = parse_sets(args.set)
    batches, replicas = parse_grid(args.batch, "batch"), parse_grid(args.replicas, "replicas")
    app_args, entries = load_config(Path(args.config))
    for dep in sets:
        if dep not in entries:
            sys.exit(f"--set {dep}: no such deployment in {args.config}; known: {', '.join(entries)}")

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="samgraph-stages-") as tmp_name:
        tmp = Path(tmp_name)
        bare = StageBaselines(app_args, args.k, args.bare_seconds, 2, tmp)
        print("building inputs (bare encoder on truck.jpg) ...", flush=True)
        inp = bare.inputs = build_inputs(bare.cfg, bare.sam()[0], bare.clip().dim, args.k, args.amg_as_config)
        STAGES["fader"].items_per_call = STAGES["embedder"].items_per_call = args.k

        import ray
        from ray import serve

        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        logging.getLogger("ray.serve").setLevel(logging.ERROR)  # keep the table readable (queue-length probes)
        rows: list[dict] = []
        try:
            serve.start(proxy_location="Disabled")
            inp.refs = {"image": ray.put(inp.image), "features": ray.put(inp.features), "faded": ray.put({"crops": inp.crops, "timing_ms": {}})}
            for key in keys:
                stage = STAGES[key]
                base = deployment_settings(entries[stage.deployment], sets.get(stage.deployment, {}))
                if stage.key == "amg":
                    base = {**base, "max_batch_size": None}  # generate is not batched
                points = sweep_points(stage, base, batches.get(key), replicas.get(key))
                rows += asyncio.run(run_stage(stage, points, base, bare, inp, bare.cfg, args, tmp))
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
                bare.close()
    wall = time.perf_counter() - t_start

    caps = capacities(rows, args.k)
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / f"{args.name}.png"
    plot(rows, UNITS, png)
    payload = {
        "config": str(Path(args.config).resolve().relative_to(REPO)) if Path(args.config).resolve().is_relative_to(REPO) else args.config,
        "overrides": args.set,
        "weights": "random (seed 0)",
        "k_masks_per_image": args.k,
        "amg": dataclasses.asdict(inp.amg),
        "seconds": args.seconds,
        "slow_factor": args.slow_factor,
        "min_calls": args.min_calls,
        "num_cpus": args.num_cpus,
        "wall_s": wall,
        "rows": rows,
        "capacity": caps,
    }
    path = write_result(args.name, payload)
    print()
    report(payload)
    print(f"wrote {path} and {png} in {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
