"""Metric declarations, the /metrics merge of several Ray metrics agents, and the monitoring configs that
reference the metrics (Grafana dashboard, Prometheus rules): they parse and name only metrics the app exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from deployments.runtime.metrics import BATCH_STAGES, METRICS, StageMetrics, exported_names, metric_names
from serve_app.ingress.metrics import SCRAPE_PREFIXES, merge_exposition, metrics_urls

MONITORING = Path(__file__).resolve().parents[2] / "configs" / "monitoring"
# Every Ray Serve family the configs use, as seen in a scrape of Ray 2.60 (tests/integration/test_metrics.py
# dumps one with SAMGRAPH_DUMP_METRICS=path).
SERVE_FAMILIES = {
    "ray_serve_num_http_requests_total",
    "ray_serve_num_http_error_requests_total",
    "ray_serve_deployment_replica_healthy",
    "ray_serve_autoscaling_target_replicas",
    "ray_serve_replica_processing_queries",
    "ray_serve_deployment_queued_queries",
    "ray_serve_num_ongoing_http_requests",
    "ray_serve_deployment_processing_latency_ms_bucket",
}

NODE_A = """# HELP ray_samgraph_http_requests_total HTTP requests.
# TYPE ray_samgraph_http_requests_total counter
ray_samgraph_http_requests_total{endpoint="/v1/segment",status="200",NodeAddress="10.0.0.1"} 3.0
# HELP ray_node_cpu_utilization CPU.
# TYPE ray_node_cpu_utilization gauge
ray_node_cpu_utilization{NodeAddress="10.0.0.1"} 12.0
# HELP ray_samgraph_batch_size Items per batch.
# TYPE ray_samgraph_batch_size histogram
ray_samgraph_batch_size_bucket{stage="decode",le="1.0"} 1.0
ray_samgraph_batch_size_bucket{stage="decode",le="+Inf"} 2.0
ray_samgraph_batch_size_count{stage="decode"} 2.0
ray_samgraph_batch_size_sum{stage="decode"} 3.0
"""
NODE_B = """# HELP ray_samgraph_http_requests_total HTTP requests.
# TYPE ray_samgraph_http_requests_total counter
ray_samgraph_http_requests_total{endpoint="/v1/segment",status="200",NodeAddress="10.0.0.2"} 4.0
# HELP ray_serve_num_http_requests_total Requests at the proxy.
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{route="/v1/segment",status_code="200"} 7.0
"""


def test_metric_declarations_are_valid():
    assert len(metric_names()) == len(METRICS)
    for spec in METRICS:
        assert re.fullmatch(r"samgraph_[a-z0-9_]+", spec.name), spec.name
        assert spec.kind in ("counter", "histogram", "gauge")
        assert not set(spec.tag_keys) & {"deployment", "replica", "application", "route"}  # Serve's own
        if spec.kind == "histogram":
            b = spec.boundaries
            assert b and all(x > 0 for x in b) and list(b) == sorted(set(b)), spec.name
        else:
            assert not spec.boundaries
    assert "ray_samgraph_http_requests_total" in exported_names()
    assert {"ray_samgraph_predicted_iou_bucket", "ray_samgraph_predicted_iou_sum", "ray_samgraph_predicted_iou_count"} <= exported_names()


def test_stage_metrics_reject_unknown_stage():
    with pytest.raises(ValueError, match="encode"):
        StageMetrics("encoder")
    assert "decode" in BATCH_STAGES


def test_merge_keeps_our_families_once_with_all_nodes_samples():
    from prometheus_client.parser import text_string_to_metric_families

    text = merge_exposition([NODE_A, NODE_B])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(fams) == {"ray_samgraph_http_requests", "ray_samgraph_batch_size", "ray_serve_num_http_requests"}
    assert sorted(s.value for s in fams["ray_samgraph_http_requests"].samples) == [3.0, 4.0]
    assert fams["ray_samgraph_batch_size"].type == "histogram" and len(fams["ray_samgraph_batch_size"].samples) == 4
    assert text.count("# TYPE ray_samgraph_http_requests_total counter") == 1
    assert "ray_node_cpu_utilization" not in text
    assert merge_exposition([]) == "" and merge_exposition(["# HELP x y\nx 1\n"]) == ""
    assert SCRAPE_PREFIXES[0] == "ray_samgraph_"


def test_metrics_urls_take_alive_nodes_with_an_agent():
    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 8080},
        {"Alive": False, "NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 8080},
        {"Alive": True, "NodeManagerAddress": "fd00::3", "MetricsExportPort": 9000},
        {"Alive": True, "NodeManagerAddress": "10.0.0.4"},
    ]
    assert metrics_urls(nodes) == ["http://10.0.0.1:8080/metrics", "http://[fd00::3]:9000/metrics"]


def _exprs(obj) -> list[str]:
    """Every PromQL expression in a parsed dashboard or rules file."""
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == "expr" and isinstance(v, str)] + [e for v in obj.values() for e in _exprs(v)]
    if isinstance(obj, list):
        return [e for v in obj for e in _exprs(v)]
    return []


def _check_names(exprs: list[str]) -> None:
    assert exprs
    ours = exported_names()
    for expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        for name in re.findall(r"\b(?:ray_)?samgraph_[a-z0-9_]+", expr):
            assert name in ours, f"{name} is not a metric the app exports (one of {sorted(ours)})"
        for name in re.findall(r"\bray_serve_[a-z0-9_]+", expr):
            assert name in SERVE_FAMILIES, name


def test_dashboard_parses_and_uses_only_exported_metrics():
    dash = json.loads((MONITORING / "grafana-samgraph.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    assert all(p["targets"] for p in panels)
    _check_names(_exprs(dash))
    used = " ".join(_exprs(dash))
    for family in ("http_requests", "request_latency_ms", "stage_latency_ms", "batch_size", "embedding_cache_lookups", "masks_per_request", "predicted_iou", "label_confidence"):
        assert f"ray_samgraph_{family}" in used, family


def test_alert_rules_parse_and_use_only_exported_metrics():
    rules = yaml.safe_load((MONITORING / "prometheus-alerts.yml").read_text())
    all_rules = [r for g in rules["groups"] for r in g["rules"]]
    alerts = [r for r in all_rules if "alert" in r]
    for r in all_rules:
        assert set(r) >= {"expr"} and ("alert" in r) != ("record" in r), r
    for a in alerts:
        assert a["labels"]["severity"] in ("info", "warning", "critical") and a["annotations"]["summary"], a["alert"]
    names = {a["alert"] for a in alerts}
    assert {"SamgraphSegmentLatencyHigh", "SamgraphHigh5xxRate", "SamgraphPredictedIouDrift", "SamgraphBackpressure503"} <= names
    recorded = {r["record"] for r in all_rules if "record" in r}
    for expr in _exprs(rules):
        for name in re.findall(r"\bsamgraph:[a-z0-9_:]+", expr):
            assert name in recorded, name
    _check_names(_exprs(rules))
    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert scrape["rule_files"] == ["prometheus-alerts.yml"]


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def request(self, endpoint: str, status: int, latency_ms: float) -> None:
        self.calls.append((endpoint, status, latency_ms))


def test_middleware_records_route_template_and_status(monkeypatch):
    from fastapi.testclient import TestClient

    import serve_app.ingress.metrics
    from serve_app.ingress.deployment import api

    rec = _Recorder()
    monkeypatch.setattr(serve_app.ingress.metrics, "_INGRESS", rec)
    with TestClient(api) as c:
        assert c.get("/ui", follow_redirects=False).status_code == 307
        assert c.get("/no/such/path").status_code == 404
        assert c.get("/ui/").status_code == 200
    assert [(e, s) for e, s, _ in rec.calls] == [("/ui", 307), ("unmatched", 404), ("/ui", 200)]
    assert all(ms >= 0 for *_, ms in rec.calls)


def test_stage_work_counts_batches_items_and_time():
    from deployments.runtime.metrics import StageWork

    work = StageWork("fade", counters=("jobs", "crops"))
    assert work.stats() == {"jobs": 0, "crops": 0, "batches": 0, "busy_s": 0.0}
    work.batch("fade", 2, 0.5, jobs=2, crops=5)
    work.batch("fade", 1, 0.25, jobs=1, crops=1)
    work.add(crops=1)
    assert work.stats() == {"jobs": 3, "crops": 7, "batches": 2, "busy_s": 0.75}
    with pytest.raises(KeyError):
        work.add(images=1)  # not a counter of this stage
