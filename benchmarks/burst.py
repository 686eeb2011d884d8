"""A burst of fresh images while another job loads the CPU: every request must get an answer (200, or a
fast 503 with ``Retry-After``), none a client timeout.

The case an operator found (issue 25): 64 fresh images at once against ``configs/serve.yaml`` while
another job loaded the CPU gave 16 answers, 44 fast 503s and **4 client timeouts at 120 s**: the encoder
admitted a fixed count of requests (4 ongoing + 16 queued), and when encodes ran twice as slow as usual
the last admitted ones waited past any deadline.

This program starts the shipped config (``serve run``, its own local Ray cluster, seeded random weights),
starts ``--load-procs`` processes that burn a core each (numpy matrix products: the "other job"), waits
``--load-warmup`` seconds, sends ``--warm`` fresh images one by one (the service measures its times under
that load, as a service running beside another job has), then sends ``--burst`` requests at once to ``/v1/segment``, each a new image
(a real photo with a unique JPEG comment, so every one needs its own encode) and its box. Each carries
``X-Request-Timeout: --deadline`` (none when 0: the service's own limit applies) and is bounded on the
client by ``--client-timeout``. It records each answer's status, error code, ``Retry-After`` and latency,
and prints the targets: 0 client timeouts, 0 5xx other than 503, p99 of a refusal under 100 ms.
Before the burst it sends the same burst with an invalid ``X-Request-Timeout: 0``, which the ingress
answers 422 before parsing the body: the floor, the quickest any answer to those bytes can be through
Serve's proxy under the same load, to read the refusals' latency against.

Writes ``benchmarks/results/burst.json`` (``--out``), with the machine's CPU model and flags.

    RAY_AUTH_MODE=disabled python -m benchmarks.burst [--burst 64] [--load-procs 1] [--deadline 0]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import time
from collections import Counter

import httpx
import numpy as np
import yaml

from benchmarks.common import REPO, SHARED_DATA, b64, serve_app, summarize, write_result
from benchmarks.loadgen import load_photos, unique_jpeg


def _burn(stop: mp.Event) -> None:  # a process of the "other job": one core busy until ``stop``
    os.environ["OMP_NUM_THREADS"] = "1"
    a = np.random.default_rng(0).random((256, 256))
    while not stop.is_set():
        a = (a @ a) / 256.0


async def _one(client: httpx.AsyncClient, url: str, body: dict, headers: dict, timeout_s: float) -> dict:
    t0 = time.perf_counter()
    try:
        r = await client.post(f"{url}/v1/segment", json=body, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException:
        return {"status": "timeout", "latency_s": time.perf_counter() - t0}
    except httpx.HTTPError as e:
        return {"status": "error", "error": type(e).__name__, "latency_s": time.perf_counter() - t0}
    out = {"status": r.status_code, "latency_s": time.perf_counter() - t0, "retry_after": r.headers.get("retry-after")}
    if r.status_code != 200:
        try:
            out["code"] = r.json()["error"]["code"]
        except Exception:  # Serve's own plain-text 503 from the proxy
            out["code"] = r.text[:60]
    return out


async def burst(
    url: str, n: int, deadline_s: float, client_timeout_s: float, first: int = 0, header: str | None = None
) -> list[dict]:
    """Send ``n`` fresh-image requests at once (images ``first`` to ``first + n - 1``: each a new one); return
    one record per request (status or ``"timeout"``, latency in seconds, error code and ``Retry-After`` of a
    refusal). ``header``: the ``X-Request-Timeout`` value sent as is (the floor's invalid ``0``), else
    ``deadline_s`` (none when 0)."""
    photos = load_photos(SHARED_DATA)
    bodies = []
    for i in range(first, first + n):
        photo = photos[i % len(photos)]
        bodies.append(
            {
                "image": {"base64": b64(unique_jpeg(photo.jpeg, 10_000 + i))},
                "prompts": [{"box_xyxy": list(photo.box_xyxy)}],
            }
        )
    headers = {"X-Request-Timeout": f"{deadline_s:g}"} if deadline_s > 0 else {}
    if header is not None:
        headers = {"X-Request-Timeout": header}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits) as client:
        return await asyncio.gather(*(_one(client, url, b, headers, client_timeout_s) for b in bodies))


def report(records: list[dict]) -> dict:
    """Counts by status and code, latencies of answers and refusals, and the targets met or not."""
    statuses = Counter(str(r["status"]) for r in records)
    codes = Counter(r.get("code") for r in records if r["status"] not in (200, "timeout"))
    ok = [r["latency_s"] for r in records if r["status"] == 200]
    refused = [r["latency_s"] for r in records if r["status"] in (429, 503)]
    other_5xx = sum(1 for r in records if isinstance(r["status"], int) and r["status"] >= 500 and r["status"] != 503)
    refusal_p99_ms = summarize(refused)["p99_ms"] if refused else None
    return {
        "statuses": dict(statuses),
        "refusal_codes": {str(k): v for k, v in codes.items()},
        "answered": summarize(ok) if ok else None,
        "refused": summarize(refused) if refused else None,
        "targets": {
            "client_timeouts": statuses.get("timeout", 0),
            "other_5xx": other_5xx,
            "refusal_p99_ms": refusal_p99_ms,
            "met": bool(ok)
            and statuses.get("timeout", 0) == 0
            and other_5xx == 0
            and statuses.get("error", 0) == 0
            and all(r["status"] in (200, 429, 503) for r in records)
            and (refusal_p99_ms is None or refusal_p99_ms < 100),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    p.add_argument("--burst", type=int, default=64)
    p.add_argument("--load-procs", type=int, default=1, help="processes of the other job, each burning one core")
    p.add_argument("--load-warmup", type=float, default=5.0, help="seconds of load before the burst")
    p.add_argument("--deadline", type=float, default=0.0, help="X-Request-Timeout of each request (0: none sent)")
    p.add_argument("--client-timeout", type=float, default=120.0)
    p.add_argument(
        "--warm",
        type=int,
        default=2,
        help="fresh images sent one by one under the load first (the stages' service times)",
    )
    p.add_argument("--out", default="burst")
    args = p.parse_args()

    config = yaml.safe_load(open(args.config))
    env = {"SAMGRAPH_WEIGHTS": "random"}
    with serve_app(config, env) as served:
        stop = mp.Event()
        burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.load_procs)]
        for b in burners:
            b.start()
        try:
            time.sleep(args.load_warmup)
            for i in range(args.warm):  # one by one, under the load: the stages measure their service times
                asyncio.run(burst(served.url, 1, 0, args.client_timeout, first=1000 + i))
            # The floor: the same bodies at once, each answered 422 by the ingress for its invalid
            # X-Request-Timeout before the body is parsed. No refusal can be faster than the service's
            # quickest answer to the same bytes through the same proxy under the same load.
            floor = asyncio.run(burst(served.url, args.burst, 0, args.client_timeout, first=3000, header="0"))
            t0 = time.perf_counter()
            records = asyncio.run(burst(served.url, args.burst, args.deadline, args.client_timeout))
            wall_s = time.perf_counter() - t0
        finally:
            stop.set()
            for b in burners:
                b.join(10)
        stats = httpx.get(f"{served.url}/v1/stats", timeout=10).json()
        after = asyncio.run(burst(served.url, 1, 0, args.client_timeout, first=2000))[0]
    result = {
        "config": os.path.relpath(args.config, REPO),
        "args": vars(args),
        "wall_s": wall_s,
        **report(records),
        "floor": {
            "what": "the same burst, each request answered 422 at the ingress (X-Request-Timeout: 0) before its body is parsed",
            "statuses": dict(Counter(str(r["status"]) for r in floor)),
            "latency": summarize([r["latency_s"] for r in floor]),
        },
        "answered_after_the_burst": after["status"],
        "stats_after": stats,
        "records": records,
    }
    path = write_result(args.out, result)
    t = result["targets"]
    print(f"statuses {result['statuses']}, refusal codes {result['refusal_codes']}")
    print(
        f"floor (422 before parsing, same burst): p50 {result['floor']['latency']['p50_ms']:.0f} ms, "
        f"p99 {result['floor']['latency']['p99_ms']:.0f} ms"
    )
    print(
        f"client timeouts {t['client_timeouts']}, other 5xx {t['other_5xx']}, refusal p99 {t['refusal_p99_ms']} ms; "
        f"targets {'met' if t['met'] else 'NOT met'}; after the burst: {after['status']}; {path}"
    )


if __name__ == "__main__":
    main()
