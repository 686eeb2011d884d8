"""Load benchmark: samgraph under concurrent clients against its baselines, all measured in one run.

Workloads (``benchmarks/loadgen.py``): ``fresh`` (a new image with one box per request),
``interactive`` (per client one upload, then 8 clicks on the cached image) and ``predict``
(/v1/predict on a new photo per request), each at concurrency 1, 4 and 16, bounded in requests and time.
``predict`` and its one-process baseline each get one untimed call first (start-up costs of the first call).

Baselines (benchmarks/baselines.py), same seeded random weights, same torch threads, measured in this run:
  bare        - samgraph's encoder + decoder in this process in a tight loop (JPEG decode, encode,
                decode, RLE), batch 1 as the CPU config; the ceiling for ``fresh`` and ``interactive``;
  naive       - Meta's SAM2ImagePredictor behind a single-worker HTTP server (set_image + predict per
                request, ``benchmarks/naive_server.py``), driven by the same load generator;
  one-process - SAM2AutomaticMaskGenerator + fade/crop + open_clip + numpy brute-force k-NN per photo,
                the same automatic-mask settings and instance cap, for ``predict``.

The bare model runs at each of ``--bare-threads`` and the best is the ceiling (per metric); the naive
server runs at ``--naive-threads``. ``--compare-args`` (dotted app-arg overrides, such as the thread
settings before a change) runs the ``interactive`` workload a second time against the config so altered,
in the same run. After the workloads, the memory of each MaskDecoder replica (peak and current resident
set) is recorded next to its cache's entries and bytes and the configured bounds.

The baselines run first, then the naive server, then ``serve run`` of the config (and of the altered
one); only one of them is on the machine at a time. Results: benchmarks/results/serving.json and
serving.png (``--out`` names them).

    python -m benchmarks.serving [--workloads fresh,interactive,predict] [--concurrency 1,4,16]
                                 [--max-seconds 120] [--config configs/serve.yaml]
                                 [--compare-args args.decoder.torch_threads=2,runtime_env=null]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.baselines import MODEL_ID, OneProcessPredict, bare_fresh_and_interactive, rgb_of
from benchmarks.common import (
    REPO,
    RESULTS,
    SHARED_DATA,
    b64,
    free_port,
    serve_app,
    stop_group,
    summarize,
    wait_ready,
    write_result,
)
from benchmarks.loadgen import (
    Photo,
    fresh_sessions,
    interactive_sessions,
    load_photos,
    predict_sessions,
    run_load,
    summarize_records,
    unique_jpeg,
)

# Random weights predict IoU near 0.5 and stability near 0: with the filters off, the grid still gives
# masks (deduplicated by NMS) for the fader, embedder and retriever to work on. 8x8 clicks keep one
# /v1/predict at ~10 s on 2 CPU cores so that the concurrency-16 level stays bounded.
PREDICT_AMG = {"points_per_side": 8, "points_per_batch": 64, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.7}
PREDICT_MAX_INSTANCES = 8
N_CLICKS = 8


def one_process_predict(photos: list[Photo], n: int, threads: int) -> dict:
    """:class:`benchmarks.baselines.OneProcessPredict` over ``n`` photos in turn (two examples stored:
    the truck and a background crop of the first photo), after one untimed warm-up call."""
    predict = OneProcessPredict(PREDICT_AMG, PREDICT_MAX_INSTANCES, threads)
    truck = rgb_of(photos[0].jpeg)
    predict.store([truck[275:850, 75:1725], truck[:600, :900]])
    predict(rgb_of(unique_jpeg(photos[0].jpeg, 1999)))  # warm-up, untimed, as the service gets one
    times, n_masks = [], []
    for i in range(n):
        rgb = rgb_of(unique_jpeg(photos[i % len(photos)].jpeg, 2000 + i))
        t = time.perf_counter()
        n_masks.append(predict(rgb))
        times.append(time.perf_counter() - t)
    return {**summarize(times), "throughput_rps": n / sum(times), "instances": n_masks}


def start_naive(threads: int):
    """benchmarks/naive_server.py on a free port; returns (process, base URL, log file) once it answers."""
    port = free_port()
    log = open(RESULTS / f".naive-{port}.log", "w")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.naive_server", "--port", str(port), "--threads", str(threads), "--seed", "0"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{url}/healthz", 300, log.name)
    return proc, url, log


def stop(proc, log) -> None:
    """Stop the naive server and remove its log."""
    stop_group(proc, 30)
    log.close()
    Path(log.name).unlink(missing_ok=True)


def request_budget(workload: str, c: int) -> int:
    """Requests for one level: enough to keep every client busy a few times over."""
    per_client = {"fresh": 2, "interactive": 2 * (N_CLICKS + 1), "predict": 2}[workload]
    return max(c * per_client, {"fresh": 4, "interactive": 18, "predict": 6}[workload])


def sweep(url: str, workload: str, factory, levels: list[int], max_seconds: float, kinds_of: dict, offset: int, n_photos: int) -> dict:
    """Each level's sessions start at photo 0 of the workload's photos (session numbers are multiples of
    ``n_photos`` apart), as the in-process baselines do, so every system sees the same images."""
    out = {}
    for i, c in enumerate(levels):
        n = request_budget(workload, c)
        first = n_photos * (offset + 1000 * i)  # unique image bytes per level, photo order from 0
        records, wall = asyncio.run(run_load(url, factory, c, n, max_seconds, first_session=first))
        level = {"all": summarize_records(records, wall)}
        for name, kinds in kinds_of.items():
            level[name] = summarize_records(records, wall, kinds)
        out[str(c)] = level
        a = level["all"]
        print(f"  {workload:<12} c={c:<3} {a['ok']:>4}/{a['requests']:<4} ok  {a['throughput_rps']:7.3f} req/s  p50 {a.get('p50_ms', float('nan')):9.1f} ms  p95 {a.get('p95_ms', float('nan')):9.1f} ms", flush=True)
        if a["requests"] and not a["ok"]:  # a benchmark of failures measures nothing: say why, loudly
            print(f"  !! every {workload} request failed at c={c}; first errors: {(a.get('errors') or [])[:2]}", file=sys.stderr, flush=True)
    return out


def altered(config: dict, overrides: str) -> dict:
    """A copy of the Serve config ``config`` with its samgraph application changed by ``overrides``:
    ``key.sub=value,...`` under the application (``args.decoder.torch_threads=2``, ``runtime_env=null``,
    ``deployments.MaskDecoder.autoscaling_config.max_replicas=1``: in a list, a key names the entry of that
    ``name``; values parsed as YAML, ``null`` removes the key).

    Raises:
        KeyError: a list holds no entry of the name a key gives.
    """
    import copy

    config = copy.deepcopy(config)
    for item in overrides.split(","):
        key, value = item.split("=", 1)
        *path, last = key.strip().split(".")
        node = config["applications"][0]
        for k in path:
            if isinstance(node, list):
                named = [entry for entry in node if entry.get("name") == k]
                if not named:
                    raise KeyError(f"no entry named {k!r} in {key}")
                node = named[0]
            else:
                node = node.setdefault(k, {})
        parsed = yaml.safe_load(value)
        if parsed is None:
            node.pop(last, None)
        else:
            node[last] = parsed
    return config


def decoder_memory(served, app_args: dict, stats: dict) -> dict:
    """Peak and current resident set of each MaskDecoder replica process, next to its cache's contents
    (``stats["cache"]``, summed over replicas) and the configured bounds, in MiB."""
    from benchmarks.procmem import MIB, memory_mib, replica_pids
    from models.sam2_image import feature_nbytes

    cache = app_args.get("cache", {})
    held = stats.get("cache", {})
    return {
        "replicas": [memory_mib(pid) for pid in replica_pids(served.pid, "MaskDecoder")],
        "cache_entries": held.get("entries"),
        "cache_mib": (held.get("bytes") or 0) / MIB,
        "max_entries": cache.get("max_entries", 64),
        "max_mib": cache.get("max_bytes", 2**31) / MIB,
        "features_mib_per_image": feature_nbytes() / MIB,
    }


def plot(result: dict, path: Path) -> None:
    """Throughput and latency against clients, per workload, with the baselines' rates as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in ("fresh", "interactive", "predict") if w in result["samgraph"]]
    fig, axes = plt.subplots(len(workloads), 2, figsize=(11, 3.4 * len(workloads)), squeeze=False)
    for row, w in zip(axes, workloads):
        for name, style in (("samgraph", "o-"), ("samgraph_compare", "^-."), ("naive", "s--")):
            levels = result.get(name, {}).get(w)
            if not levels:
                continue
            cs = [int(c) for c in levels]
            row[0].plot(cs, [levels[str(c)]["all"]["throughput_rps"] for c in cs], style, label=name)
            row[1].plot(cs, [levels[str(c)]["all"].get("p50_ms", np.nan) / 1e3 for c in cs], style, label=f"{name} p50")
            row[1].plot(cs, [levels[str(c)]["all"].get("p95_ms", np.nan) / 1e3 for c in cs], style, alpha=0.5, label=f"{name} p95")
        base = result["bare"].get(w, {}).get("throughput_rps") if w != "predict" else result.get("one_process_predict", {}).get("throughput_rps")
        if base:
            row[0].axhline(base, color="gray", ls=":", label="bare model" if w != "predict" else "one process")
        row[0].set(title=f"{w}: throughput", xlabel="concurrent clients", ylabel="requests/s", xscale="log", xticks=[1, 4, 16])
        row[1].set(title=f"{w}: latency", xlabel="concurrent clients", ylabel="seconds", xscale="log", yscale="log", xticks=[1, 4, 16])
        for ax in row:
            ax.set_xticklabels(["1", "4", "16"])
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.suptitle(f"samgraph vs baselines, {result['machine_note']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ratios(result: dict) -> dict:
    """Headline ratios and the issue's targets."""
    r: dict = {}
    s, b, n = result["samgraph"], result["bare"], result.get("naive", {})
    top = lambda levels: max(levels.values(), key=lambda x: x["all"]["throughput_rps"])["all"]["throughput_rps"]  # noqa: E731
    if "fresh" in s:
        r["fresh_serving_efficiency"] = top(s["fresh"]) / b["fresh"]["throughput_rps"]
        if "fresh" in n:
            r["fresh_over_naive"] = {c: s["fresh"][c]["all"]["throughput_rps"] / n["fresh"][c]["all"]["throughput_rps"] for c in s["fresh"] if c in n["fresh"]}
    if "interactive" in s:
        r["interactive_serving_efficiency"] = top(s["interactive"]) / b["interactive"]["throughput_rps"]
        if "interactive" in n:
            r["interactive_over_naive"] = {c: s["interactive"][c]["all"]["throughput_rps"] / n["interactive"][c]["all"]["throughput_rps"] for c in s["interactive"] if c in n["interactive"]}
            old = result.get("samgraph_compare", {}).get("interactive", {})
            if old:
                r["compare_interactive_over_naive"] = {c: old[c]["all"]["throughput_rps"] / n["interactive"][c]["all"]["throughput_rps"] for c in old if c in n["interactive"]}
        if "1" in s["interactive"]:
            click, dec = s["interactive"]["1"]["click"]["p50_ms"], b["click_decoder"]["p50_ms"]
            r.update(click_p50_ms=click, click_p50_over_bare_decoder=click / dec, click_target_ms=1.3 * dec + 5.0)
    if "predict" in s:
        one = result["one_process_predict"]
        r["predict_throughput_over_one_process"] = {c: s["predict"][c]["all"]["throughput_rps"] / one["throughput_rps"] for c in s["predict"]}
        r["predict_best_throughput_over_one_process"] = top(s["predict"]) / one["throughput_rps"]
        if "p50_ms" in s["predict"].get("1", {}).get("all", {}):  # absent when no request of the level succeeded
            r["predict_c1_p50_speedup_over_one_process"] = one["p50_ms"] / s["predict"]["1"]["all"]["p50_ms"]
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    p.add_argument("--workloads", default="fresh,interactive,predict")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--max-seconds", type=float, default=120.0, help="per level: no request starts after this")
    p.add_argument("--bare-images", type=int, default=6)
    p.add_argument("--bare-sessions", type=int, default=2)
    p.add_argument("--one-process-images", type=int, default=3)
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--bare-threads", default=None, help="torch threads of the bare model, comma-separated; the best is the ceiling (default: the encoder's)")
    p.add_argument("--naive-threads", type=int, default=None, help="torch threads of the naive server (default: the encoder's)")
    p.add_argument("--compare-args", default=None, help="also run interactive against the config with these app args (key.sub=value,...)")
    p.add_argument("--out", default="serving")
    p.add_argument("--baselines-from", default=None, help="reuse bare/naive/one-process results of benchmarks/results/NAME.json")
    args = p.parse_args()
    workloads = args.workloads.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    photos = load_photos(SHARED_DATA)
    # /v1/predict and its baseline cycle through the same few photos (the truck is 1800x1200, COCO's
    # are ~640x480, and full-resolution mask work scales with the pixels), so their mixes match.
    predict_photos = photos[: args.one_process_images]
    config = yaml.safe_load(open(args.config))
    app = config["applications"][0]["args"]
    threads = app["encoder"].get("torch_threads") or app.get("threads_per_node") or 1
    bare_threads = [int(t) for t in args.bare_threads.split(",")] if args.bare_threads else [threads]
    naive_threads = args.naive_threads or threads
    t_run = time.monotonic()

    result: dict = {
        "config": str(Path(args.config).resolve().relative_to(REPO)),
        "model_id": MODEL_ID,
        "weights": "seeded random (seed 0): real compute, meaningless masks",
        "threads": threads,
        "bare_threads": bare_threads,
        "naive_threads": naive_threads,
        "app_thread_args": {k: app.get(k) for k in ("threads_per_node", "encoder", "decoder")},
        "predict_settings": {"amg": PREDICT_AMG, "max_instances": PREDICT_MAX_INSTANCES, "top_k": 5},
        "bounds": {"max_seconds_per_level": args.max_seconds, "requests_per_level": {w: {c: request_budget(w, c) for c in levels} for w in workloads}},
        "machine_note": f"{os.cpu_count()} CPU cores, no GPU, SAM 2.1 tiny, bare at {bare_threads} / naive at {naive_threads} torch threads",
        "compare_args": args.compare_args,
    }
    kinds = {"fresh": {}, "interactive": {"upload": ("upload",), "click": ("click",)}, "predict": {}}
    if args.baselines_from:
        # Re-measure samgraph only, against the baselines of an earlier run (recorded in the result).
        earlier = json.loads((RESULTS / f"{args.baselines_from}.json").read_text())
        result["baselines_from"] = {"file": f"benchmarks/results/{args.baselines_from}.json", "measured_at": earlier["measured_at"]}
        for key in ("bare", "one_process_predict", "naive"):
            if key in earlier:
                result[key] = earlier[key]
    else:
        by_threads = {}
        for t in bare_threads:
            print(f"bare model, {t} torch threads ...", flush=True)
            by_threads[str(t)] = bare_fresh_and_interactive(photos, args.bare_images, args.bare_sessions, t, N_CLICKS)
        result["bare_by_threads"] = by_threads
        result["bare"] = best_bare(by_threads)
        if "predict" in workloads:
            print("one-process predict ...", flush=True)
            result["one_process_predict"] = one_process_predict(predict_photos, args.one_process_images, threads)

    if not args.skip_naive and not args.baselines_from and {"fresh", "interactive"} & set(workloads):
        print("naive server ...", flush=True)
        proc, url, log = start_naive(naive_threads)
        try:
            result["naive"] = {}
            if "fresh" in workloads:
                result["naive"]["fresh"] = sweep(url, "fresh", fresh_sessions(photos), levels, args.max_seconds, kinds["fresh"], 10, len(photos))
            if "interactive" in workloads:
                result["naive"]["interactive"] = sweep(url, "interactive", interactive_sessions(photos, N_CLICKS, use_image_id=False), levels, args.max_seconds, kinds["interactive"], 20, len(photos))
        finally:
            stop(proc, log)

    print("samgraph ...", flush=True)
    env = {"SAMGRAPH_WEIGHTS": "random", "SAMGRAPH_SEED": "0", "SAMGRAPH_DATA_DIR": str(RESULTS / ".data-serving")}
    result["samgraph"] = {}
    collection = f"bench{int(time.time())}"
    with serve_app(config, env) as served:
        from serve_app.client import SamgraphClient

        url = served.url
        result["decoder_memory_at_start"] = decoder_memory(served, app, {})
        snapshots = result["samgraph_stats_after"] = {}

        def snapshot(name: str) -> None:
            with SamgraphClient(url, timeout_s=60) as c:
                snapshots[name] = c.stats()

        snapshot("start")
        with SamgraphClient(url, timeout_s=600) as c:
            if "predict" in workloads:
                # two labelled examples in a collection of this run (the store persists between runs)
                for label, box in (("truck", [75, 275, 1725, 850]), ("background", [0, 0, 900, 600])):
                    c.add_example({"image": {"base64": b64(photos[0].jpeg)}, "box_xyxy": box, "label": label, "collection": collection})
        if "fresh" in workloads:
            result["samgraph"]["fresh"] = sweep(url, "fresh", fresh_sessions(photos), levels, args.max_seconds, kinds["fresh"], 30, len(photos))
            snapshot("fresh")
        if "interactive" in workloads:
            result["samgraph"]["interactive"] = sweep(url, "interactive", interactive_sessions(photos, N_CLICKS), levels, args.max_seconds, kinds["interactive"], 40, len(photos))
        if "predict" in workloads:
            # points_per_batch is the service's (config only, 64 in configs/serve.yaml): not a request field
            amg = {k: v for k, v in PREDICT_AMG.items() if k != "points_per_batch"}
            body = {"collection": collection, "amg": amg, "max_instances": PREDICT_MAX_INSTANCES, "top_k": 5}
            with SamgraphClient(url, timeout_s=600) as c:  # warm-up, untimed, as the one-process baseline's
                c.predict({**body, "image": {"base64": b64(unique_jpeg(predict_photos[0].jpeg, 1999))}})
            result["samgraph"]["predict"] = sweep(url, "predict", predict_sessions(predict_photos, body), levels, args.max_seconds, kinds["predict"], 50, len(predict_photos))
        with SamgraphClient(url, timeout_s=60) as c:
            result["samgraph_stats"] = c.stats()
        result["decoder_memory"] = decoder_memory(served, app, result["samgraph_stats"])
    if args.compare_args and "interactive" in workloads:
        print(f"samgraph with {args.compare_args} ...", flush=True)
        with serve_app(altered(config, args.compare_args), env) as served:
            result["samgraph_compare"] = {"interactive": sweep(served.url, "interactive", interactive_sessions(photos, N_CLICKS), levels, args.max_seconds, kinds["interactive"], 60, len(photos))}

    result["ratios"] = ratios(result)
    snaps = result.get("samgraph_stats_after", {})
    if "fresh" in snaps:
        e0, e1 = snaps["start"]["encoder"], snaps["fresh"]["encoder"]
        # seconds the ImageEncoder replica spent in encode_batch per image during the fresh sweep, against
        # the bare in-process fresh loop (encode + one box decode + RLE) per image
        result["ratios"]["fresh_replica_encode_ms_per_image"] = 1e3 * (e1["busy_s"] - e0["busy_s"]) / max(1, e1["images"] - e0["images"])
    result["run_minutes"] = (time.monotonic() - t_run) / 60
    path = write_result(args.out, result)
    plot(result, RESULTS / f"{args.out}.png")
    print_table(result)
    print(f"wrote {path} and {RESULTS / (args.out + '.png')}")


def best_bare(by_threads: dict) -> dict:
    """The bare ceiling: per metric the best over the thread counts measured (fastest fresh and
    interactive rate, lowest click p50), each with the thread count it came from."""
    runs = list(by_threads.items())
    fresh = max(runs, key=lambda kv: kv[1]["fresh"]["throughput_rps"])
    inter = max(runs, key=lambda kv: kv[1]["interactive"]["throughput_rps"])
    click = min(runs, key=lambda kv: kv[1]["click_decoder"]["p50_ms"])
    return {
        "fresh": {**fresh[1]["fresh"], "threads": int(fresh[0])},
        "interactive": {**inter[1]["interactive"], "threads": int(inter[0])},
        "click_decoder": {**click[1]["click_decoder"], "threads": int(click[0])},
        "click_decoder_plus_rle": click[1]["click_decoder_plus_rle"],
    }


def print_table(result: dict) -> None:
    """Every system x workload x level, the baselines and the ratios."""
    print(f"\n{'system':<10} {'workload':<12} {'c':>3} {'ok/sent':>9} {'req/s':>8} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}")
    for system in ("naive", "samgraph", "samgraph_compare"):
        for w, levels in result.get(system, {}).items():
            for c, level in levels.items():
                a = level["all"]
                print(f"{system:<10} {w:<12} {c:>3} {a['ok']:>4}/{a['requests']:<4} {a['throughput_rps']:>8.3f} {a.get('p50_ms', float('nan')):>9.1f} {a.get('p95_ms', float('nan')):>9.1f} {a.get('p99_ms', float('nan')):>9.1f}")
    b = result["bare"]
    print(f"bare       fresh {b['fresh']['throughput_rps']:.3f} img/s; interactive {b['interactive']['throughput_rps']:.3f} req/s; decoder click p50 {b['click_decoder']['p50_ms']:.1f} ms")
    if "decoder_memory" in result:
        m, m0 = result["decoder_memory"], result["decoder_memory_at_start"]
        print(f"MaskDecoder replicas at start {[round(r['rss_mib']) for r in m0['replicas']]} MiB RSS; after the workloads peak {[round(r['peak_mib']) for r in m['replicas']]} MiB, "
              f"rss {[round(r['rss_mib']) for r in m['replicas']]} MiB, cache {m['cache_entries']}/{m['max_entries']} entries {m['cache_mib']:.0f}/{m['max_mib']:.0f} MiB")
    if "one_process_predict" in result:
        o = result["one_process_predict"]
        print(f"one-process predict {o['throughput_rps']:.4f} img/s (p50 {o['p50_ms']:.0f} ms), instances {o['instances']}")
    for k, v in result["ratios"].items():
        print(f"{k}: {v if not isinstance(v, float) else round(v, 3)}")


if __name__ == "__main__":
    main()
