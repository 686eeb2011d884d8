"""``/healthz``, ``/readyz``, ``/v1/stats`` and ``/metrics``: is the service up, is every stage ready, what
work has it done."""

from __future__ import annotations

import asyncio

import ray
from fastapi import Response

from serve_app.ingress import responses as out
from serve_app.ingress.context import Context
from serve_app.ingress.errors import ApiError
from serve_app.ingress.http import stage_errors
from serve_app.ingress.metrics import (
    EXPOSITION_CONTENT_TYPE,
    SCRAPE_TIMEOUT_S,
    merge_exposition,
    metrics_urls,
    scrape_nodes,
)
from serve_app.ingress.openapi import DescribedRouter
from serve_app.ingress.readiness import readiness

#: The image-cache counters ``/v1/stats`` sums over the decoder replicas.
CACHE_COUNTERS = ("entries", "bytes", "hits", "misses", "evictions", "encodes")
#: The session ids under which ``/v1/stats`` asks the decoder replicas (see :func:`decoder_stats`).
STATS_KEYS = tuple(f"stats-{k}" for k in range(64))

router = DescribedRouter()


@router.get("/healthz", **router.route_spec(out.Health, access=False))
async def healthz() -> dict:
    """Liveness: the ingress answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    **router.route_spec(out.Readiness, access=False, other={503: ("not_ready, with the reason", out.Readiness)}),
)
async def readyz(response: Response, ctx: Context) -> dict:
    """Readiness: 200 only when every stage answers and encoder and decoder run the same weights."""
    calls = [h.stats.remote() if name == "fader" else h.info.remote() for name, h in ctx.stages().items()]
    try:
        # return_exceptions: a call cancelled by the timeout leaves no "exception never retrieved" in the log
        answers = await asyncio.wait_for(
            asyncio.gather(*calls, return_exceptions=True), timeout=ctx.args.readiness_timeout_s
        )
    except Exception as e:  # timeout: a replica is not up yet
        answers = [e] * len(calls)
    response.status_code, body = readiness(answers)
    return body


@router.get("/v1/stats", **router.route_spec(out.Stats, 503))
@stage_errors
async def stats(ctx: Context) -> dict:
    """Work counters of one replica per stage; the decoder's per replica (its image cache included)
    and ``cache``, their images' counters summed over the decoder replicas found."""
    stages = {k: h for k, h in ctx.stages().items() if k != "decoder"}
    results, decoders = await asyncio.gather(
        asyncio.gather(*(h.stats.remote() for h in stages.values())), decoder_stats(ctx)
    )
    cache = {k: sum(d["cache"][k] for d in decoders.values()) for k in CACHE_COUNTERS}
    decoder = {k: sum(d[k] for d in decoders.values()) for k in ("requests", "batches", "busy_s")}
    return {"cache": cache, "decoder": {**decoder, "replicas": decoders}, **dict(zip(stages, results))}


async def decoder_stats(ctx) -> dict[str, dict]:
    """``stats()`` of every MaskDecoder replica reached, by replica id. A handle cannot address a
    replica, so the call goes out under :data:`STATS_KEYS` session ids, which the consistent-hash ring
    spreads over the replicas (with 100 virtual nodes each, 64 keys reach each of 8 replicas with
    probability > 0.99); per-replica Ray metrics are exact."""
    answers = await asyncio.gather(*(ctx.images.owner(k).stats.remote() for k in STATS_KEYS))
    return {a["replica"] or "local": a for a in answers}


@router.get("/metrics", include_in_schema=False)
async def metrics_text() -> Response:
    """Prometheus text: the ``ray_samgraph_*`` and ``ray_serve_*`` families of every alive node's Ray
    metrics agent, merged (a convenience; Prometheus should scrape the agents, see docs/metrics.md).

    Raises:
        ApiError: 503 ``metrics_unavailable`` when no agent answers.
    """
    urls = metrics_urls(await asyncio.to_thread(ray.nodes))
    bodies = await scrape_nodes(urls, SCRAPE_TIMEOUT_S) if urls else []
    if not bodies:
        tried = f"tried {len(urls)}: {', '.join(urls)[:200]}"
        raise ApiError(503, "metrics_unavailable", f"no Ray metrics agent answered ({tried})")
    text = await asyncio.to_thread(merge_exposition, bodies)  # parsing takes time: off the event loop
    return Response(text, media_type=EXPOSITION_CONTENT_TYPE)
