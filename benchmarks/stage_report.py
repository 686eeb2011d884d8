"""Output of benchmarks/stage_scaling.py: the table, each workload's capacity and bottleneck, the plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def capacities(rows: list[dict], k: int) -> dict:
    """Requests/s each stage could serve (best setting, and the config's setting) per workload."""
    best, default = {}, {}
    for r in rows:
        if "items_per_s" not in r or not np.isfinite(r["items_per_s"]):
            continue
        best[r["stage"]] = max(best.get(r["stage"], 0.0), r["items_per_s"])
        if r["is_config_default"]:
            default[r["stage"]] = r["items_per_s"]
    per_request = {"segment": {"encoder": 1, "decoder": 1}, "predict": {"encoder": 1, "amg": 1, "fader": k, "embedder": k, "retriever": 1}}
    out = {}
    for workload, needs in per_request.items():
        entry = {"items_per_request": needs, "requests_per_s_best": {}, "requests_per_s_config": {}}
        for stage, n in needs.items():
            if stage in best:
                entry["requests_per_s_best"][stage] = best[stage] / n
            if stage in default:
                entry["requests_per_s_config"][stage] = default[stage] / n
        for which in ("best", "config"):
            caps = entry[f"requests_per_s_{which}"]
            entry[f"bottleneck_{which}"] = min(caps, key=caps.get) if len(caps) == len(needs) else None
        out[workload] = entry
    return out


def print_table(rows: list[dict]) -> None:
    """One line per sweep point: throughput, the bare rate, ratio, latency, calls, memory per replica."""
    head = f"{'stage':<10}{'setting':<10}{'conc':>5}{'items/s':>10}{'bare/s':>9}{'ratio':>7}{'p50 ms':>9}{'p95 ms':>9}{'n':>5}  peak MiB per replica (idle RSS)"
    print(head)
    print("-" * len(head))
    for r in rows:
        mark = "*" if r["is_config_default"] else " "
        if "error" in r:
            print(f"{r['stage']:<10}{r['setting'] + mark:<10} ERROR {r['error'][:100]}")
            continue
        lat = r["latency"] or {"p50_ms": float("nan"), "p95_ms": float("nan")}
        mem = ", ".join(f"{m['peak_mib']:.0f} ({m['rss_mib']:.0f})" for m in r["replica_memory"])
        print(
            f"{r['stage']:<10}{r['setting'] + mark:<10}{r['concurrency']:>5}{r['items_per_s']:>10.2f}{r['bare']['items_per_s']:>9.2f}"
            f"{r['ratio_vs_bare']:>7.2f}{lat['p50_ms']:>9.0f}{lat['p95_ms']:>9.0f}{r['calls']:>5}  {mem}"
        )
    print("* = the config's setting; items: encoder/amg images, decoder decode calls, fader/embedder crops, retriever k-NN jobs")


def plot(rows: list[dict], units: dict[str, str], path: Path) -> None:
    """One panel per stage: throughput per setting (bars; the config's in orange) and the bare model's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    cols = min(3, len(stages))
    nrows = math.ceil(len(stages) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(stages) :]:
        ax.axis("off")
    for ax, stage in zip(axes.flat, stages):
        mine = [r for r in rows if r["stage"] == stage and "items_per_s" in r]
        x = np.arange(len(mine))
        colors = ["tab:orange" if r["is_config_default"] else "tab:blue" for r in mine]
        ax.bar(x, [r["items_per_s"] for r in mine], color=colors)
        ax.plot(x, [r["bare"]["items_per_s"] for r in mine], "k_", markersize=20, mew=2)
        ax.set_xticks(x, [r["setting"] for r in mine], fontsize=8)
        ax.set_title(f"{stage} ({mine[0]['deployment'] if mine else ''})", fontsize=10)
        ax.set_ylabel(f"{units[stage]}/s", fontsize=9)
    handles = [
        Patch(color="tab:blue", label="Serve stage"),
        Patch(color="tab:orange", label="Serve stage, config setting"),
        Line2D([], [], color="k", marker="_", linestyle="", markersize=14, mew=2, label="bare model, same batch"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Throughput of each stage alone (b = max_batch_size, r = replicas)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(payload: dict) -> None:
    """Print the table and the capacities of a result payload."""
    print_table(payload["rows"])
    k = payload["k_masks_per_image"]
    print(f"\nrequests/s each stage alone could serve (K = {k} masks per image; best setting / config setting):")
    for workload, c in payload["capacity"].items():
        parts = [
            f"{s} {c['requests_per_s_best'].get(s, float('nan')):.3g} / {c['requests_per_s_config'].get(s, float('nan')):.3g}"
            for s in c["items_per_request"]
        ]
        print(f"  /v1/{workload}: " + ", ".join(parts) + f"  -> bottleneck: {c['bottleneck_best']} (config: {c['bottleneck_config']})")

