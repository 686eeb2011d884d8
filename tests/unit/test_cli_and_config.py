"""CLI prompt building and parsing, batch/thread settings, app args and the shipped Serve configs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from deployments.runtime.replica import set_torch_threads
from deployments.runtime.serve_batching import check_batch_config
from models.registry import get_model_spec, list_models
from serve_app.cli.flags import build_prompts, parse_box, parse_point
from serve_app.cli.main import make_parser
from serve_app.config import AppArgs
from serve_app.ingress.schemas import SegmentRequest

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = {"Ingress", "ImageEncoder", "MaskDecoder", "Fader", "Embedder", "Retriever", "VideoSegmenter"}

# --- CLI ---------------------------------------------------------------------------------------


def test_build_prompts_nothing():
    assert build_prompts([], []) == []


def test_build_prompts_one_box():
    assert build_prompts([[1, 2, 3, 4]], []) == [{"box_xyxy": [1, 2, 3, 4]}]


def test_build_prompts_points_only():
    pts = [[1.0, 2.0, 1], [3.0, 4.0, 0]]
    assert build_prompts([], pts) == [{"points": pts}]


def test_build_prompts_first_box_with_points_then_more_boxes():
    boxes = [[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]]
    pts = [[3.0, 3.0, 1], [8.0, 8.0, 0]]
    prompts = build_prompts(boxes, pts)
    assert prompts == [
        {"box_xyxy": [0, 0, 10, 10], "points": pts},
        {"box_xyxy": [5, 5, 20, 20]},
        {"box_xyxy": [1, 1, 2, 2]},
    ]
    # and the service accepts what the CLI sends
    req = SegmentRequest.model_validate({"prompts": prompts, "mask_format": "rle"})
    assert len(req.prompts) == 3


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,2,3,4", [1.0, 2.0, 3.0, 4.0]),
        ("0.5, 1.5 ,2,3e2", [0.5, 1.5, 2.0, 300.0]),
        ("-1,0,1,2", [-1.0, 0.0, 1.0, 2.0]),
    ],
)
def test_parse_box(text, expected):
    assert parse_box(text) == expected


@pytest.mark.parametrize("text", ["", "1,2,3", "1,2,3,4,5", "a,b,c,d", "1;2;3;4", "1,2,,4"])
def test_parse_box_errors(text):
    with pytest.raises(argparse.ArgumentTypeError, match="box must be x0,y0,x1,y1"):
        parse_box(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10,20", [10.0, 20.0, 1]),
        ("10,20,fg", [10.0, 20.0, 1]),
        ("10,20,bg", [10.0, 20.0, 0]),
        ("10,20,1", [10.0, 20.0, 1]),
        ("10,20,0", [10.0, 20.0, 0]),
        ("10.5,20.25, BG ", [10.5, 20.25, 0]),
        ("10,20,FG", [10.0, 20.0, 1]),
    ],
)
def test_parse_point(text, expected):
    out = parse_point(text)
    assert out == expected
    assert type(out[2]) is int


@pytest.mark.parametrize("text", ["", "10", "10,20,fg,1", "a,20", "10,b,fg", "10,20,2", "10,20,x", "10,20,"])
def test_parse_point_errors(text):
    with pytest.raises(argparse.ArgumentTypeError, match="point must be"):
        parse_point(text)


def test_parser_wires_box_and_point_types():
    args = make_parser().parse_args(
        ["segment", "--image", "x.jpg", "--box", "1,2,3,4", "--box", "5,6,7,8", "--point", "2,3", "--point", "4,5,bg"]
    )
    assert args.box == [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    assert args.point == [[2.0, 3.0, 1], [4.0, 5.0, 0]]
    assert args.multimask is None
    with pytest.raises(SystemExit):
        make_parser().parse_args(["segment", "--image", "x.jpg", "--box", "1,2,3"])


@pytest.mark.parametrize(
    "argv, name, clip",
    [
        (["models", "pull"], None, False),
        (["models", "pull", "sam2.1_hiera_large"], "sam2.1_hiera_large", False),
        (["models", "pull", "--clip"], None, True),
        (["models", "pull", "sam2.1_hiera_large", "--clip"], "sam2.1_hiera_large", True),
        (["models", "pull", "--clip", "sam2.1_hiera_large"], "sam2.1_hiera_large", True),
    ],
)
def test_models_pull_clip_flag(argv, name, clip):
    args = make_parser().parse_args(argv)
    assert (args.action, args.name, args.clip) == ("pull", name, clip)
    with pytest.raises(SystemExit):  # --clip takes no value and belongs to `pull` only
        make_parser().parse_args(["models", "list", "--clip"])


# --- deployments.runtime.replica ------------------------------------------------------------------------


def test_check_batch_config_accepts():
    assert check_batch_config({"max_batch_size": 4, "batch_wait_timeout_s": 0.01}) == (4, 0.01)
    assert check_batch_config({}) == (1, 0.0)
    assert check_batch_config({"max_batch_size": 1, "batch_wait_timeout_s": 0}) == (1, 0.0)


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": -3}, "max_batch_size"),
        ({"batch_wait_timeout_s": -0.001}, "batch_wait_timeout_s"),
        ({"batch_wait_timeout_s": float("nan")}, "batch_wait_timeout_s"),
        ({"max_batch_size": 4, "batch_size": 4}, "unknown user_config keys"),
        ({"wait": 1}, "unknown user_config keys"),
    ],
)
def test_check_batch_config_rejects(cfg, match):
    with pytest.raises(ValueError, match=match):
        check_batch_config(cfg)


@pytest.mark.parametrize(
    "cfg",
    [{"max_batch_size": None}, {"batch_wait_timeout_s": None}, {"max_batch_size": 2.5}, {"max_batch_size": "abc"}],
    ids=["size-null", "wait-null", "size-2.5", "size-text"],
)
def test_check_batch_config_rejects_non_numbers_with_value_error(cfg):
    """BUG (deployments/common.py:62-63): ``int(None)``/``float(None)`` raise TypeError, not the documented
    ValueError, and ``int(2.5)`` silently truncates a non-integer batch size to 2 instead of rejecting it."""
    with pytest.raises(ValueError):
        check_batch_config(cfg)


def test_set_torch_threads():
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert set_torch_threads(None) == 1  # None keeps what is in force
        with pytest.raises(ValueError):
            set_torch_threads(0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# --- AppArgs ------------------------------------------------------------------------------------


def test_app_args_defaults():
    args = AppArgs.model_validate({})
    assert args.model_id == "sam2.1_hiera_tiny"
    assert args.weights is None and args.checkpoint is None and args.seed is None


def test_app_args_unknown_model_lists_names():
    with pytest.raises(ValidationError) as info:
        AppArgs.model_validate({"model_id": "sam2.1_hiera_huge"})
    msg = str(info.value)
    for name in list_models("sam2"):
        assert name in msg


@pytest.mark.parametrize(
    "args",
    [
        {"modle_id": "sam2.1_hiera_tiny"},
        {"encoder": {"device": "cpu", "threads": 2}},
        {"cache": {"max_entries": 1, "entries": 2}},
        {"limits": {"max_pixels": 10}},
    ],
)
def test_app_args_unknown_keys_rejected(args):
    with pytest.raises(ValidationError) as info:
        AppArgs.model_validate(args)
    assert info.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    "args",
    [
        {"weights": "cloud"},
        {"encoder": {"torch_threads": 0}},
        {"cache": {"max_entries": 0}},
        {"limits": {"max_image_pixels": 0}},
        {"readiness_timeout_s": 0},
        {"threads_per_node": 1},
        {"threads_per_node": 2, "encoder": {"torch_threads": 2}},
        {"threads_per_node": 4, "encoder": {"torch_threads": 2}, "decoder": {"torch_threads": 3}},
        {"threads_per_node": 2, "clip": {"torch_threads": 3}},
    ],
)
def test_app_args_bad_values_rejected(args):
    with pytest.raises(ValidationError):
        AppArgs.model_validate(args)


@pytest.mark.parametrize(
    "args, encoder, decoder",
    [
        ({"threads_per_node": 2}, 1, 1),
        ({"threads_per_node": 8}, 6, 2),
        ({"threads_per_node": 4, "encoder": {"torch_threads": 2}}, 2, 2),
        ({"threads_per_node": 4, "decoder": {"torch_threads": 1}}, 3, 1),
    ],
)
def test_threads_per_node_shares(args, encoder, decoder):
    cfg = AppArgs.model_validate(args)
    assert (cfg.encoder.torch_threads, cfg.decoder.torch_threads) == (encoder, decoder)
    assert cfg.encoder.torch_threads + cfg.decoder.torch_threads <= cfg.threads_per_node
    assert cfg.clip.torch_threads == cfg.video.torch_threads == cfg.threads_per_node


def test_threads_per_node_unset_keeps_stage_threads():
    cfg = AppArgs.model_validate({"encoder": {"torch_threads": 2}, "decoder": {"torch_threads": 2}})
    assert (cfg.encoder.torch_threads, cfg.decoder.torch_threads, cfg.clip.torch_threads) == (2, 2, None)


# --- shipped Serve configs -----------------------------------------------------------------------


def _config(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / name).read_text())


def _samgraph_app(cfg: dict) -> dict:
    apps = [a for a in cfg["applications"] if a.get("import_path") == "serve_app.app:build_app"]
    assert len(apps) == 1
    return apps[0]


CONFIGS = ["serve.yaml", "serve.gpu.yaml", "serve.sam3.yaml"]


def _app_deployments(args: AppArgs) -> set[str]:
    """The deployment names ``build_app`` makes for ``args`` (each served model's encoder and decoder; the
    video segmenter only with a video model)."""
    from serve_app.app import stage_names

    names = {"Ingress", "Fader", "Embedder", "Retriever"}
    for i, m in enumerate(args.served_models()):
        names.update(stage_names(i, m.model_id))
    return names | ({"VideoSegmenter"} if args.video_model() is not None else set())


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_valid(name):
    """Every shipped config's args validate, and it sizes exactly the deployments build_app makes."""
    cfg = _config(name)
    app = _samgraph_app(cfg)
    args = AppArgs.model_validate(app.get("args") or {})
    assert all(get_model_spec(m.model_id) for m in args.served_models())
    deployments = app.get("deployments") or []
    names = [d["name"] for d in deployments]
    assert set(names) == _app_deployments(args), f"sized {sorted(names)}, built {sorted(_app_deployments(args))}"
    assert len(names) == len(set(names))
    for d in deployments:
        if "user_config" in d:
            assert d["name"] != "Ingress"  # every stage batches; the ingress does not
            check_batch_config(d["user_config"])


