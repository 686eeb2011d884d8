"""deployments.runtime.exports: exports written atomically once, verified on every load, refused when a file
is missing, truncated or altered; deployments.runtime.stage_runtime: what a stage runs on a given CPU, each
fallback logged once."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deployments.runtime.cpu import cpu_info, flags_of_interest
from deployments.runtime.exports import (
    MANIFEST_FILE,
    ExportError,
    ensure_export,
    export_dir_for,
    verify_export,
    weights_identity,
    write_export,
)
from deployments.runtime.replica import fallback_logger
from deployments.runtime.stage_runtime import asked_settings, choose_runtime
from deployments.runtime.weights import WeightsError
from models.runtime import RUNTIMES, RuntimeSettings
from models.segmenter import DECODER_FILE, ENCODER_FILE

REPO = Path(__file__).resolve().parents[2]
FILES = {ENCODER_FILE: b"encoder-graph-" * 1000, DECODER_FILE: b"decoder-graph-" * 100}
META = {"model_id": "mobile_sam", "family": "mobile_sam", "weights": "sha256:" + "ab" * 32, "opset": 17}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_round_trip_records_and_verifies_each_file(tmp_path):
    written = write_export(tmp_path / "x", FILES, META)
    manifest = json.loads((tmp_path / "x" / MANIFEST_FILE).read_text())
    assert manifest["model_id"] == "mobile_sam" and manifest["opset"] == 17 and manifest["weights"] == META["weights"]
    assert manifest["files"] == {n: {"sha256": _digest(b), "size_bytes": len(b)} for n, b in FILES.items()}
    again = verify_export(tmp_path / "x", model_id="mobile_sam")
    assert again.verified and again.files == written.files
    assert again.path(ENCODER_FILE).read_bytes() == FILES[ENCODER_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no temporary directory left behind


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _flip_byte(d / ENCODER_FILE), r"encoder\.onnx: SHA-256 [0-9a-f]{64} differs from the manifest's"),
        (lambda d: _truncate(d / DECODER_FILE), r"decoder\.onnx: 1300 bytes where the manifest records 1400 \(truncated"),
        (lambda d: (d / ENCODER_FILE).unlink(), r"encoder\.onnx: missing \(the manifest lists it\)"),
        (lambda d: (d / MANIFEST_FILE).unlink(), r"export\.json: missing"),
        (lambda d: (d / MANIFEST_FILE).write_text("{not json"), r"export\.json: unreadable"),
    ],
    ids=["tampered", "truncated", "file-missing", "manifest-missing", "manifest-garbled"],
)
def test_damaged_export_is_refused_naming_the_file(tmp_path, damage, message):
    directory = tmp_path / "x"
    write_export(directory, FILES, META)
    damage(directory)
    with pytest.raises(ExportError, match=message) as info:
        verify_export(directory, cached=True)
    assert isinstance(info.value, WeightsError)  # start-up fails as for bad weights
    assert f"delete {directory}" in str(info.value)  # and says how to get a good one


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))  # same size: only the digest tells


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def test_an_export_of_another_model_is_refused(tmp_path):
    write_export(tmp_path / "x", FILES, META)
    with pytest.raises(ExportError, match="is an export of 'mobile_sam', not 'sam2.1_hiera_tiny'"):
        verify_export(tmp_path / "x", model_id="sam2.1_hiera_tiny")


def test_a_user_export_without_manifest_is_hashed_not_verified(tmp_path):
    """SharpAI's layout (two .onnx files, no manifest): accepted only when a manifest is not required, with the
    digests computed; a missing file is still refused."""
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ExportError, match="export.json: missing"):
        verify_export(tmp_path)
    export = verify_export(tmp_path, require_manifest=False)
    assert not export.verified and export.manifest is None
    assert {n: f.sha256 for n, f in export.files.items()} == {n: _digest(b) for n, b in FILES.items()}
    assert export.describe()["files"][DECODER_FILE] == {"sha256": _digest(FILES[DECODER_FILE]), "size_bytes": 1400}
    (tmp_path / DECODER_FILE).unlink()
    with pytest.raises(ExportError, match=r"decoder\.onnx: missing"):
        verify_export(tmp_path, require_manifest=False)


def test_ensure_exports_once_then_reuses(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return FILES

    first, wrote = ensure_export(tmp_path / "x", make, META)
    second, wrote_again = ensure_export(tmp_path / "x", make, META)
    assert (wrote, wrote_again, len(calls)) == (True, False, 1)
    assert second.files == first.files and second.verified
    _flip_byte(tmp_path / "x" / DECODER_FILE)
    with pytest.raises(ExportError, match="decoder.onnx"):  # a damaged cache entry is not silently re-used
        ensure_export(tmp_path / "x", make, META)
    assert len(calls) == 1


def test_concurrent_ensure_in_threads_exports_once(tmp_path):
    calls, results, errors = [], [], []

    def make():
        calls.append(1)
        time.sleep(0.3)  # long enough for the others to arrive while the export is under way
        return FILES

    def replica():
        try:
            results.append(ensure_export(tmp_path / "x", make, META))
        except Exception as e:  # pragma: no cover (reported below)
            errors.append(e)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(results) == 4 and len(calls) == 1
    assert sorted(w for _, w in results) == [False, False, False, True]
    assert all(e.verified and e.files == results[0][0].files for e, _ in results)


_REPLICA = """
import sys, time
from deployments.runtime.exports import ensure_export
from models.segmenter import DECODER_FILE, ENCODER_FILE

