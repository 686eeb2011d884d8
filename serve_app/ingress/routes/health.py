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
from serve_app.ingress.readiness import model_entry, readiness

#: The image-cache counters ``/v1/stats`` sums over the decoder replicas.
CACHE_COUNTERS = ("entries", "bytes", "hits", "misses", "evictions", "encodes")
#: The session ids under which ``/v1/stats`` asks the decoder replicas (see :func:`decoder_stats`).
STATS_KEYS = tuple(f"stats-{k}" for k in range(64))
#: At most this many of those calls in flight at once: a decoder sized for SAM 3 queues few requests
#: (configs/serve.sam3.yaml: 16 ongoing + 32 queued), and 64 at once would be refused with 503.
STATS_IN_FLIGHT = 8

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
    """Readiness: 200 only when every stage answers and each model's encoder and decoder run the same
    weights; ``models`` lists every served model with its capabilities, weights and devices."""
    calls = [h.stats.remote() if name == "fader" else h.info.remote() for name, h in ctx.stages().items()]
    others = [m for m in ctx.model_stages().values()][1:]
    calls += [h.info.remote() for m in others for h in (m["encoder"], m["decoder"])]
    try:
        # return_exceptions: a call cancelled by the timeout leaves no "exception never retrieved" in the log
        answers = await asyncio.wait_for(
            asyncio.gather(*calls, return_exceptions=True), timeout=ctx.args.readiness_timeout_s
        )
    except Exception as e:  # timeout: a replica is not up yet
        answers = [e] * len(calls)
    own = len(answers) - 2 * len(others)
    pairs = list(zip(answers[own::2], answers[own + 1 :: 2]))
    response.status_code, body = readiness(answers[:own], pairs)
    return body


@router.get("/v1/models", **router.route_spec(out.ModelList, 503))
@stage_errors
async def list_models(ctx: Context) -> dict:
    """The models served: each with its family, weights, capabilities, devices and speed-ups, its
    parameters, input size and feature bytes per cached image (from the registry), the default first.

    Raises:
        ApiError: 503 ``not_ready`` when a model's stages do not answer in time.
    """
    from models.registry import family_of, get_model_spec

    stages = ctx.model_stages()
    calls = [h.info.remote() for m in stages.values() for h in (m["encoder"], m["decoder"])]
    try:
        answers = await asyncio.wait_for(asyncio.gather(*calls), timeout=ctx.args.readiness_timeout_s)
    except Exception as e:  # a replica not up yet, or gone
        raise ApiError(503, "not_ready", f"the model stages did not answer: {type(e).__name__}") from None
    models = []
    for i, (enc, dec) in enumerate(zip(answers[::2], answers[1::2])):
        spec = get_model_spec(dec["model_id"])
        models.append(
            {
                **model_entry(enc, dec, default=i == 0),
                "params_m": spec.params_m,
                "image_size": spec.image_size,
                "feature_bytes": family_of(spec.name).feature_nbytes(spec),
            }
        )
    return {"default": ctx.default_model, "models": models}


@router.get("/v1/stats", **router.route_spec(out.Stats, 503))
@stage_errors
async def stats(ctx: Context) -> dict:
    """Work counters of one replica per stage; the decoder's per replica (its image cache included)
    and ``cache``, their images' counters summed over the decoder replicas found."""
    stages = {k: h for k, h in ctx.stages().items() if k != "decoder"}  # the default model's (decoders: all)
    results, decoders = await asyncio.gather(
        asyncio.gather(*(h.stats.remote() for h in stages.values())), decoder_stats(ctx)
    )
    cache = {k: sum(d["cache"][k] for d in decoders.values()) for k in CACHE_COUNTERS}
    by_model = {
        m: {k: sum(d["cache"][k] for d in decoders.values() if d.get("model_id") == m) for k in CACHE_COUNTERS}
        for m in ctx.decoders
    }
    decoder = {k: sum(d[k] for d in decoders.values()) for k in ("requests", "batches", "busy_s")}
    body = {"cache": cache, "cache_by_model": by_model, "decoder": {**decoder, "replicas": decoders}}
    return {**body, **dict(zip(stages, results))}


async def decoder_stats(ctx) -> dict[str, dict]:
    """``stats()`` of every MaskDecoder replica reached, of every served model, by replica id. A handle
    cannot address a replica, so the call goes out under :data:`STATS_KEYS` session ids, which the
    consistent-hash ring spreads over the replicas (with 100 virtual nodes each, 64 keys reach each of 8
    replicas with probability > 0.99), at most :data:`STATS_IN_FLIGHT` at a time; per-replica Ray metrics
    are exact."""
    calls = [(k, m) for m in ctx.decoders for k in STATS_KEYS]
    bound = asyncio.Semaphore(STATS_IN_FLIGHT)

    async def ask(key: str, model_id: str) -> dict:
        async with bound:
            return await ctx.images.owner(key, model_id).stats.remote()

    answers = await asyncio.gather(*(ask(k, m) for k, m in calls))
    return {a["replica"] or f"local-{a.get('model_id')}": a for a in answers}


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
