"""The ingress's metrics and the ``GET /metrics`` scrape-through.

The metrics themselves are declared in :mod:`deployments.runtime.metrics` (see there for how Ray names
them when it exports); this module records the ingress's set and merges what every node's Ray metrics
agent exports into one Prometheus text document.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence

from deployments.runtime.metrics import Recorder, build_metric

log = logging.getLogger("ray.serve")

#: Per-node timeout of ``GET /metrics``'s requests to the Ray metrics agents, seconds.
SCRAPE_TIMEOUT_S = 2.0
#: Content type of Prometheus text exposition format 0.0.4.
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Families kept by ``GET /metrics``: ours and Ray Serve's (as Ray names them when it exports).
SCRAPE_PREFIXES = ("ray_samgraph_", "samgraph_", "ray_serve_")


class IngressMetrics(Recorder):
    """The ingress's metrics. Build one per replica (in ``Ingress.__init__``) with :meth:`install`, which
    also makes it the one the HTTP middleware records requests into.

    Recording never raises: a failure is logged once and the request goes on.
    """

    def __init__(self) -> None:
        super().__init__()
        self._requests = build_metric("samgraph_http_requests")
        self._refusals = build_metric("samgraph_refusals")
        self._latency = build_metric("samgraph_request_latency_ms")
        self._stage = build_metric("samgraph_stage_latency_ms")
        self._masks = build_metric("samgraph_masks_per_request")
        self._iou = build_metric("samgraph_predicted_iou")
        self._confidence = build_metric("samgraph_label_confidence")

    @classmethod
    def install(cls) -> IngressMetrics:
        """Build the metrics and make them this process's ingress metrics (see :func:`ingress_metrics`)."""
        global _INGRESS
        _INGRESS = cls()
        return _INGRESS

    def request(self, endpoint: str, status: int, latency_ms: float) -> None:
        """One answered request: ``endpoint`` a route template (``/v1/segment``), HTTP ``status``."""
        try:
            self._requests.inc(tags={"endpoint": endpoint, "status": str(status)})
            self._latency.observe(latency_ms, tags={"endpoint": endpoint})
        except Exception as e:
            self.failed(e)

    def refusal(self, endpoint: str, cause: str) -> None:
        """One request refused (a 429 or 503): ``cause`` its error code (``overloaded``, ``deadline``, ...)."""
        try:
            self._refusals.inc(tags={"endpoint": endpoint, "cause": cause})
        except Exception as e:
            self.failed(e)

    def stages(self, endpoint: str, timing_ms: Mapping[str, float]) -> None:
        """A response's ``timing_ms``; ``total`` (the request latency) and stages that did not run (0) skipped."""
        try:
            for stage, ms in timing_ms.items():
                if ms and stage != "total":
                    self._stage.observe(float(ms), tags={"endpoint": endpoint, "stage": stage})
        except Exception as e:
            self.failed(e)

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
            self.failed(e)

    def label_confidences(self, instances: Sequence[Mapping]) -> None:
        """``confidence`` of each /v1/predict instance that got a label."""
        try:
            for inst in instances:
                if inst.get("label") is not None:
                    self._confidence.observe(float(inst["confidence"]))
        except Exception as e:
            self.failed(e)


_INGRESS: IngressMetrics | None = None


def ingress_metrics() -> IngressMetrics | None:
    """The metrics of the ingress in this process (None until an ``Ingress`` replica built them)."""
    return _INGRESS


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


class _Families:
    """A prometheus_client collector over already parsed metric families (for ``generate_latest``)."""

    def __init__(self, families) -> None:
        self._families = families

    def collect(self):
        return iter(self._families)


def merge_exposition(texts: Iterable[str], prefixes: Sequence[str] = SCRAPE_PREFIXES) -> str:
    """The families whose name starts with one of ``prefixes``, from several Prometheus text expositions
    (one per node), merged so that each family has one ``# HELP``/``# TYPE`` header followed by all its
    samples.

    prometheus_client parses (``text_string_to_metric_families``) and writes (``generate_latest``) the
    text format; a family's header is taken from the first document that has it.

    Args:
        texts: Prometheus text exposition format 0.0.4 documents.
        prefixes: family name prefixes to keep.

    Returns:
        One exposition document (ends with a newline; empty string when nothing matched).

    Raises:
        ValueError: a document is not in the text format.
    """
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    prefixes = tuple(prefixes)
    families: dict[str, object] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(prefixes) or not family.samples:
                continue
            kept = families.setdefault(family.name, family)
            if kept is not family:
                kept.samples.extend(family.samples)
    if not families:
        return ""
    return generate_latest(_Families(list(families.values()))).decode()


async def scrape_nodes(urls: Sequence[str], timeout_s: float) -> list[str]:
    """GET every URL at once; returns the bodies of those that answered 200 within ``timeout_s``."""
    import httpx

    async with httpx.AsyncClient(timeout=timeout_s) as client:
        results = await asyncio.gather(*(client.get(u) for u in urls), return_exceptions=True)
    bodies = []
    for url, r in zip(urls, results):
        if isinstance(r, BaseException) or r.status_code != 200:
            reason = r if isinstance(r, BaseException) else r.status_code
            log.warning("metrics agent %s did not answer: %s", url, reason)
            continue
        bodies.append(r.text)
    return bodies
