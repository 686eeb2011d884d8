"""Prometheus metrics of the app, recorded with Ray Serve's metrics API, and the ``GET /metrics`` scrape-through.

Every metric is declared once in :data:`METRICS` (name, type, labels, buckets); the ingress and the stage
deployments build theirs in ``__init__`` (nothing at import) with :class:`IngressMetrics` and
:class:`StageMetrics`. Recording is a few microseconds per value: no locks, no I/O.

Ray exports them through each node's metrics agent (``http://<node>:<metrics export port>/metrics``) with
its own naming: the prefix ``ray_`` is added, counters get ``_total``, histograms ``_bucket``/``_sum``/
``_count``, and Serve adds the labels ``deployment``, ``replica`` and ``application`` (Ray adds
``Component``, ``NodeAddress``, ``SessionName``, ``Version``, ``WorkerId`` and ``otel_scope_*``). So
``samgraph_http_requests`` is scraped as ``ray_samgraph_http_requests_total``; :func:`exported_names`
lists the scraped names. Ray pushes values to the agent every ``metrics_report_interval_ms`` (10 s by
default), so a scrape lags by up to that much.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger("ray.serve")

#: Latency buckets, ms: a cached click (~100-200 ms on CPU) up to a 200-frame video (~10 min).
LATENCY_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 150, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 600000)
#: Score buckets for values in [0, 1] (Ray needs positive boundaries; values <= 0.1 fall in the first).
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
#: Count buckets: 0 falls in 0.5, then 1, 2, 3-4, ...
COUNT_BUCKETS = (0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)

#: Per-node timeout of ``GET /metrics``'s requests to the Ray metrics agents, seconds.
SCRAPE_TIMEOUT_S = 2.0
#: Content type of Prometheus text exposition format 0.0.4.
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Families kept by ``GET /metrics``: ours and Ray Serve's (as Ray names them when it exports).
SCRAPE_PREFIXES = ("ray_samgraph_", "samgraph_", "ray_serve_")


@dataclass(frozen=True)
class MetricSpec:
    """One metric as declared to Ray.

    Attributes:
        name: name given to Ray (``samgraph_...``); see :meth:`exported` for what a scrape shows.
        kind: ``counter``, ``histogram`` or ``gauge``.
        description: HELP text.
        tag_keys: our labels (Serve adds ``deployment``, ``replica``, ``application``).
        boundaries: histogram bucket upper bounds (positive, increasing); empty for other kinds.
    """

    name: str
    kind: str
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    def exported(self) -> tuple[str, ...]:
        """Sample names in a scrape of Ray's metrics agent (``ray_`` prefix, ``_total`` on counters)."""
        base = f"ray_{self.name}"
        if self.kind == "counter":
            return (f"{base}_total",)
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        return (base,)


METRICS: tuple[MetricSpec, ...] = (
    # Ingress (one set per Ingress replica)
    MetricSpec(
        "samgraph_http_requests",
        "counter",
        "HTTP requests answered by the ingress, by route template and status code (4xx and 5xx included).",
        ("endpoint", "status"),
    ),
    MetricSpec(
        "samgraph_request_latency_ms",
        "histogram",
        "Time in the ingress from request to response start, ms, by route template.",
        ("endpoint",),
        LATENCY_BUCKETS_MS,
    ),
    MetricSpec(
        "samgraph_stage_latency_ms",
        "histogram",
        "Per-stage times of successful requests as reported in their timing_ms (stages that ran), ms.",
        ("endpoint", "stage"),
        LATENCY_BUCKETS_MS,
    ),
    MetricSpec(
        "samgraph_embedding_cache_lookups",
        "counter",
        "Embedding-cache lookups of the ingress by result (hit or miss).",
        ("result",),
    ),
    MetricSpec("samgraph_embedding_cache_entries", "gauge", "Images in the ingress's embedding cache."),
    MetricSpec("samgraph_embedding_cache_bytes", "gauge", "Bytes held by the ingress's embedding cache."),
    MetricSpec(
        "samgraph_masks_per_request",
        "histogram",
        "Masks returned per successful request (/v1/segment: all prompts; /v1/predict: instances).",
        ("endpoint",),
        COUNT_BUCKETS,
    ),
    MetricSpec(
        "samgraph_predicted_iou",
        "histogram",
        "SAM's predicted IoU of every returned mask, in [0, 1].",
        ("endpoint",),
        SCORE_BUCKETS,
    ),
    MetricSpec(
        "samgraph_label_confidence",
        "histogram",
        "Vote share of the winning label of each labelled /v1/predict instance, in [0, 1].",
        (),
        SCORE_BUCKETS,
    ),
    # Stage deployments (one set per replica)
    MetricSpec(
        "samgraph_batch_size",
        "histogram",
        "Items per @serve.batch call of a stage.",
        ("stage",),
        COUNT_BUCKETS,
    ),
    MetricSpec(
        "samgraph_batch_compute_ms",
        "histogram",
        "Compute time of one @serve.batch call of a stage, ms.",
        ("stage",),
        LATENCY_BUCKETS_MS,
    ),
)
_SPECS = {s.name: s for s in METRICS}
#: The ``stage`` label values of :class:`StageMetrics` (the batched method of each deployment).
BATCH_STAGES = ("encode", "decode", "fade", "embed_images", "embed_texts", "search")


