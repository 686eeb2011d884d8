"""A stage replica killed under load: what the clients see, how long until Serve's replacement answers,
and whether the stored examples survive.

`serve run configs/serve.yaml` (seeded random weights, the embedded Qdrant store in a temporary data
dir). A few examples are stored with POST /v1/examples, then ``--clients`` clients send, in turn,
POST /v1/examples by image_id (decoder -> fader -> embedder -> retriever) and GET /v1/examples
(retriever). Under that load one replica process is killed with SIGKILL (a crash: no shutdown, the
Qdrant lock is left to the kernel), first the Embedder's, then, once the service answers again, the
Retriever's. For each kill:
  - the requests that failed from the kill until the service answered again, by status and error code;
  - the time from the kill to the first answered request that went through the killed stage, and to
    the replacement replica process appearing;
  - the slowest request in that window (an outage must give errors, not hangs).
At the end every example acknowledged with 200 must be listed by GET /v1/examples (read from disk by
the replacement retriever). Baseline in the same run: latency and failures before the first kill.
Writes benchmarks/results/replica_failure.json.

    python -m benchmarks.replica_failure [--clients 4] [--settle 20] [--timeout 120]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from benchmarks.closed_loop import Budget, closed_loop
from benchmarks.common import REPO, b64, random_png, serve_app, summarize, write_result
from benchmarks.procmem import replica_pids

COLLECTION = "failover"
KILLS = ("Embedder", "Retriever")


class Load:
    """Clients alternating an example add (through every stage after the encoder) and a listing."""

    def __init__(self, client: httpx.AsyncClient, image_id: str, t0: float) -> None:
        self.client, self.image_id, self.t0 = client, image_id, t0
        self.records: list[dict] = []
        self.added: list[str] = []
        self.stop = asyncio.Event()

    async def one(self, kind: str, i: int) -> None:
        ts = time.monotonic()
        code = None
        try:
            if kind == "add":
                x = 40 + (i * 37) % 300
                body = {"image_id": self.image_id, "box_xyxy": [x, 40, x + 120, 200], "label": f"l{i % 3}", "collection": COLLECTION}
                r = await self.client.post("/v1/examples", json=body)
                if r.status_code == 200:
                    self.added += r.json()["ids"]
            else:
                r = await self.client.get("/v1/examples", params={"collection": COLLECTION, "limit": 1})
            status = r.status_code
            if status != 200:
                try:
                    code = r.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = f"non-json: {r.text[:80]}"
        except httpx.HTTPError as e:
            status = type(e).__name__
        self.records.append({"kind": kind, "t_s": ts - self.t0, "end_s": time.monotonic() - self.t0, "status": status, "code": code})

    async def step(self, client: int, turn: int) -> None:
        """Client ``client``'s request number ``turn``: adds and listings alternate, per client."""
        i = client + turn
        await self.one("add" if i % 2 == 0 else "list", i)

    async def run(self, clients: int) -> None:
        """Clients sending back to back until :attr:`stop` is set."""
        await closed_loop(self.step, clients, Budget(stop=self.stop.is_set))


