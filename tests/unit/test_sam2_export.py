"""SAM 2 exported to ONNX (models.sam2_export) answers what the torch stages answer: same checkpoint, same photo,
same prompts, through ONNX Runtime and OpenVINO."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from deployments.runtime.model_weights import load_state_dict
from models.amg import AmgSettings, generate_masks
from models.masks import decode_rle
from models.prompts import PromptSpec
from models.registry import get_family
from models.runtime import RuntimeSettings, load_graph
from models.sam2_decoder import Sam2MaskDecoder
from models.sam2_export import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    Sam2GraphDecoder,
    Sam2GraphEncoder,
    select_masks,
)
from models.sam2_image import ImageFeatures, Sam2ImageEncoder, build_sam2_model
from models.segmenter import DECODER_FILE, ENCODER_FILE, DecodeRequest
from tests.conftest import MODEL_ID, TRUCK_BOX, mask_iou

POINT = [[500, 375]]
PAIR = [[500, 375], [1125, 625]]
CLICKS = [[500, 375], [1125, 625], [1450, 560]]  # wheel, body, cab of the truck
IOU_MIN = 0.999
SCORE_TOL = 1e-4
FEATURE_TOL = 1e-4
ORT = RuntimeSettings(runtime="onnxruntime", threads=2)
OV = RuntimeSettings(runtime="openvino", threads=2)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    state, _ = load_state_dict(tiny_checkpoint)
    return build_sam2_model(MODEL_ID, state)


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    """The family's export, written once per module (the layout of SharpAI/sam2-hiera-tiny-onnx)."""
    files = get_family("sam2").export_onnx(model)
    assert set(files) == {ENCODER_FILE, DECODER_FILE}
    folder = tmp_path_factory.mktemp("sam2_onnx")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def torch_stages(model):
    return Sam2ImageEncoder(model), Sam2MaskDecoder(model)


@pytest.fixture(scope="module")
def truck_features(torch_stages, truck_rgb) -> ImageFeatures:
    return torch_stages[0].encode(truck_rgb)


@pytest.fixture(scope="module")
def ort_encoder(model, export_dir):
    return get_family("sam2").encoder(model, graph=load_graph(str(export_dir / ENCODER_FILE), ORT))


def _decoder(model, export_dir, settings):
    return get_family("sam2").decoder(model, graph=load_graph(str(export_dir / DECODER_FILE), settings))


@pytest.fixture(scope="module")
def ort_decoder(model, export_dir):
    return _decoder(model, export_dir, ORT)


@pytest.fixture(scope="module")
def ov_decoder(model, export_dir):
    return _decoder(model, export_dir, OV)


def _box(mask_input=None) -> PromptSpec:
    return PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32), mask_input=mask_input)


def _clicks(coords, labels) -> PromptSpec:
    return PromptSpec(point_coords=np.array(coords, np.float32), point_labels=np.array(labels, np.int32))


def _prompts(box_logits: np.ndarray) -> dict[str, tuple[PromptSpec, bool]]:
    """name -> (prompt, multimask_output): points, boxes, box + clicks, multimask both ways, mask input."""
    return {
        "point multi": (_clicks(POINT, [1]), True),
        "point single": (_clicks(POINT, [1]), False),
        "pair single": (_clicks(PAIR, [1, 0]), False),
        "three clicks multi": (_clicks(CLICKS, [1, 1, 0]), True),
        "box single": (_box(), False),
        "box + click": (PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32), **_click_kw()), False),
        "box + mask": (_box(box_logits), False),
        "mask only": (PromptSpec(mask_input=box_logits), False),
        "click + mask multi": (PromptSpec(**_click_kw(), mask_input=box_logits), True),
    }


def _click_kw() -> dict:
    return {"point_coords": np.array(POINT, np.float32), "point_labels": np.array([1], np.int32)}


@pytest.fixture(scope="module")
def prompts(torch_stages, truck_features):
    box_logits = torch_stages[1].predict(truck_features, _box(), False).low_res_logits[0]
    return _prompts(box_logits)


@pytest.fixture(scope="module")
def torch_answers(torch_stages, truck_features, prompts):
    decoder = torch_stages[1]
    return {name: decoder.predict(truck_features, p, multi) for name, (p, multi) in prompts.items()}


def _assert_same_answers(got, want, h, w, what):
    assert got.masks.shape == want.masks.shape, what
    for k in range(want.masks.shape[0]):
        area = int(want.masks[k].sum())
        assert 0 < area < h * w, f"{what}[{k}]: torch's mask is empty or full (vacuous)"
        iou = mask_iou(got.masks[k], want.masks[k])
        assert iou >= IOU_MIN, f"{what}[{k}]: IoU {iou:.5f}"
    np.testing.assert_allclose(got.predicted_iou, want.predicted_iou, atol=SCORE_TOL, rtol=0, err_msg=what)
    np.testing.assert_allclose(got.stability_score, want.stability_score, atol=1e-3, rtol=0, err_msg=what)
    np.testing.assert_allclose(got.low_res_logits, want.low_res_logits, atol=1e-3, rtol=0, err_msg=what)