def metric_names() -> set[str]:
    """Names as declared to Ray (``samgraph_...``)."""
    return set(_SPECS)


def exported_names() -> set[str]:
    """Sample names a scrape shows (``ray_samgraph_..._total``, ``..._bucket`` ...)."""
    return {n for s in METRICS for n in s.exported()}


def _make(name: str):
    """Build one declared metric with ``ray.serve.metrics`` (inside a replica, Serve adds its labels)."""
    from ray.serve import metrics

    spec = _SPECS[name]
    tags = spec.tag_keys or None
    if spec.kind == "counter":
        return metrics.Counter(spec.name, description=spec.description, tag_keys=tags)
    if spec.kind == "gauge":
        return metrics.Gauge(spec.name, description=spec.description, tag_keys=tags)
    return metrics.Histogram(spec.name, description=spec.description, boundaries=list(spec.boundaries), tag_keys=tags)


class IngressMetrics:
    """The ingress's metrics. Build one per replica (in ``Ingress.__init__``) with :meth:`install`, which
    also makes it the one the HTTP middleware records requests into.

    Recording never raises: a failure is logged once and the request goes on.
    """

    def __init__(self) -> None:
        self._requests = _make("samgraph_http_requests")
        self._latency = _make("samgraph_request_latency_ms")
        self._stage = _make("samgraph_stage_latency_ms")
        self._cache = _make("samgraph_embedding_cache_lookups")
        self._cache_entries = _make("samgraph_embedding_cache_entries")
        self._cache_bytes = _make("samgraph_embedding_cache_bytes")
        self._masks = _make("samgraph_masks_per_request")
        self._iou = _make("samgraph_predicted_iou")
        self._confidence = _make("samgraph_label_confidence")
        self._hit, self._miss = {"result": "hit"}, {"result": "miss"}
        self._warned = False

    @classmethod
    def install(cls) -> IngressMetrics:
        """Build the metrics and make them this process's ingress metrics (see :func:`ingress_metrics`)."""
        global _INGRESS
        _INGRESS = cls()
        return _INGRESS

    def _failed(self, e: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("recording a metric failed (further failures are not logged): %r", e)

    def request(self, endpoint: str, status: int, latency_ms: float) -> None:
        """One answered request: ``endpoint`` a route template (``/v1/segment``), HTTP ``status``."""
        try:
            self._requests.inc(tags={"endpoint": endpoint, "status": str(status)})
            self._latency.observe(latency_ms, tags={"endpoint": endpoint})
        except Exception as e:
            self._failed(e)

    def stages(self, endpoint: str, timing_ms: Mapping[str, float]) -> None:
        """A response's ``timing_ms``; ``total`` (the request latency) and stages that did not run (0) skipped."""
        try:
            for stage, ms in timing_ms.items():
                if ms and stage != "total":
                    self._stage.observe(float(ms), tags={"endpoint": endpoint, "stage": stage})
        except Exception as e:
            self._failed(e)

    def cache_lookup(self, hit: bool) -> None:
        try:
            self._cache.inc(tags=self._hit if hit else self._miss)
        except Exception as e:
            self._failed(e)

    def cache_size(self, entries: int, nbytes: int) -> None:
        try:
            self._cache_entries.set(entries)
            self._cache_bytes.set(nbytes)
        except Exception as e:
            self._failed(e)

    def masks(self, endpoint: str, masks: Iterable[Mapping]) -> None:
        """Masks returned by one request: their count and each one's ``predicted_iou``."""
        try:
            tags = {"endpoint": endpoint}
            n = 0
            for m in masks:
                n += 1
                iou = m.get("predicted_iou")
                if iou is not None:
                    self._iou.observe(float(iou), tags=tags)
            self._masks.observe(n, tags=tags)
        except Exception as e:
            self._failed(e)

    def label_confidences(self, instances: Sequence[Mapping]) -> None:
        """``confidence`` of each /v1/predict instance that got a label."""
        try:
            for inst in instances:
                if inst.get("label") is not None:
                    self._confidence.observe(float(inst["confidence"]))
        except Exception as e:
            self._failed(e)


_INGRESS: IngressMetrics | None = None


def ingress_metrics() -> IngressMetrics | None:
    """The metrics of the ingress in this process (None until an ``Ingress`` replica built them)."""
    return _INGRESS


class StageMetrics:
    """Batch size and compute time of a stage deployment's ``@serve.batch`` calls; one per replica.

    Args:
        stages: the ``stage`` label values this replica records (from :data:`BATCH_STAGES`).

    Raises:
        ValueError: an unknown stage name.
    """

    def __init__(self, *stages: str) -> None:
        unknown = set(stages) - set(BATCH_STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; allowed: {', '.join(BATCH_STAGES)}")
        self._size = _make("samgraph_batch_size")
        self._compute = _make("samgraph_batch_compute_ms")
        self._tags = {s: {"stage": s} for s in stages}
        self._warned = False

    def batch(self, stage: str, size: int, compute_s: float) -> None:
        """One batch of ``size`` items that took ``compute_s`` seconds."""
        try:
            tags = self._tags[stage]
            self._size.observe(size, tags=tags)
            self._compute.observe(compute_s * 1e3, tags=tags)
        except Exception as e:
            if not self._warned:
                self._warned = True
                log.warning("recording a metric failed (further failures are not logged): %r", e)


# ------------------------------------------------------------------------------------------ scrape-through
def metrics_urls(nodes: Iterable[Mapping]) -> list[str]:
    """Metrics-agent URLs of the alive nodes in ``ray.nodes()`` records."""
    urls = []
    for n in nodes:
        port = n.get("MetricsExportPort")
        host = n.get("NodeManagerAddress")
        if n.get("Alive") and port and host:
            host = f"[{host}]" if ":" in host else host
            urls.append(f"http://{host}:{port}/metrics")
    return urls


def _family(line: str, current: str | None) -> str:
    name = line.split("{", 1)[0].split(" ", 1)[0]
    if current and name.startswith(current) and name[len(current) :] in ("", "_bucket", "_sum", "_count", "_total", "_created"):
        return current
    return name


def merge_exposition(texts: Iterable[str], prefixes: Sequence[str] = SCRAPE_PREFIXES) -> str:
    """The families whose name starts with one of ``prefixes``, from several Prometheus text expositions
    (one per node), merged so that each family has one ``# HELP``/``# TYPE`` header followed by all its
    samples.

    Args:
        texts: Prometheus text exposition format 0.0.4 documents.
        prefixes: family name prefixes to keep.

    Returns:
        One exposition document (ends with a newline; empty string when nothing matched).
    """
    prefixes = tuple(prefixes)
    families: dict[str, dict] = {}
    for text in texts:
        current = None
        for line in text.splitlines():
            if not line:
                continue
            if line[0] == "#":
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    current = parts[2]
                    if current.startswith(prefixes):
                        fam = families.setdefault(current, {"HELP": None, "TYPE": None, "samples": []})
                        if fam[parts[1]] is None:
                            fam[parts[1]] = line
                continue
            if not line.startswith(prefixes):
                continue
            name = _family(line, current)
            families.setdefault(name, {"HELP": None, "TYPE": None, "samples": []})["samples"].append(line)
    out = []
    for fam in families.values():
        if not fam["samples"]:
            continue
        out += [h for h in (fam["HELP"], fam["TYPE"]) if h]
        out += fam["samples"]
    return "\n".join(out) + "\n" if out else ""


async def scrape_nodes(urls: Sequence[str], timeout_s: float) -> list[str]:
    """GET every URL at once; returns the bodies of those that answered 200 within ``timeout_s``."""
    import httpx

    async with httpx.AsyncClient(timeout=timeout_s) as client:
        results = await asyncio.gather(*(client.get(u) for u in urls), return_exceptions=True)
    bodies = []
    for url, r in zip(urls, results):
        if isinstance(r, BaseException) or r.status_code != 200:
            log.warning("metrics agent %s did not answer: %s", url, r if isinstance(r, BaseException) else r.status_code)
            continue
        bodies.append(r.text)
    return bodies