def make():
    print("exporting", flush=True)
    time.sleep(1.0)
    return {ENCODER_FILE: b"e" * 300000, DECODER_FILE: b"d" * 3000}

export, wrote = ensure_export(sys.argv[1], make, {"model_id": "mobile_sam"})
print("wrote" if wrote else "reused", export.files[ENCODER_FILE].sha256)
"""


def test_concurrent_replica_processes_export_once(tmp_path):
    """Two processes starting together (as two replicas on one node): one exports, the other waits for it and
    loads the same verified files; neither sees a partial directory."""
    target = tmp_path / "exports" / "x"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _REPLICA, str(target)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(o.count("exporting") for o in outs) == 1
    assert sorted(o[-2] for o in outs) == ["reused", "wrote"] and outs[0][-1] == outs[1][-1]
    assert sorted(p.name for p in target.parent.iterdir()) == ["x", "x.lock"]


def test_export_dirs_name_model_weights_and_opset(tmp_path):
    sha = "sha256:" + "0123456789abcdef" * 4
    assert export_dir_for("sam2.1_hiera_tiny", sha, 17, tmp_path, layout=2) == (
        tmp_path / "exports" / "sam2.1_hiera_tiny" / "sha256-0123456789abcdef-opset17-layout2"
    )
    assert weights_identity("random", 3) == "random:seed=3" != weights_identity("random", 4)
    assert export_dir_for("mobile_sam", weights_identity("random", 3), 17, tmp_path).name == "random-seed3-opset17-layout1"
    with pytest.raises(ValueError, match="seed"):
        weights_identity("random")


# ---------------------------------------------------------------------------------------- stage runtimes
NO_BF16 = frozenset({"fpu", "avx2", "fma", "avx512f"})  # an AVX2/AVX-512 CPU without AVX-512 BF16 or AMX
AMX = frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"})


def test_bf16_on_a_cpu_without_native_bf16_runs_fp32_with_one_log_line(caplog):
    asked = asked_settings({"runtime": "torch", "precision": "bf16"}, None, "cpu", 2)
    with caplog.at_level(logging.WARNING, logger="samgraph.deployments"):
        chosen = choose_runtime(("torch",), asked, "sam2.1_hiera_tiny encoder", fallback_logger("ImageEncoder"), NO_BF16)
    assert (chosen.in_force.runtime, chosen.in_force.precision) == ("torch", "fp32")
    assert len(caplog.records) == 1 and "bf16 requested on torch" in caplog.records[0].getMessage()
    assert chosen.fallbacks == [caplog.records[0].getMessage().split("falls back: ", 1)[1]]
    state = chosen.state()
    assert state["requested"] == {"runtime": "torch", "precision": "bf16"} and state["cpu_flags"] == ["fma", "avx2", "avx512f"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="samgraph.deployments"):
        on_amx = choose_runtime(("torch",), asked, "sam2.1_hiera_tiny encoder", fallback_logger("ImageEncoder"), AMX)
    assert on_amx.in_force.precision == "bf16" and not on_amx.fallbacks and not caplog.records


def test_a_runtime_not_installed_runs_torch_with_one_log_line(caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    asked = asked_settings({"runtime": "onnxruntime", "precision": "fp32"}, None, "cpu", None)
    with caplog.at_level(logging.WARNING, logger="samgraph.deployments"):
        chosen = choose_runtime(tuple(RUNTIMES), asked, "m decoder", fallback_logger("MaskDecoder"), NO_BF16)
    assert (chosen.in_force.runtime, chosen.in_force.precision) == ("torch", "fp32")
    assert len(caplog.records) == 1
    assert "runtime 'onnxruntime' is not available (onnxruntime is not importable" in caplog.records[0].getMessage()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_tensorrt_fp16_without_tensorrt_falls_back_to_torch_fp32(device):
    """The GPU config's encoder where TensorRT cannot run (no CUDA device, or an onnxruntime without the
    TensorRT provider, as here): torch; fp16 is not torch's -> fp32; one message each."""
    asked = RuntimeSettings(runtime="tensorrt", precision="fp16", device=device)
    chosen = choose_runtime(tuple(RUNTIMES), asked, "m encoder", None, AMX)
    assert (chosen.in_force.runtime, chosen.in_force.precision) == ("torch", "fp32")
    assert len(chosen.fallbacks) == 2 and "runtime 'tensorrt' is not available" in chosen.fallbacks[0]
    assert "running fp32" in chosen.fallbacks[1]