def test_family_declares_runtimes_and_layout(model, export_dir, ort_encoder, ort_decoder):
    family = get_family("sam2")
    assert family.runtimes == ("torch", "onnxruntime", "openvino", "tensorrt")
    assert isinstance(ort_encoder, Sam2GraphEncoder) and isinstance(ort_decoder, Sam2GraphDecoder)
    assert ort_encoder.graph.input_names == ENCODER_INPUTS
    assert set(ort_encoder.graph.output_names) == set(ENCODER_OUTPUTS)
    assert ort_decoder.graph.input_names == DECODER_INPUTS
    assert set(ort_decoder.graph.output_names) == set(DECODER_OUTPUTS)
    for stage in (ort_encoder, ort_decoder):
        state = stage.accel_state()
        assert (state["runtime"], state["precision"], state["compiler"]) == ("onnxruntime", "fp32", "onnxruntime")
    # the wrong graph for a stage is refused with the names it lacks
    with pytest.raises(ValueError, match="point_coords"):
        family.decoder(model, graph=ort_encoder.graph)
    with pytest.raises(ValueError, match="image"):
        family.encoder(model, graph=ort_decoder.graph)


@pytest.fixture(scope="module")
def ort_batch(ort_encoder, truck_rgb):
    """The truck and a smaller, flipped crop of it encoded in one graph call (dynamic batch axis)."""
    other = np.ascontiguousarray(truck_rgb[::-6, ::3])
    return ort_encoder.encode_batch([truck_rgb, other]), other


def test_encoder_features_match_torch(ort_batch, truck_features, truck_rgb):
    (got, other_features), other = ort_batch
    assert got.orig_hw == truck_features.orig_hw == truck_rgb.shape[:2]
    assert other_features.orig_hw == other.shape[:2]
    assert got.image_embed.shape == (256, 64, 64) and got.image_embed.dtype == np.float32
    assert [f.shape for f in got.high_res_feats] == [(32, 256, 256), (64, 128, 128)]
    assert float(np.abs(truck_features.image_embed).max()) > 0.1  # not a comparison of zeros
    np.testing.assert_allclose(got.image_embed, truck_features.image_embed, atol=FEATURE_TOL, rtol=0)
    for level in range(2):
        np.testing.assert_allclose(got.high_res_feats[level], truck_features.high_res_feats[level], atol=FEATURE_TOL)
    # the second image of the batch is its own, not a copy of the first
    assert np.abs(other_features.image_embed - got.image_embed).max() > 1e-2


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_decoder_masks_match_torch(runtime, request, truck_features, prompts, torch_answers, truck_rgb):
    decoder = request.getfixturevalue("ort_decoder" if runtime == "onnxruntime" else "ov_decoder")
    h, w = truck_rgb.shape[:2]
    for name, (prompt, multi) in prompts.items():
        got = decoder.predict(truck_features, prompt, multi)
        want = torch_answers[name]
        assert got.masks.shape == ((3 if multi else 1), h, w), name
        _assert_same_answers(got, want, h, w, f"{runtime} {name}")


def test_prompts_give_different_masks(torch_answers):
    """The comparisons above are not vacuous: the prompts' masks differ, and the mask input is used."""
    a = torch_answers
    assert mask_iou(a["box single"].masks[0], a["point single"].masks[0]) < 0.99
    assert max(mask_iou(a["box single"].masks[0], m) for m in a["point multi"].masks) < 0.99
    assert min(mask_iou(a["point multi"].masks[0], m) for m in a["point multi"].masks[1:]) < 0.99
    assert not np.array_equal(a["box + mask"].low_res_logits, a["box single"].low_res_logits)
    assert not np.array_equal(a["box + click"].low_res_logits, a["box single"].low_res_logits)
    assert not np.array_equal(a["click + mask multi"].low_res_logits, a["point multi"].low_res_logits)


def test_predict_batch_across_images(ort_decoder, torch_stages, truck_features, prompts, truck_rgb):
    """A group of prompts on two images goes through the graph with one image per prompt (B = N)."""
    h, w = truck_rgb.shape[:2]
    half = ImageFeatures(truck_features.image_embed * 0.5, truck_features.high_res_feats, (h // 2, w // 2))
    half_box = PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32) / 2)
    requests = [
        DecodeRequest(truck_features, [prompts["box single"][0], prompts["pair single"][0]], False),
        DecodeRequest(half, [half_box, prompts["mask only"][0]], False),
    ]
    got = ort_decoder.predict_batch(requests)
    want = torch_stages[1].predict_batch(requests)
    for r, req in enumerate(requests):
        rh, rw = req.features.orig_hw
        for p in range(len(req.prompts)):
            _assert_same_answers(got[r][p], want[r][p], rh, rw, f"request {r} prompt {p}")
    assert mask_iou(got[0][0].masks[0], np.asarray(got[1][0].masks[0]).repeat(2, 0).repeat(2, 1)[:h, :w]) < 0.99


