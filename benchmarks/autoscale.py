"""Autoscaling of one stage under load: the MaskDecoder goes 1 -> 2 replicas under clicks and back to 1.

`serve run configs/serve.yaml` (seeded random weights) with the decoder's autoscaling made quick to react
(``upscale_delay_s`` 5, ``downscale_delay_s`` 20, ``look_back_period_s`` 15, ``target_ongoing_requests``
2; max_replicas 2 as in the shipped config). One image is encoded, then:
  idle  - ``--idle`` s with no load;
  load  - ``--clients`` concurrent clients click on the cached image by image_id, each as fast as it is
          answered, for ``--load`` s (at most ``--max-requests`` requests in all);
  after - ``--after`` s with no load, for the scale-down.
Every second the decoder's replica states come from ``serve.status()`` (a driver attached to the
service's own local cluster), with the clients' requests in flight and the requests answered.

Baseline in the same run: click latency and throughput while 1 replica runs, against while 2 run.
Writes benchmarks/results/autoscale.json and autoscale.png (replicas and requests in flight over time).

    python -m benchmarks.autoscale [--clients 16] [--idle 10] [--load 90] [--after 60]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
import numpy as np
import yaml

from benchmarks.closed_loop import Budget, closed_loop
from benchmarks.common import REPO, RESULTS, b64, random_png, serve_app, summarize, write_result
from benchmarks.procmem import gcs_address

STAGE = "MaskDecoder"
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 5,
    "downscale_delay_s": 20,
    "look_back_period_s": 15,
}


def replica_states() -> dict:
    """``{"running": n, "starting": n, "stopping": n, "status": ..., "trigger": ...}`` of the stage."""
    from ray import serve

    d = serve.status().applications["samgraph"].deployments[STAGE]
    states = {str(k.value if hasattr(k, "value") else k).lower(): v for k, v in d.replica_states.items()}
    return {
        "running": states.get("running", 0),
        "starting": states.get("starting", 0),
        "stopping": states.get("stopping", 0),
        "status": str(getattr(d.status, "value", d.status)),
        "trigger": str(getattr(d.status_trigger, "value", d.status_trigger)),
    }


async def run(url: str, args) -> tuple[list[dict], list[dict], dict]:
    """Drive the phases; returns (status samples, request records, phase start times)."""
    samples, records, state = [], [], {"in_flight": 0, "done": 0}
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=args.clients + 4)) as http:
        r = await http.post("/v1/segment", json={"image": {"base64": b64(random_png())}, "prompts": [{"box_xyxy": [64, 64, 448, 448]}]})
        r.raise_for_status()
        image_id = r.json()["image_id"]
        phases = {"idle": time.monotonic() - t0}

        async def poll(stop: asyncio.Event):
            while not stop.is_set():
                s = await asyncio.to_thread(replica_states)
                samples.append({"t_s": time.monotonic() - t0, **s, "in_flight": state["in_flight"], "answered": state["done"]})
                try:
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                except TimeoutError:
                    pass

        rngs = [np.random.default_rng(i) for i in range(args.clients)]

        async def click(client: int, turn: int) -> None:
            x, y = (int(v) for v in rngs[client].integers(16, 496, 2))
            state["in_flight"] += 1
            ts = time.monotonic()
            try:
                resp = await http.post("/v1/segment", json={"image_id": image_id, "prompts": [{"points": [[x, y, "fg"]]}]})
                status = resp.status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            state["in_flight"] -= 1
            state["done"] += 1
            records.append({"t_s": ts - t0, "latency_s": time.monotonic() - ts, "status": status})

        stop = asyncio.Event()
        poller = asyncio.create_task(poll(stop))
        await asyncio.sleep(args.idle)
        phases["load"] = time.monotonic() - t0
        await closed_loop(click, args.clients, Budget(seconds=args.load, max_steps=args.max_requests))
        phases["after"] = time.monotonic() - t0
        await asyncio.sleep(args.after)
        phases["end"] = time.monotonic() - t0
        stop.set()
        await poller
    return samples, records, phases


def replicas_at(samples: list[dict], t: float) -> int:
    """Running replicas at time ``t`` (the last sample before it)."""
    n = samples[0]["running"]
    for s in samples:
        if s["t_s"] > t:
            break
        n = s["running"]
    return n


def plot(samples: list[dict], records: list[dict], phases: dict, path) -> None:
    """Replicas over time (top) and requests in flight and answered per second (bottom), load shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.step(t, [s["running"] for s in samples], where="post", label="running replicas")
    ax1.step(t, [s["running"] + s["starting"] for s in samples], where="post", linestyle="--", label="running + starting")
    ax1.set_ylabel(f"{STAGE} replicas")
    ax1.set_ylim(0, AUTOSCALING["max_replicas"] + 0.5)
    ax1.legend(loc="upper right")
    ax2.plot(t, [s["in_flight"] for s in samples], label="client requests in flight")
    ok = [r for r in records if r["status"] == 200]
    if ok:
        bins = np.arange(0, phases["end"] + 5, 5.0)
        counts, _ = np.histogram([r["t_s"] + r["latency_s"] for r in ok], bins=bins)
        ax2.step(bins[:-1], counts / 5.0, where="post", label="answered / s (5 s bins)")
    ax2.set_ylabel("requests")
    ax2.set_xlabel("time (s)")
    ax2.legend(loc="upper right")
    for ax in (ax1, ax2):
        ax.axvspan(phases["load"], phases["after"], color="orange", alpha=0.15)
    ax1.set_title(f"{STAGE} autoscaling (load phase shaded)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--idle", type=float, default=10)
    p.add_argument("--load", type=float, default=90)
    p.add_argument("--after", type=float, default=60)
    p.add_argument("--max-requests", type=int, default=20000)
    args = p.parse_args()

    config = yaml.safe_load(open(args.config).read())
    for d in config["applications"][0]["deployments"]:
        if d["name"] == STAGE:
            d.pop("num_replicas", None)
            d["autoscaling_config"] = dict(AUTOSCALING)
    import ray

    with serve_app(config, {"SAMGRAPH_WEIGHTS": "random"}) as served:
        ray.init(address=gcs_address(served.pid), log_to_driver=False)
        try:
            samples, records, phases = asyncio.run(run(served.url, args))
        finally:
            ray.shutdown()

    decided = next((s["t_s"] for s in samples if s["t_s"] >= phases["load"] and s["running"] + s["starting"] >= 2), None)
    up = next((s["t_s"] for s in samples if s["t_s"] >= phases["load"] and s["running"] >= 2), None)
    down = next((s["t_s"] for s in samples if s["t_s"] >= phases["after"] and s["running"] <= 1), None)
    by_replicas: dict[int, list[dict]] = {}
    for r in records:
        if r["status"] == 200:
            by_replicas.setdefault(replicas_at(samples, r["t_s"]), []).append(r)
    per_count = {}
    for n, rs in sorted(by_replicas.items()):
        span = max(r["t_s"] + r["latency_s"] for r in rs) - min(r["t_s"] for r in rs)
        per_count[str(n)] = {**summarize([r["latency_s"] for r in rs]), "throughput_rps": len(rs) / span if span > 0 else None}
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    result = {
        "stage": STAGE,
        "autoscaling_config": AUTOSCALING,
        "clients": args.clients,
        "phases_s": phases,
        "replica_added_after_load_start_s": None if decided is None else decided - phases["load"],
        "scale_up_after_load_start_s": None if up is None else up - phases["load"],
        "scale_down_after_load_end_s": None if down is None else down - phases["after"],
        "max_running_replicas": max(s["running"] for s in samples),
        "requests": len(records),
        "statuses": statuses,
        "click_latency_by_running_replicas": per_count,
        "samples": samples,
        "note": "2 shared CPU cores; other jobs ran on the machine at the same time, so times are noisy",
    }
    path = write_result("autoscale", result)
    plot(samples, records, phases, RESULTS / "autoscale.png")
    print(
        f"{STAGE}: {result['max_running_replicas']} replicas at most; a replica starting {result['replica_added_after_load_start_s']} s and running "
        f"{result['scale_up_after_load_start_s']} s after load start; back to 1 {result['scale_down_after_load_end_s']} s after load end"
    )
    print(f"{'replicas':>8} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>7}")
    for n, s in per_count.items():
        print(f"{n:>8} {s['n']:>6} {s['p50_ms']:>8.0f} {s['p95_ms']:>8.0f} {s['throughput_rps'] or 0:>7.1f}")
    print(f"statuses: {statuses}; wrote {path}")


if __name__ == "__main__":
    main()