@pytest.mark.parametrize("name", ["serve.yaml", "serve.gpu.yaml", "serve.sam3.yaml"])
def test_shipped_configs_resolve_on_this_machine(name):
    """Every stage of every shipped config resolves here (a CPU machine, no TensorRT) to something torch or
    an installed runtime can run, without an error: the GPU config's TensorRT encoder falls back cleanly."""
    import yaml

    from models.registry import family_of
    from serve_app.config import AppArgs

    cfg = yaml.safe_load((REPO / "configs" / name).read_text())
    args = AppArgs.model_validate(next(a for a in cfg["applications"] if a["import_path"] == "serve_app.app:build_app")["args"])
    for m in args.served_models():
        for stage in ("encoder", "decoder"):
            s = getattr(m, stage)
            asked = asked_settings(s.runtime_settings(), s.accel(), "cuda" if s.device.startswith("cuda") else "cpu", None)
            chosen = choose_runtime(family_of(m.model_id).runtimes, asked, f"{m.model_id} {stage}")
            assert chosen.in_force.runtime in ("torch", "onnxruntime", "openvino")
            assert chosen.in_force.precision in ("fp32", "bf16")
            assert len(chosen.fallbacks) <= 2


def test_a_family_on_torch_only_runs_torch():
    asked = asked_settings({"runtime": "openvino", "precision": "fp32"}, None, "cpu", None)
    chosen = choose_runtime(("torch",), asked, "sam3 encoder", None, AMX)
    assert chosen.in_force.runtime == "torch" and chosen.fallbacks == [
        "sam3 encoder: runtime 'openvino' is not available for this model family; running torch"
    ]


def test_a_graph_the_runtime_cannot_load_falls_back_but_a_tampered_export_is_refused(tmp_path, caplog):
    """A user's export whose files ONNX Runtime cannot parse: the stage runs torch fp32, with one log line
    naming the runtime; the same files under a manifest they do not match: the stage refuses to start."""
    from deployments.runtime.model_weights import load_model
    from deployments.runtime.stage_runtime import build_stage
    from deployments.runtime.weights import WeightsSource

    for name, data in FILES.items():  # not ONNX
        (tmp_path / name).write_bytes(data)
    weights = {"kind": "random", "seed": 0}
    loaded = load_model("mobile_sam", WeightsSource(**weights))
    runtime = {"runtime": "onnxruntime", "precision": "fp32", "export_dir": str(tmp_path)}
    with caplog.at_level(logging.WARNING, logger="samgraph.deployments"):
        part, chosen, accel = build_stage("decoder", loaded, "cpu", 1, None, runtime, weights, fallback_logger("MaskDecoder"), False)
    assert (chosen.in_force.runtime, chosen.in_force.precision, chosen.export) == ("torch", "fp32", None)
    logged = [r.getMessage() for r in caplog.records if r.name == "samgraph.deployments" and r.levelno >= logging.WARNING]
    assert len(logged) == 1 and "onnxruntime could not run the ONNX graph" in logged[0]
    assert part.accel_state()["compiler"] == "eager" and chosen.state()["requested"]["runtime"] == "onnxruntime"
    write_export(tmp_path / "x", FILES, META)
    _flip_byte(tmp_path / "x" / ENCODER_FILE)
    with pytest.raises(ExportError, match="encoder.onnx"):
        build_stage("encoder", loaded, "cpu", 1, None, {**runtime, "export_dir": str(tmp_path / "x")}, weights)


