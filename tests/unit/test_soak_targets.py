"""benchmarks/soak.py's targets on a synthetic run with known answers: RSS slopes and ratios, sessions back
to 0, cache bounds, lost examples, and failures inside and outside the kill windows."""

from __future__ import annotations

import pytest

from benchmarks.soak import KILLS, Ledger, SoakPlan, targets

MIB = 2**20
WARMUP_S = 600.0


def _sample(t_s: float, phase: str, rss: dict[str, int], sessions: int, cache_bytes: int = 10 * MIB) -> dict:
    return {
        "t_s": t_s,
        "phase": phase,
        "rss": {k: {"deployment": k.split(":")[0], "pid": int(k.split(":")[1]), "rss_bytes": b} for k, b in rss.items()},
        "object_store": {"bytes_used": 5 * MIB},
        "cache": {"entries": 2, "bytes": cache_bytes, "replicas": {"r1": {"entries": 2, "bytes": cache_bytes, "max_entries": 4, "max_bytes": 64 * MIB}}},
        "video": {"sessions": sessions, "bytes": sessions * MIB, "max_sessions": 8, "max_bytes": 64 * MIB},
    }


def _run(cache_bytes_at_end: int = 10 * MIB) -> dict:
    """An hour of load from t=0: the encoder grows 1 % of 1000 MiB per hour, the ingress is flat; after
    the load (t=3600) the video sessions reach 0 at t=3630."""
    samples = [_sample(0.0, "baseline", {"ImageEncoder:1": 1000 * MIB, "Ingress:2": 500 * MIB}, 0)]
    for t in range(30, 3601, 30):
        grow = int(1000 * MIB * 0.01 * t / 3600)
        samples.append(_sample(float(t), "load", {"ImageEncoder:1": 1000 * MIB + grow, "Ingress:2": 500 * MIB}, 2))
    samples.append(_sample(3615.0, "cooldown", {"ImageEncoder:1": 1010 * MIB, "Ingress:2": 500 * MIB}, 1))
    samples.append(_sample(3630.0, "cooldown", {"ImageEncoder:1": 1010 * MIB, "Ingress:2": 500 * MIB}, 0))
    samples.append(_sample(3635.0, "after", {"ImageEncoder:1": 1010 * MIB, "Ingress:2": 505 * MIB}, 0, cache_bytes_at_end))

    def rec(status: int, error: str | None, start: float) -> dict:
        return {"kind": "x", "status": status, "start_s": start, "end_s": start + 1.0, "timing_ms": {}, "error": error}

    records = [
        rec(200, None, 100.0),
        rec(503, "unavailable", 1082.0),  # inside the MaskDecoder kill's window (1080 .. 1080 + 10 + 30)
        rec(500, "internal", 2000.0),  # outside every window
        rec(0, "ReadTimeout: timed out", 2100.0),
        rec(0, "ConnectError: refused", 2200.0),
        rec(404, "session_lost", 2170.0),
        rec(200, "session_lost", 2171.0),  # a propagation's stream ended by the error line
    ]
    plan = SoakPlan(duration_s=3600.0, warmup_s=WARMUP_S, session_ttl_s=60.0)
    return {
        "plan": {**plan.__dict__, "kills": [list(k) for k in KILLS]},
        "load_start_s": 0.0,
        "load_end_s": 3600.0,
        "kills": [{"deployment": "MaskDecoder", "pid": 9, "t_s": 1080.0, "replacement_after_s": 10.0}],
        "samples": samples,
        "records": records,
    }


def test_rss_slope_and_ratio():
    t = targets(_run(), Ledger(), [])
    slopes = t["rss_slope_pct_per_h"]["replicas"]
    # +10 MiB per hour on a mean of ~1005.8 MiB (the samples from the warm-up on)
    assert slopes["ImageEncoder:1"]["pct_per_h"] == pytest.approx(100 * 10 / 1005.83, rel=1e-3)
    assert slopes["Ingress:2"]["pct_per_h"] == pytest.approx(0.0, abs=1e-9)
    assert slopes["ImageEncoder:1"]["samples"] == len(range(600, 3601, 30))
    ratios = t["rss_after_vs_warmup"]["replicas"]
    assert ratios["Ingress:2"]["ratio"] == pytest.approx(505 / 500)
    # the encoder's level after the warm-up is its median from t=600 to t=3600: 1000 + 10 * 2100/3600 MiB
    assert ratios["ImageEncoder:1"]["warmup_mib"] == pytest.approx(1000 + 10 * 2100 / 3600, abs=1e-3)


def test_sessions_cache_and_object_store():
    t = targets(_run(), Ledger(), [])
    assert t["sessions"] == {"at_load_end": 2, "after": 0, "zero_after_load_s": 30.0, "ttl_s": 60.0}
    assert t["cache"]["within_bounds"] is True
    assert t["object_store"] == {"baseline_bytes": 5 * MIB, "max_load_bytes": 5 * MIB, "after_bytes": 5 * MIB}
    assert targets(_run(cache_bytes_at_end=65 * MIB), Ledger(), [])["cache"]["within_bounds"] is False


def test_examples_lost_and_deleted_but_listed():
    ledger = Ledger(added=["a", "b", "c", "d"], deleted=["c"], delete_unknown=["d"])
    assert targets(_run(), ledger, ["a", "c"])["examples"] == {"listing_ok": True, "lost": 1, "deleted_but_listed": 1}
    assert targets(_run(), ledger, ["a", "b"])["examples"] == {"listing_ok": True, "lost": 0, "deleted_but_listed": 0}
    assert targets(_run(), ledger, None)["examples"]["lost"] is None


def test_failures_by_window():
    s = targets(_run(), Ledger(), [])["status"]
    assert s["5xx"] == {"in_kill_windows": {"503 unavailable": 1}, "outside": {"500 internal": 1}}
    assert s["5xx_outside_kill_windows"] == 1
    assert s["timeouts"] == 1 and s["connection_errors"] == 1 and s["session_lost"] == 2
    assert s["other_failures"]["outside"] == {"0 ReadTimeout": 1, "0 ConnectError": 1, "404 session_lost": 1, "200 session_lost": 1}