def _max_replicas(d: dict) -> int:
    if "autoscaling_config" in d:
        return int(d["autoscaling_config"]["max_replicas"])
    return int(d.get("num_replicas", 1))


@pytest.mark.parametrize("name", ["serve.yaml", "serve.sam3.yaml"])
def test_cpu_config_fits_two_cores(name):
    app = _samgraph_app(_config(name))
    args = AppArgs.model_validate(app["args"])
    assert all(m.encoder.device == "cpu" and m.decoder.device == "cpu" for m in args.served_models())
    assert args.video.device == "cpu" or args.video_model() is None
    deployments = app["deployments"]
    cpus = {d["name"]: float(d["ray_actor_options"]["num_cpus"]) for d in deployments}
    assert set(cpus) == _app_deployments(args)
    for name, n in cpus.items():
        assert 0 < n <= 1, f"{name} num_cpus {n}"
    total = sum(float(d["ray_actor_options"]["num_cpus"]) * _max_replicas(d) for d in deployments)
    assert round(total, 6) <= 2, total  # every autoscaling stage can add its replicas on 2 cores


# Stages kept at one replica, and why (the configs say so next to each): embedded Qdrant allows one client
# per folder; on CPU one encode or one clip already takes both cores, and on one 2-core machine a second
# decoder replica adds no cores but splits its click batches and moves images (measured slower).
ONE_REPLICA = {
    "serve.yaml": {"Retriever", "ImageEncoder", "VideoSegmenter", "MaskDecoder"},
    "serve.gpu.yaml": {"Retriever"},
    # SAM 3's encoder and decoder take both cores for minutes per image; one Fader and Embedder suffice
    # for MobileSAM's text ranking
    "serve.sam3.yaml": {"Retriever", "ImageEncoder", "MaskDecoder", "ImageEncoder_mobile_sam", "Fader", "Embedder"},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_bounds_queues_and_replicas(name):
    """Bounded queues everywhere; the stateless ingress and the stages that can scale autoscale."""
    from ray.serve.config import AutoscalingConfig, BackpressureConfig
    from ray.serve.schema import ServeDeploySchema

    cfg = _config(name)
    ServeDeploySchema.model_validate(cfg)  # every key is one Serve knows
    for d in _samgraph_app(cfg)["deployments"]:
        assert d["max_ongoing_requests"] >= 1, d["name"]
        assert d["max_queued_requests"] >= 1, f"{d['name']}: unbounded queue"
        assert BackpressureConfig.model_validate(d["backpressure_config"]).retry_after_s > 0, d["name"]
        if d["name"] in ONE_REPLICA[name]:
            assert d.get("num_replicas") == 1 and "autoscaling_config" not in d, d["name"]
            continue
        auto = d["autoscaling_config"]
        assert {
            "min_replicas",
            "max_replicas",
            "target_ongoing_requests",
            "upscale_delay_s",
            "downscale_delay_s",
        } <= set(auto), d["name"]
        parsed = AutoscalingConfig.model_validate(auto)
        assert 1 <= parsed.min_replicas < parsed.max_replicas, d["name"]
        # a replica is not refused work before the autoscaler sees it above its target
        assert parsed.target_ongoing_requests <= d["max_ongoing_requests"], d["name"]


def test_cpu_config_scales_some_stages_on_two_cores():
    deployments = _samgraph_app(_config("serve.yaml"))["deployments"]
    scaling = {d["name"] for d in deployments if _max_replicas(d) > 1}
    assert scaling == {"Ingress", "Fader", "Embedder"}


@pytest.mark.parametrize("name", CONFIGS)
def test_decoder_routes_by_image_with_strict_affinity(name):
    """Calls about an image reach its owner: every model's MaskDecoder deploys Serve's consistent-hash
    router, with no fallback replica (an owner at capacity answers 503 instead of another replica encoding
    again)."""
    from ray.serve.config import RequestRouterConfig

    from deployments.decoder import IMAGE_AFFINITY

    decoders = [d for d in _samgraph_app(_config(name))["deployments"] if d["name"].startswith("MaskDecoder")]
    assert decoders
    for decoder in decoders:
        _check_image_affinity(RequestRouterConfig.model_validate(decoder["request_router_config"]), IMAGE_AFFINITY)


def _check_image_affinity(router, IMAGE_AFFINITY) -> None:
    assert router.request_router_class == "deployments.runtime.affinity.KeyAffinityRouter"
    assert router.request_router_kwargs == {"num_fallback_replicas": 0}
    assert (router.request_router_class, router.request_router_kwargs) == (
        IMAGE_AFFINITY.request_router_class,
        IMAGE_AFFINITY.request_router_kwargs,
    )  # the deployment's own default (what build_app deploys without a config) is the same


@pytest.mark.parametrize("name", ["serve.yaml", "serve.gpu.yaml"])
def test_video_routes_by_session_with_strict_affinity(name):
    """Calls about a video session reach the replica holding it: the same router, no fallback replica,
    in the configs and in the deployment's own default."""
    from ray.serve.config import RequestRouterConfig

    from deployments.video import SESSION_AFFINITY

    video = next(d for d in _samgraph_app(_config(name))["deployments"] if d["name"] == "VideoSegmenter")
    router = RequestRouterConfig.model_validate(video["request_router_config"])
    assert (router.request_router_class, router.request_router_kwargs) == (
        "deployments.runtime.affinity.KeyAffinityRouter",
        {"num_fallback_replicas": 0},
    )
    assert (router.request_router_class, router.request_router_kwargs) == (SESSION_AFFINITY.request_router_class, SESSION_AFFINITY.request_router_kwargs)


def test_samgraph_serve_fails_fast_when_the_weights_cannot_be_had(monkeypatch, capsys):
    """The README's first command pre-flights: weights that cannot be had exit 1 with the reason and the
    setting to change, before Ray or `serve run` start."""
    from serve_app.cli import main as cli

    def no_exec(*argv):
        raise AssertionError(f"serve run was started: {argv}")

    monkeypatch.setattr(cli.os, "execvp", no_exec)
    monkeypatch.setenv("SAMGRAPH_WEIGHTS", "file")
    monkeypatch.setenv("SAMGRAPH_SAM2_CHECKPOINT", "/nonexistent/sam2.1_hiera_tiny.pt")
    monkeypatch.setenv("SAMGRAPH_CLIP_CHECKPOINT", "/nonexistent/open_clip.bin")
    assert cli.main(["serve", "--config", str(REPO / "configs" / "serve.yaml")]) == 1
    err = capsys.readouterr().err
    assert "/nonexistent/sam2.1_hiera_tiny.pt" in err and "SAMGRAPH_SAM2_CHECKPOINT" in err and "does not exist" in err


def test_samgraph_serve_runs_the_serve_of_its_own_environment(monkeypatch, tmp_path):
    """`.venv/bin/samgraph serve` (the README's command) works without the venv on PATH: it runs Ray's
    `serve` installed beside its interpreter."""
    import sys

    from serve_app.cli import main as cli

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("SAMGRAPH_WEIGHTS", "random")
    monkeypatch.setenv("SAMGRAPH_DATA_DIR", str(tmp_path))
    ran = []
    monkeypatch.setattr(cli.os, "execvp", lambda path, argv: ran.append((path, argv)))
    assert cli.main(["serve", "--config", str(REPO / "configs" / "serve.yaml")]) == 0
    [(path, argv)] = ran
    assert path == str(Path(sys.executable).parent / "serve") and argv[1:] == ["run", str(REPO / "configs" / "serve.yaml")]