def test_without_runtime_settings_a_stage_asks_torch_at_its_accel_precision():
    assert asked_settings(None, {"precision": "bf16"}, "cpu", 1) == RuntimeSettings("torch", "bf16", "cpu", 1)
    assert asked_settings(None, None, "cpu", None) == RuntimeSettings()


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    text = "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: fpu\n"
    (tmp_path / "cpuinfo").write_text(text)
    info = cpu_info(tmp_path / "cpuinfo")
    assert info == {"model": "Test CPU", "flags": frozenset({"fpu", "avx2", "avx512_bf16", "amx_tile"})}
    assert flags_of_interest(info["flags"]) == ["avx2", "avx512_bf16", "amx_tile"]
    assert cpu_info(tmp_path / "absent")["flags"] == frozenset()


# ------------------------------------------------------------------- the CLI export and the in-process API
def test_cli_export_arguments():
    from serve_app.cli.main import make_parser

    args = make_parser().parse_args(["models", "export", "mobile_sam", "--format", "onnx", "--weights", "random", "--seed", "2"])
    assert (args.action, args.name, args.format, args.out, args.weights, args.seed) == ("export", "mobile_sam", "onnx", None, "random", 2)
    for argv in (["models", "export", "mobile_sam"], ["models", "export", "mobile_sam", "--format", "tflite"]):
        with pytest.raises(SystemExit):  # the format is required, and onnx is the one there is
            make_parser().parse_args(argv)


@pytest.mark.slow  # ~20 s on an idle 2-core machine (MobileSAM's export, CLIP, two encodes); the service test covers ORT
def test_cli_export_then_in_process_pipeline_runs_it(tmp_path, monkeypatch, capsys, truck_rgb):
    """``samgraph models export mobile_sam --format onnx --weights random --out DIR`` writes both graphs and a
    manifest (printing their SHA-256s and saying the weights are random); ``LocalPipeline.load`` with that
    ``export_dir`` and ``runtime: onnxruntime`` on both stages runs them (nothing exported again) and answers
    the masks the torch stages answer on the same weights."""
    from deployments.runtime.model_weights import load_model
    from deployments.runtime.stage_runtime import build_stage
    from deployments.runtime.weights import WeightsSource
    from models.prompts import Prompt, decoder_prompts
    from models.segmenter import DecodeRequest
    from serve_app.cli.main import main
    from serve_app.local import LocalPipeline
    from tests.conftest import TRUCK_BOX, mask_iou

    monkeypatch.setenv("SAMGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "export"
    assert main(["models", "export", "mobile_sam", "--format", "onnx", "--weights", "random", "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    export = verify_export(out, model_id="mobile_sam")
    assert export.manifest["weights"] == "random:seed=1" and export.manifest["opset"] == 17
    for name, f in export.files.items():
        assert f"{name}" in printed.out and f.sha256 in printed.out
    assert "RANDOM weights (seed 1)" in printed.err

    onnx = {"runtime": "onnxruntime", "precision": "fp32"}
    pipe = LocalPipeline.load("mobile_sam", weights="random", encoder_stage=onnx, decoder_stage=onnx, export_dir=str(out))
    assert {s: (r["runtime"], r["export"]["files"]["encoder.onnx"]["sha256"]) for s, r in pipe.runtimes.items()} == {
        s: ("onnxruntime", export.files[ENCODER_FILE].sha256) for s in ("encoder", "decoder")
    }
    assert not (tmp_path / "cache" / "exports").exists()  # the user's export ran; nothing exported again
    got = pipe.segment(truck_rgb, [Prompt(box_xyxy=TRUCK_BOX)], multimask_output=False)[0]

    weights = {"kind": "random", "seed": 1}
    loaded = load_model("mobile_sam", WeightsSource(**weights))
    encoder, _, _ = build_stage("encoder", loaded, "cpu", None, None, None, weights, free_unused=False)
    decoder, chosen, _ = build_stage("decoder", loaded, "cpu", None, None, None, weights, free_unused=False)
    assert chosen.in_force.runtime == "torch"
    h, w = truck_rgb.shape[:2]
    specs, _ = decoder_prompts([Prompt(box_xyxy=TRUCK_BOX)], w, h)
    want = decoder.predict_batch([DecodeRequest(encoder.encode(truck_rgb), specs, False)])[0][0]
    assert want.masks[0].any() and not want.masks[0].all()
    assert mask_iou(got.masks[0], want.masks[0]) >= 0.999
    np.testing.assert_allclose(got.predicted_iou, want.predicted_iou, atol=1e-4)