def test_automatic_masks_match_torch(ort_decoder, torch_stages, truck_features):
    """The automatic-mask grid (decode_points, 3 candidates per click) through the graph: the same masks."""
    # random weights: low scores and overlapping boxes, so no filter and no NMS (every candidate compared)
    settings = AmgSettings(points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0)
    want = generate_masks(torch_stages[1], truck_features, settings)
    got = generate_masks(ort_decoder, truck_features, settings)
    assert len(want) > 3, "too few automatic masks to compare"
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.point_xy == w.point_xy
        assert abs(g.predicted_iou - w.predicted_iou) <= SCORE_TOL
        assert abs(g.stability_score - w.stability_score) <= 1e-3
        assert mask_iou(decode_rle(g.rle), decode_rle(w.rle)) >= IOU_MIN
    masks = [decode_rle(m.rle) for m in want]
    assert len({m.tobytes() for m in masks}) > 3  # different masks, not one repeated


def test_warm_up_runs_the_graph(ort_decoder):
    ort_decoder.warm_up()


@pytest.mark.parametrize("settings", [ORT, OV], ids=["onnxruntime", "openvino"])
def test_garbage_graph_refused(settings, tmp_path, export_dir):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx model" * 100)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes((export_dir / DECODER_FILE).read_bytes()[:100_000])
    for path in (garbage, truncated):
        with pytest.raises(RuntimeError, match=settings.runtime):
            load_graph(str(path), settings)


def test_export_refuses_model_without_image_encoder(tiny_checkpoint):
    state, _ = load_state_dict(tiny_checkpoint)
    model = build_sam2_model(MODEL_ID, state)
    get_family("sam2").drop_image_encoder(model)
    with pytest.raises(ValueError, match="image encoder"):
        get_family("sam2").export_onnx(model)


def test_openvino_encoder_features_match_torch(model, export_dir, truck_features, truck_rgb):
    """OpenVINO runs the encoder (loaded through ONNX Runtime's basic optimisation: seconds, not the 80 s its
    plugin takes on the raw export; see models/runtime_openvino.py)."""
    t0 = time.perf_counter()
    encoder = get_family("sam2").encoder(model, graph=load_graph(str(export_dir / ENCODER_FILE), OV))
    print(f"openvino encoder load: {time.perf_counter() - t0:.1f} s")
    assert encoder.accel_state()["runtime"] == "openvino"
    got = encoder.encode(truck_rgb)
    np.testing.assert_allclose(got.image_embed, truck_features.image_embed, atol=FEATURE_TOL, rtol=0)
    for level in range(2):
        np.testing.assert_allclose(got.high_res_feats[level], truck_features.high_res_feats[level], atol=FEATURE_TOL)


def test_single_mask_choice_is_sam2s(model):
    """The graph gives all four candidates; single-mask output picks candidate 0 where it is stable and
    otherwise the multimask candidate of highest predicted IoU (sam2's dynamic_multimask_via_stability)."""
    assert model.sam_mask_decoder.dynamic_multimask_via_stability
    low_res = torch.zeros(2, 4, 8, 8)
    low_res[:, 0] = torch.where(torch.arange(8)[:, None] < 4, 10.0, -10.0)  # prompt 0: candidate 0 stable
    low_res[1, 0] = 0.01 * torch.randn(8, 8, generator=torch.Generator().manual_seed(0))  # prompt 1: unstable
    low_res[:, 1:] = torch.arange(1.0, 4.0)[:, None, None]
    iou = torch.tensor([[0.9, 0.1, 0.3, 0.2], [0.9, 0.1, 0.3, 0.2]])
    masks, scores = select_masks(model.sam_mask_decoder, low_res, iou, multimask_output=False)
    assert masks.shape == (2, 1, 8, 8)
    torch.testing.assert_close(masks[0, 0], low_res[0, 0])
    torch.testing.assert_close(masks[1, 0], low_res[1, 2])  # the best-IoU multimask candidate
    torch.testing.assert_close(scores, torch.tensor([[0.9], [0.3]]))
    masks, scores = select_masks(model.sam_mask_decoder, low_res, iou, multimask_output=True)
    torch.testing.assert_close(masks, low_res[:, 1:])
    torch.testing.assert_close(scores, iou[:, 1:])
