"""TensorRT (ONNX Runtime's TensorRT provider) answers what eager torch answers, on a GPU.

Skipped where there is no CUDA device or no TensorRT provider (CI has neither); ``benchmarks/gpu_check.sh``
runs it on a GPU machine with ``SAMGRAPH_REQUIRE_GPU=1``, where a missing GPU or provider fails instead.
The same export (``SegmenterFamily.export_onnx``) as the CPU runtimes' tests, the same test weights (made
non-vacuous: masks non-empty and different between prompts), the truck photo: fp32 engines give the torch
masks (IoU >= 0.999; TF32 is off in the provider's fp32 engines); fp16 engines are reported and held to
IoU >= 0.98 (fp16 moves logits near the threshold).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from models.prompts import PromptSpec
from models.registry import family_of, get_model_spec
from models.runtime import RuntimeSettings, get_runtime, load_graph
from models.segmenter import DECODER_FILE, ENCODER_FILE
from tests.conftest import mask_iou

TRUCK_BOX = np.asarray([75, 275, 1725, 850], np.float32)


def _gpu_or_skip() -> None:
    ok, why = get_runtime("tensorrt").available("cuda")
    if ok:
        return
    if os.environ.get("SAMGRAPH_REQUIRE_GPU") == "1":
        pytest.fail(f"SAMGRAPH_REQUIRE_GPU=1 but {why}")
    pytest.skip(why)


def _state(model_id: str, tiny_checkpoint):
    if model_id == "mobile_sam":
        from tests.family_weights import mobile_sam_state

        return mobile_sam_state(seed=0)
    return torch.load(tiny_checkpoint, weights_only=True)["model"]


def _prompts():
    box = PromptSpec(box_xyxy=TRUCK_BOX)
    click = PromptSpec(point_coords=np.asarray([[500, 375]], np.float32), point_labels=np.asarray([1], np.int32))
    return [(box, False), (click, True)]


@pytest.mark.parametrize("model_id", ["sam2.1_hiera_tiny", "mobile_sam"])
@pytest.mark.parametrize("precision,least_iou", [("fp32", 0.999), ("fp16", 0.98)])
def test_tensorrt_masks_equal_torch(model_id, precision, least_iou, tiny_checkpoint, truck_rgb, tmp_path):
    _gpu_or_skip()
    family = family_of(model_id)
    model = family.build(get_model_spec(model_id), _state(model_id, tiny_checkpoint), seed=None, device="cpu")
    for name, data in family.export_onnx(model).items():
        (tmp_path / name).write_bytes(data)
    settings = RuntimeSettings("tensorrt", precision, device="cuda", cache_dir=str(tmp_path / "engines"))
    encoder = family.encoder(model, graph=load_graph(str(tmp_path / ENCODER_FILE), settings))
    decoder = family.decoder(model, graph=load_graph(str(tmp_path / DECODER_FILE), settings))
    ref_encoder, ref_decoder = family.encoder(model), family.decoder(model)
    ref_features = ref_encoder.encode_batch([truck_rgb])[0]
    features = encoder.encode_batch([truck_rgb])[0]
    areas = []
    for prompt, multimask in _prompts():
        ref = ref_decoder.predict(ref_features, prompt, multimask)
        got = decoder.predict(features, prompt, multimask)
        areas.append(int(ref.masks[0].sum()))
        ious = [mask_iou(a, b) for a, b in zip(got.masks, ref.masks)]
        print(f"{model_id} {precision}: mask IoU to torch {[round(i, 5) for i in ious]}")
        assert min(ious) >= least_iou
        if precision == "fp32":
            np.testing.assert_allclose(got.predicted_iou, ref.predicted_iou, atol=1e-3)
    assert all(a > 0 for a in areas) and areas[0] != areas[1]  # non-vacuous: masks exist and differ
