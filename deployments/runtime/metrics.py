"""Prometheus metrics of the app, declared once and recorded with Ray Serve's metrics API.

Every metric is declared once in :data:`METRICS` (name, type, labels, buckets); the stage deployments
build theirs in ``__init__`` (nothing at import) with :class:`StageMetrics`, the ingress its own set over
:func:`build_metric`. Recording is a few microseconds per value: no locks, no I/O, and it never raises
(:class:`Recorder`).

Ray exports them through each node's metrics agent (``http://<node>:<metrics export port>/metrics``) with
its own naming: the prefix ``ray_`` is added, counters get ``_total``, histograms ``_bucket``/``_sum``/
``_count``, and Serve adds the labels ``deployment``, ``replica`` and ``application`` (Ray adds
``Component``, ``NodeAddress``, ``SessionName``, ``Version``, ``WorkerId`` and ``otel_scope_*``). So
``samgraph_http_requests`` is scraped as ``ray_samgraph_http_requests_total``; :func:`exported_names`
lists the scraped names. Ray pushes values to the agent every ``metrics_report_interval_ms`` (10 s by
default), so a scrape lags by up to that much.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("ray.serve")

#: Latency buckets, ms: a cached click (~100-200 ms on CPU) up to a 200-frame video (~10 min).
LATENCY_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 150, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 600000)
#: Score buckets for values in [0, 1] (Ray needs positive boundaries; values <= 0.1 fall in the first).
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
#: Count buckets: 0 falls in 0.5, then 1, 2, 3-4, ...
COUNT_BUCKETS = (0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)

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
        "samgraph_refusals",
        "counter",
        "Requests the ingress refused (429 and 503) by route template and cause: the error code "
        "(overloaded, deadline, unavailable, rate_limited, sessions_full, ...).",
        ("endpoint", "cause"),
    ),
    MetricSpec(
        "samgraph_embedding_cache_lookups",
        "counter",
        "Image-cache lookups of a MaskDecoder replica (the image's owner) by result (hit or miss).",
        ("result",),
    ),
    MetricSpec("samgraph_embedding_cache_entries", "gauge", "Images held by a MaskDecoder replica's image cache."),
    MetricSpec(
        "samgraph_embedding_cache_bytes",
        "gauge",
        "Bytes (features and pixels) held by a MaskDecoder replica's image cache.",
    ),
    MetricSpec(
        "samgraph_embedding_cache_evictions",
        "counter",
        "Images a MaskDecoder replica's image cache evicted to stay within its bounds.",
    ),
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


def build_metric(name: str):
    """Build one declared metric with ``ray.serve.metrics`` (inside a replica, Serve adds its labels)."""
    from ray.serve import metrics

    spec = _SPECS[name]
    tags = spec.tag_keys or None
    if spec.kind == "counter":
        return metrics.Counter(spec.name, description=spec.description, tag_keys=tags)
    if spec.kind == "gauge":
        return metrics.Gauge(spec.name, description=spec.description, tag_keys=tags)
    return metrics.Histogram(spec.name, description=spec.description, boundaries=list(spec.boundaries), tag_keys=tags)


class Recorder:
    """Base of the metric sets: recording never raises; the first failure is logged, later ones are not."""

    def __init__(self) -> None:
        self._warned = False

    def failed(self, e: Exception) -> None:
        """Note a failed recording (logged once per recorder)."""
        if not self._warned:
            self._warned = True
            log.warning("recording a metric failed (further failures are not logged): %r", e)


class StageMetrics(Recorder):
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
        super().__init__()
        self._size = build_metric("samgraph_batch_size")
        self._compute = build_metric("samgraph_batch_compute_ms")
        self._tags = {s: {"stage": s} for s in stages}

    def batch(self, stage: str, size: int, compute_s: float) -> None:
        """One batch of ``size`` items that took ``compute_s`` seconds."""
        try:
            tags = self._tags[stage]
            self._size.observe(size, tags=tags)
            self._compute.observe(compute_s * 1e3, tags=tags)
        except Exception as e:
            self.failed(e)


class StageWork:
    """A stage replica's work: the counters ``/v1/stats`` shows, and the batch metrics of its
    ``@serve.batch`` calls (:class:`StageMetrics`).

    Args:
        stages: the ``stage`` label values of the replica's batched methods (from :data:`BATCH_STAGES`).
        counters: names of the replica's item counters (``images``, ``crops`` ...), each starting at 0.

    Raises:
        ValueError: an unknown stage name.
    """

    def __init__(self, *stages: str, counters: tuple[str, ...] = ()) -> None:
        self._metrics = StageMetrics(*stages)
        self._counts = dict.fromkeys(counters, 0)
        self._batches = 0
        self._busy_s = 0.0

    def batch(self, stage: str, size: int, compute_s: float, **counts: int) -> None:
        """One batch of ``size`` items that took ``compute_s`` seconds, and what it added to the counters."""
        self._metrics.batch(stage, size, compute_s)
        self._batches += 1
        self._busy_s += compute_s
        self.add(**counts)

    def add(self, **counts: int) -> None:
        """Add to the counters (work done outside a batch).

        Raises:
            KeyError: a counter that was not declared.
        """
        for name, n in counts.items():
            self._counts[name] += n

    def stats(self) -> dict:
        """The counters, ``batches`` run and ``busy_s``, the seconds spent in them."""
        return {**self._counts, "batches": self._batches, "busy_s": self._busy_s}


class CacheMetrics(Recorder):
    """The image-cache metrics of a ``MaskDecoder`` replica (Serve labels them with the replica)."""

    def __init__(self) -> None:
        super().__init__()
        self._lookups = build_metric("samgraph_embedding_cache_lookups")
        self._entries = build_metric("samgraph_embedding_cache_entries")
        self._bytes = build_metric("samgraph_embedding_cache_bytes")
        self._evictions = build_metric("samgraph_embedding_cache_evictions")
        self._hit, self._miss = {"result": "hit"}, {"result": "miss"}

    def lookup(self, hit: bool) -> None:
        """One lookup of an image by its id."""
        try:
            self._lookups.inc(tags=self._hit if hit else self._miss)
        except Exception as e:
            self.failed(e)

    def size(self, entries: int, nbytes: int, evicted: int = 0) -> None:
        """The cache's size after a change, and the entries that change evicted."""
        try:
            self._entries.set(entries)
            self._bytes.set(nbytes)
            if evicted:
                self._evictions.inc(evicted)
        except Exception as e:
            self.failed(e)