async def wait_for_pids(serve_pid: int, stage: str, old: set[int], timeout_s: float) -> tuple[int | None, float | None]:
    """The new replica process of ``stage`` (not in ``old``) and when it appeared (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = set(replica_pids(serve_pid, stage)) - old
        if new:
            return min(new), time.monotonic()
        await asyncio.sleep(0.2)
    return None, None


async def run(served, args) -> dict:
    """Seed examples, load, the kills in turn, then the listing; returns the result payload."""
    t0 = time.monotonic()
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=served.url, timeout=args.timeout, limits=limits) as client:
        img = {"base64": b64(random_png())}
        first = await client.post("/v1/examples", json={"image": img, "box_xyxy": [64, 64, 448, 448], "label": "seed0", "collection": COLLECTION})
        first.raise_for_status()
        image_id, stored = first.json()["image_id"], list(first.json()["ids"])
        for k in (1, 2):
            r = await client.post("/v1/examples", json={"image_id": image_id, "box_xyxy": [32 * k, 32, 32 * k + 200, 300], "label": f"seed{k}", "collection": COLLECTION})
            r.raise_for_status()
            stored += r.json()["ids"]

        load = Load(client, image_id, t0)
        load_task = asyncio.create_task(load.run(args.clients))
        await asyncio.sleep(args.settle)
        kills = []
        for stage in KILLS:
            (pid,) = replica_pids(served.pid, stage)
            t_kill = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            new_pid, t_new = await wait_for_pids(served.pid, stage, {pid}, args.timeout)
            # answered again: the first request sent after the kill through this stage that succeeds
            kinds = {"add"} if stage == "Embedder" else {"add", "list"}
            deadline = time.monotonic() + args.timeout
            recovered = None
            while recovered is None and time.monotonic() < deadline:
                ok = [r for r in load.records if r["kind"] in kinds and r["status"] == 200 and r["t_s"] > t_kill - t0]
                recovered = min((r["end_s"] for r in ok), default=None)
                if recovered is None:
                    await asyncio.sleep(0.2)
            await asyncio.sleep(args.settle)  # steady again before the next kill
            kills.append({"stage": stage, "killed_pid": pid, "t_kill_s": t_kill - t0, "new_pid": new_pid, "new_process_after_s": None if t_new is None else t_new - t_kill, "answered_after_s": None if recovered is None else recovered - (t_kill - t0)})
        load.stop.set()
        await load_task

        listed, offset = [], None
        while True:
            params = {"collection": COLLECTION, "limit": 1000, **({"offset": offset} if offset else {})}
            page = (await client.get("/v1/examples", params=params)).json()
            listed += [item["id"] for item in page["items"]]
            offset = page["next_offset"]
            if offset is None:
                break
        total = page["total"]

    out_kills = []
    for k in kills:
        t_end = k["t_kill_s"] + (k["answered_after_s"] or args.timeout)
        # in the outage: in flight at the kill, or sent after it and before the stage answered again
        window = [r for r in load.records if r["end_s"] >= k["t_kill_s"] and r["t_s"] <= t_end]
        failed = [r for r in window if r["status"] != 200]
        by: dict[str, int] = {}
        for r in failed:
            key = f"{r['status']} {r['code']}"
            by[key] = by.get(key, 0) + 1
        out_kills.append({**k, "requests_in_outage": len(window), "failed": len(failed), "failed_by_status": by, "slowest_in_outage_s": max((r["end_s"] - r["t_s"] for r in window), default=None)})
    before = [r for r in load.records if r["end_s"] < kills[0]["t_kill_s"]]
    expected = set(stored) | set(load.added)
    return {
        "clients": args.clients,
        "baseline_before_kills": {
            "requests": len(before),
            "failed": sum(r["status"] != 200 for r in before),
            **{kind: summarize([r["end_s"] - r["t_s"] for r in before if r["kind"] == kind and r["status"] == 200]) for kind in ("add", "list")},
        },
        "kills": out_kills,
        "examples": {"acknowledged": len(expected), "listed": len(listed), "total": total, "all_listed": expected <= set(listed)},
        "requests": len(load.records),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--settle", type=float, default=20, help="seconds of load before the first kill and after each recovery")
    p.add_argument("--timeout", type=float, default=120, help="per request, and for each recovery")
    p.add_argument("--log", type=Path, default=None, help="keep the service's log here")
    args = p.parse_args()
    config = yaml.safe_load(open(args.config).read())
    with tempfile.TemporaryDirectory() as data, serve_app(config, {"SAMGRAPH_WEIGHTS": "random", "SAMGRAPH_DATA_DIR": data}, keep_log=args.log) as served:
        result = asyncio.run(run(served, args))
    result["note"] = "2 shared CPU cores; other jobs ran on the machine at the same time, so times are noisy"
    path = write_result("replica_failure", result)
    b = result["baseline_before_kills"]
    print(f"before the kills: {b['requests']} requests, {b['failed']} failed; add p50 {b['add']['p50_ms']:.0f} ms, list p50 {b['list']['p50_ms']:.0f} ms")
    print(f"{'killed':>10} {'new proc s':>10} {'answers s':>10} {'in window':>9} {'failed':>6} {'slowest s':>9}  failures")
    for k in result["kills"]:
        print(f"{k['stage']:>10} {k['new_process_after_s'] or float('nan'):>10.1f} {k['answered_after_s'] or float('nan'):>10.1f} {k['requests_in_outage']:>9} {k['failed']:>6} {k['slowest_in_outage_s'] or 0:>9.1f}  {k['failed_by_status']}")
    e = result["examples"]
    print(f"examples: {e['acknowledged']} acknowledged, {e['listed']} listed, all listed: {e['all_listed']}; wrote {path}")


if __name__ == "__main__":
    main()
