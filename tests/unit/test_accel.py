"""models.accel: bf16 autocast, torch.compile and TensorRT options of the SAM 2 stages, and their fallbacks.

The compiled decoder must give the eager decoder's masks on the truck photo (random weights, box and click
prompts). Compiling the mask decoder with inductor took 40 s to 4.5 min (depending on the load) on 2
cores with an empty inductor cache, ~20 s with a warm one; compiling the image encoder took ~8 min on the
loaded machine, so that test is marked ``slow``.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch

from deployments.runtime.model_weights import load_state_dict
from models.accel import AccelSettings, accelerate, bf16_support, tensorrt_support
from models.prompts import PromptSpec
from models.sam2_decoder import Sam2MaskDecoder
from models.sam2_image import ImageFeatures, Sam2ImageEncoder, build_sam2_model
from tests.conftest import MODEL_ID, TRUCK_BOX, mask_iou

# A foreground and a background click: two prompt tokens like the box (two corners), so that the compiled
# decoder traces one graph for both prompts (each new shape is another compilation, ~10-60 s on 2 cores).
CLICKS = [[500, 375], [1125, 625]]
IOU_MIN = 0.999
PRED_IOU_TOL = 1e-4
BF16_IOU_MIN = 0.95  # bf16 has an 8-bit mantissa: logits near 0 may flip sign at a few edge pixels


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    state, _ = load_state_dict(tiny_checkpoint)
    return build_sam2_model(MODEL_ID, state)


@pytest.fixture(scope="module")
def eager_encoder(model):
    return Sam2ImageEncoder(model)


@pytest.fixture(scope="module")
def truck_features(eager_encoder, truck_rgb) -> ImageFeatures:
    return eager_encoder.encode(truck_rgb)


def _prompts() -> dict[str, PromptSpec]:
    return {
        "box": PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32)),
        "click": PromptSpec(point_coords=np.array(CLICKS, np.float32), point_labels=np.array([1, 0], np.int32)),
    }


@pytest.fixture(scope="module")
def eager_answers(model, truck_features):
    decoder = Sam2MaskDecoder(model)
    return {name: decoder.predict(truck_features, p, multimask_output=True) for name, p in _prompts().items()}


def _assert_same_masks(answers, reference, iou_min=IOU_MIN, pred_iou_tol=PRED_IOU_TOL):
    for name, ref in reference.items():
        got = answers[name]
        assert got.masks.shape == ref.masks.shape
        for c in range(ref.masks.shape[0]):
            assert mask_iou(got.masks[c], ref.masks[c]) >= iou_min, (name, c)
        np.testing.assert_allclose(got.predicted_iou, ref.predicted_iou, atol=pred_iou_tol)
    # the two prompts are really tested: non-empty, different masks
    best = {name: a.masks[int(np.argmax(a.predicted_iou))] for name, a in answers.items()}
    assert all(m.any() for m in best.values())
    assert mask_iou(best["box"], best["click"]) < 0.9


def _decode_all(decoder, features):
    return {name: decoder.predict(features, p, multimask_output=True) for name, p in _prompts().items()}


# ------------------------------------------------------------------ settings and support checks
def test_settings_validate():
    with pytest.raises(ValueError, match="precision"):
        AccelSettings(precision="fp16")
    with pytest.raises(ValueError, match="compile_mode"):
        AccelSettings(compile=True, compile_mode="fastest")
    assert AccelSettings().is_default and not AccelSettings(precision="bf16").is_default


def test_bf16_support_cpu_and_unknown_device():
    assert bf16_support("cpu") == (True, "")
    ok, why = bf16_support("meta")
    assert not ok and "meta" in why


def test_tensorrt_support_reasons(monkeypatch):
    ok, why = tensorrt_support("cpu")
    assert not ok and "CUDA" in why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import fails as when the extra is absent
    ok, why = tensorrt_support("cuda")
    assert not ok and "torch_tensorrt is not importable" in why and ".[tensorrt]" in why


# ------------------------------------------------------------------ fallbacks on a tiny function
def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def test_tensorrt_falls_back_to_compile(monkeypatch):
    messages = []
    call = accelerate(_double, "cpu", AccelSettings(tensorrt=True, compile=True, compile_backend="aot_eager"), messages.append)
    assert len(messages) == 1 and "TensorRT requested" in messages[0] and "torch.compile (aot_eager)" in messages[0]
    assert call.compiler == "aot_eager"
    torch.testing.assert_close(call(torch.ones(3)), torch.full((3,), 2.0))
    assert len(messages) == 1


def test_failing_compiled_call_falls_back_once_and_input_errors_propagate():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C compiler here")

    messages = []
    call = accelerate(_double, "cpu", AccelSettings(compile=True, compile_backend=broken_backend), messages.append, "f")
    assert call.compiler != "eager" and messages == []
    torch.testing.assert_close(call(torch.ones(3)), torch.full((3,), 2.0))  # re-run eagerly
    assert call.compiler == "eager"
    assert len(messages) == 1 and "compiled call" in messages[0] and "eager from now on" in messages[0]
    torch.testing.assert_close(call(torch.ones(2)), torch.full((2,), 2.0))
    assert len(messages) == 1 and call.state()["fallbacks"] == messages

    # an error the eager function raises too is the input's: raised, compiled version kept
    strict = accelerate(lambda x: x.view(7), "cpu", AccelSettings(compile=True, compile_backend="aot_eager"), messages.append)
    with pytest.raises(RuntimeError):
        strict(torch.ones(3))
    assert strict.compiler == "aot_eager" and len(messages) == 1


# ------------------------------------------------------------------ the SAM 2 stages on the truck photo
def test_compiled_decoder_gives_eager_masks(model, truck_features, eager_answers):
    messages = []
    decoder = Sam2MaskDecoder(model, accel=AccelSettings(compile=True), on_fallback=messages.append)
    answers = _decode_all(decoder, truck_features)
    assert messages == [] and decoder.accel_state()["compiler"] == "inductor"
    _assert_same_masks(answers, eager_answers)


def test_bf16_decoder_close_to_fp32(model, truck_features, eager_answers):
    decoder = Sam2MaskDecoder(model, accel=AccelSettings(precision="bf16"))
    state = decoder.accel_state()
    assert state["precision"] == "bf16" and state["fallbacks"] == []
    answers = _decode_all(decoder, truck_features)
    for a in answers.values():
        assert a.predicted_iou.dtype == np.float32 and a.low_res_logits.dtype == np.float32
    _assert_same_masks(answers, eager_answers, iou_min=BF16_IOU_MIN, pred_iou_tol=0.05)


def test_bf16_unsupported_device_falls_back_with_one_line(caplog):
    from deployments.runtime.replica import fallback_logger

    call = accelerate(_double, "meta", AccelSettings(precision="bf16"), fallback_logger("MaskDecoder"))
    assert call.precision == "fp32"
    lines = [r for r in caplog.records if r.name == "samgraph.deployments"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and "bf16 requested" in lines[0].getMessage()


def test_tensorrt_without_cuda_encoder_falls_back_to_eager(model, truck_rgb, truck_features, caplog):
    from deployments.runtime.replica import fallback_logger

    encoder = Sam2ImageEncoder(model, AccelSettings(tensorrt=True), fallback_logger("ImageEncoder"))
    lines = [r.getMessage() for r in caplog.records if r.name == "samgraph.deployments"]
    assert len(lines) == 1 and "ImageEncoder" in lines[0] and "TensorRT requested" in lines[0] and "using eager" in lines[0]
    assert encoder.accel_state()["compiler"] == "eager"
    features = encoder.encode(truck_rgb)
    np.testing.assert_array_equal(features.image_embed, truck_features.image_embed)


def test_decoder_replica_invalid_backend_logs_once_and_reports_eager(tiny_checkpoint, truck_features, eager_answers, caplog):
    import deployments.decoder as mod

    weights = {"kind": "file", "checkpoint": str(tiny_checkpoint), "seed": 0}
    with caplog.at_level(logging.INFO, logger="samgraph.deployments"):
        replica = mod.MaskDecoder.func_or_class(
            MODEL_ID, weights, device="cpu", accel={"compile": True, "compile_backend": "no_such_backend"}
        )
    warnings = [r.getMessage() for r in caplog.records if r.name == "samgraph.deployments" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no_such_backend" in warnings[0] and "using eager" in warnings[0]
    info = replica.info()
    assert info["accel"]["compiler"] == "eager" and info["accel"]["precision"] == "fp32"
    assert info["accel"]["requested"]["compile"] is True
    _assert_same_masks(_decode_all(replica._decoder, truck_features), eager_answers)


@pytest.mark.slow
def test_compiled_encoder_gives_eager_features(model, truck_rgb, truck_features):
    """Minutes on 2 CPU cores (inductor compiles the Hiera trunk)."""
    messages = []
    encoder = Sam2ImageEncoder(model, AccelSettings(compile=True), messages.append)
    features = encoder.encode(truck_rgb)
    assert messages == [] and encoder.accel_state()["compiler"] == "inductor"
    for got, ref in zip((features.image_embed, *features.high_res_feats), (truck_features.image_embed, *truck_features.high_res_feats)):
        np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)
