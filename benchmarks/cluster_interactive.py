"""The interactive workload on the local 3-node cluster against one node, measured in one run.

Both runs deploy configs/serve.yaml with 2 ``Ingress`` and 2 ``MaskDecoder`` replicas (fixed, not
autoscaled) and seeded random weights; only the layout differs:
  single node - `serve run` on its own local Ray cluster (every replica in one raylet);
  3 nodes     - `serve run` against a ``ray.cluster_utils.Cluster`` of 3 raylets on this machine, laid out
                by :mod:`benchmarks.local_cluster` (decoders on workers A and B, ingresses on the head and
                worker A, the other stages on the head).
On one machine's 2 cores both runs share the same CPUs, so they should be about equal: the point is that
spreading the graph over nodes costs nothing (no extra feature transfers, no lost cache hits).

Per run: the interactive workload of benchmarks/serving.py (each client uploads one photo with a
click, then 8 clicks by ``image_id``) at each concurrency level; hit rate from the decoder replicas'
image caches (``/v1/stats``), click p50/p95 and throughput. Results: benchmarks/results/cluster_interactive.json.

    python -m benchmarks.cluster_interactive [--concurrency 1,4] [--max-seconds 90]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import time

import httpx
import yaml

from benchmarks.common import REPO, RESULTS, SHARED_DATA, serve_app, write_result
from benchmarks.loadgen import interactive_sessions, load_photos, run_load, summarize_records
from benchmarks.local_cluster import place, three_nodes, two_of_each

N_CLICKS = 8


def _cache(url: str) -> dict:
    return httpx.get(f"{url}/v1/stats", timeout=120).json()["cache"]


def measure(url: str, photos, levels: list[int], max_seconds: float, offset: int) -> dict:
    """The interactive workload at each level; per level: clicks, uploads, all, and the cache's hit rate."""
    out = {}
    for i, c in enumerate(levels):
        before = _cache(url)
        n = max(c * 2 * (N_CLICKS + 1), 18)
        records, wall = asyncio.run(run_load(url, interactive_sessions(photos, N_CLICKS), c, n, max_seconds, first_session=len(photos) * (offset + 1000 * i)))
        after = _cache(url)
        hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
        level = {
            "all": summarize_records(records, wall),
            "click": summarize_records(records, wall, ("click",)),
            "upload": summarize_records(records, wall, ("upload",)),
            "cache": {"hits": hits, "misses": misses, "encodes": after["encodes"] - before["encodes"], "hit_rate": hits / (hits + misses) if hits + misses else None},
        }
        out[str(c)] = level
        print(
            f"  c={c:<3} {level['all']['ok']:>4}/{level['all']['requests']:<4} ok  {level['all']['throughput_rps']:6.3f} req/s  "
            f"click p50 {level['click'].get('p50_ms', float('nan')):8.1f} ms  hit rate {level['cache']['hit_rate']}",
            flush=True,
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    p.add_argument("--concurrency", default="1,4")
    p.add_argument("--max-seconds", type=float, default=90.0, help="per level: no request starts after this")
    p.add_argument("--out", default="cluster_interactive")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    photos = load_photos(SHARED_DATA)
    base = two_of_each(yaml.safe_load(open(args.config)))
    env = {"SAMGRAPH_WEIGHTS": "random", "SAMGRAPH_SEED": "0", "SAMGRAPH_DATA_DIR": str(RESULTS / ".data-cluster")}
    result: dict = {
        "config": os.path.relpath(args.config, REPO),
        "weights": "seeded random (seed 0): real compute, meaningless masks",
        "layout": "2 Ingress + 2 MaskDecoder replicas in both runs",
        "bounds": {"max_seconds_per_level": args.max_seconds, "levels": levels},
    }
    t0 = time.monotonic()
    print("single node ...", flush=True)
    with serve_app(copy.deepcopy(base), env, ready_timeout_s=420) as served:
        result["single_node"] = measure(served.url, photos, levels, args.max_seconds, 10)
    print("3 nodes ...", flush=True)
    with three_nodes() as (cluster, _):
        with serve_app(place(copy.deepcopy(base), env), {"RAY_ADDRESS": cluster.address}, ready_timeout_s=420) as served:
            result["three_nodes"] = measure(served.url, photos, levels, args.max_seconds, 20)
    result["ratios_three_nodes_over_single"] = {
        c: {
            "throughput": result["three_nodes"][c]["all"]["throughput_rps"] / result["single_node"][c]["all"]["throughput_rps"],
            "click_p50": result["three_nodes"][c]["click"]["p50_ms"] / result["single_node"][c]["click"]["p50_ms"],
        }
        for c in map(str, levels)
    }
    result["wall_s"] = time.monotonic() - t0
    path = write_result(args.out, result)
    print(f"\n{'level':>5} | {'single: req/s':>13} {'click p50':>10} {'hit':>5} | {'3 nodes: req/s':>14} {'click p50':>10} {'hit':>5} | ratio thr, p50")
    for c in map(str, levels):
        s, t, r = result["single_node"][c], result["three_nodes"][c], result["ratios_three_nodes_over_single"][c]
        print(
            f"{c:>5} | {s['all']['throughput_rps']:13.3f} {s['click']['p50_ms']:8.0f}ms {s['cache']['hit_rate']:5.2f} | "
            f"{t['all']['throughput_rps']:14.3f} {t['click']['p50_ms']:8.0f}ms {t['cache']['hit_rate']:5.2f} | {r['throughput']:.2f}, {r['click_p50']:.2f}"
        )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
