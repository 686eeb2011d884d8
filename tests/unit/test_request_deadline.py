"""serve_app.ingress.deadlines: the X-Request-Timeout header, capped by limits.request_timeout_s, and the
shipped configs' limit, which stays within Serve's own http_options.request_timeout_s."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.errors import DeadlineExceeded
from serve_app.config import AppArgs
from serve_app.ingress.deadlines import TIMEOUT_HEADER, check_deadline, parse_timeout
from serve_app.ingress.errors import ApiError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(("raw", "want"), [(None, 120.0), ("10", 10.0), (" 0.05 ", 0.05), ("1e-3", 0.001), ("600", 120.0)])
def test_the_header_is_capped_by_the_service_limit(raw, want):
    assert parse_timeout(raw, 120.0) == want


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "", "nan", "inf", "1,5", "0x10"])
def test_a_bad_header_is_422_naming_it(raw):
    with pytest.raises(ApiError) as info:
        parse_timeout(raw, 120.0)
    err = info.value
    assert (err.status, err.code, err.field) == (422, "invalid_request", TIMEOUT_HEADER)
    assert err.message.startswith(f"{TIMEOUT_HEADER}: ")


def test_a_deadline_past_before_a_send_is_refused():
    check_deadline(None, "the encode", clock=lambda: 5.0)
    check_deadline(5.5, "the encode", clock=lambda: 5.0)
    with pytest.raises(DeadlineExceeded) as info:
        check_deadline(5.0, "the encode", clock=lambda: 5.25)
    assert info.value.retry_after_s == 1 and "0.250 s ago, before the encode" in info.value.message


def test_the_limit_is_validated():
    assert AppArgs().limits.request_timeout_s == 120.0
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValueError):
            AppArgs.model_validate({"limits": {"request_timeout_s": bad}})


def _serve_configs():
    for path in sorted(CONFIGS.glob("serve*.yaml")):
        yield path.name, yaml.safe_load(path.read_text())
    manifest = yaml.safe_load((CONFIGS / "kuberay" / "rayservice.yaml").read_text())
    yield "rayservice.yaml", yaml.safe_load(manifest["spec"]["serveConfigV2"])


@pytest.mark.parametrize(("name", "config"), list(_serve_configs()), ids=lambda v: v if isinstance(v, str) else "")
def test_the_shipped_limit_is_within_serve_s_own_timeout(name, config):
    serve_timeout = config["http_options"]["request_timeout_s"]
    for app in config["applications"]:
        limit = AppArgs.model_validate(app["args"]).limits.request_timeout_s
        assert 0 < limit <= serve_timeout, (name, limit, serve_timeout)
