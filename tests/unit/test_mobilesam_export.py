"""models.mobilesam_export: MobileSAM exported to ONNX (``encoder.onnx`` + SAM v1's ``decoder.onnx``) and run
through ONNX Runtime and OpenVINO answers what the torch encoder and decoder answer, on the truck photo.

One export per module (about 3 s on 2 cores); each runtime loads it once (OpenVINO converts TinyViT in about
1 s). The decoders are compared on the torch encoder's features, so a decoder difference is not hidden
behind (or blamed on) an encoder difference."""

from __future__ import annotations

import numpy as np
import pytest

from models.amg import AmgSettings, generate_masks
from models.masks import decode_rle
from models.mobilesam import MobileSamFamily
from models.mobilesam_export import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    MobileSamGraphDecoder,
    MobileSamGraphEncoder,
)
from models.prompts import PromptSpec
from models.registry import get_family, get_model_spec
from models.runtime import RuntimeSettings, load_graph
from models.segmenter import DECODER_FILE, ENCODER_FILE, DecodeRequest
from tests.conftest import SEED, TRUCK_BOX, mask_iou
from tests.family_weights import mobile_sam_state

MODEL_ID = "mobile_sam"
RUNTIMES = ("onnxruntime", "openvino")
POINT = [[500, 375]]
PAIR = [[500, 375], [1125, 625]]
BOX_CLICK = [[1375, 550]]  # a background click inside TRUCK_BOX
FEATURE_TOL = 1e-4
IOU_MIN = 0.999
SCORE_TOL = 1e-4


def _spec(box=None, points=None, labels=None, mask=None) -> PromptSpec:
    return PromptSpec(
        box_xyxy=None if box is None else np.array(box, np.float32),
        point_coords=None if points is None else np.array(points, np.float32),
        point_labels=None if labels is None else np.array(labels, np.int32),
        mask_input=mask,
    )


@pytest.fixture(scope="module")
def family() -> MobileSamFamily:
    return get_family(MODEL_ID)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def model(family):
    """The test weights of ``tests/unit/test_mobilesam.py`` (seeded, rescaled to answer non-vacuously)."""
    return family.build(get_model_spec(MODEL_ID), mobile_sam_state(SEED), seed=None, device="cpu")


@pytest.fixture(scope="module")
def export_dir(family, model, tmp_path_factory):
    """``export_onnx``'s files written to a directory, as a replica's cache holds them."""
    files = family.export_onnx(model)
    assert set(files) == {ENCODER_FILE, DECODER_FILE}
    out = tmp_path_factory.mktemp("mobile_sam_onnx")
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


@pytest.fixture(scope="module")
def torch_parts(family, model, truck_rgb):
    """The torch decoder and the torch encoder's features of the truck."""
    return family.decoder(model), family.encoder(model).encode(truck_rgb)


@pytest.fixture(scope="module", params=RUNTIMES)
def graph_parts(request, family, model, export_dir):
    """(runtime name, graph encoder, graph decoder) for each runtime, fp32, 2 threads."""
    settings = RuntimeSettings(runtime=request.param, threads=2)
    encoder = family.encoder(model, graph=load_graph(str(export_dir / ENCODER_FILE), settings))
    decoder = family.decoder(model, graph=load_graph(str(export_dir / DECODER_FILE), settings))
    return request.param, encoder, decoder


def test_family_declares_the_runtimes_and_the_layout(family, export_dir):
    import onnx

    assert family.runtimes == ("torch", "onnxruntime", "openvino", "tensorrt")
    encoder = onnx.load(str(export_dir / ENCODER_FILE)).graph
    decoder = onnx.load(str(export_dir / DECODER_FILE)).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(i.name, dims(i)) for i in encoder.input] == [(ENCODER_INPUTS[0], [1, 3, 1024, 1024])]
    assert [(o.name, dims(o)) for o in encoder.output] == [(ENCODER_OUTPUTS[0], [1, 256, 64, 64])]
    assert {i.name: dims(i) for i in decoder.input} == {
        "image_embeddings": [1, 256, 64, 64],
        "point_coords": ["num_prompts", "num_points", 2],
        "point_labels": ["num_prompts", "num_points"],
        "mask_input": ["num_prompts", 1, 256, 256],
        "has_mask_input": ["num_prompts"],
        "orig_im_size": [2],
    }
    assert tuple(i.name for i in decoder.input) == DECODER_INPUTS
    assert tuple(o.name for o in decoder.output) == DECODER_OUTPUTS
    assert [dims(o)[0] for o in decoder.output] == ["num_prompts"] * 3


def test_features_equal_torch(graph_parts, torch_parts, truck_rgb):
    runtime, encoder, _ = graph_parts
    _, reference = torch_parts
    assert isinstance(encoder, MobileSamGraphEncoder)
    got = encoder.encode_batch([truck_rgb, truck_rgb])  # two images: one graph run each, in order
    assert len(got) == 2
    for features in got:
        assert features.image_embedding.shape == (256, 64, 64) and features.image_embedding.dtype == np.float32
        assert features.orig_hw == reference.orig_hw == (1200, 1800)
        assert features.input_hw == reference.input_hw == (683, 1024)
        np.testing.assert_allclose(features.image_embedding, reference.image_embedding, atol=FEATURE_TOL, rtol=0)
    state = encoder.accel_state()
    assert state["runtime"] == state["compiler"] == runtime and state["precision"] == "fp32"


def _prompt_requests(features, box_low_res=None):
    """(name, prompt, multimask) cases; several share a shape, so the graph runs them as one batch (N > 1)."""
    cases = [
        ("point", _spec(points=POINT, labels=[1]), True),
        ("point single", _spec(points=POINT, labels=[1]), False),
        ("other point", _spec(points=PAIR[1:], labels=[1]), True),  # batched with "point" (N = 2)
        ("pair", _spec(points=PAIR, labels=[1, 0]), False),
        ("box", _spec(box=TRUCK_BOX), False),
        ("box multimask", _spec(box=TRUCK_BOX), True),
        ("box+click", _spec(box=TRUCK_BOX, points=BOX_CLICK, labels=[0]), False),
    ]
    if box_low_res is not None:
        cases += [
            ("box+mask", _spec(box=TRUCK_BOX, mask=box_low_res), False),
            ("mask", _spec(mask=box_low_res), True),  # no point, no box: no sparse token, as in torch
            ("other mask", _spec(mask=-box_low_res), True),  # batched with "mask" (N = 2)
        ]
    return cases


def _answers(decoder, features, cases):
    answers = decoder.predict_batch([DecodeRequest(features, [p for _, p, _ in cases], [m for _, _, m in cases])])[0]
    assert len(answers) == len(cases)
    return {name: a for (name, _, _), a in zip(cases, answers)}


@pytest.fixture(scope="module")
def torch_answers(torch_parts):
    decoder, features = torch_parts
    box_low_res = decoder.predict(features, _spec(box=TRUCK_BOX), False).low_res_logits[0]
    return box_low_res, _answers(decoder, features, _prompt_requests(features, box_low_res))


def test_torch_answers_are_not_vacuous(torch_answers):
    _, answers = torch_answers
    firsts = {name: a.masks[0] for name, a in answers.items()}
    for name, mask in firsts.items():
        assert 0 < mask.sum() < mask.size, name
    assert mask_iou(firsts["point"], firsts["box"]) < 0.95
    assert mask_iou(firsts["point"], firsts["other point"]) < 0.95
    assert mask_iou(firsts["point"], firsts["point single"]) < 0.95  # multimask's first mask is another token
    assert mask_iou(firsts["mask"], firsts["other mask"]) < 0.95
    assert max(float(a.stability_score.max()) for a in answers.values()) > 0.5


def test_decoder_answers_equal_torch(graph_parts, torch_parts, torch_answers):
    runtime, _, decoder = graph_parts
    _, features = torch_parts
    box_low_res, reference = torch_answers
    assert isinstance(decoder, MobileSamGraphDecoder)
    got = _answers(decoder, features, _prompt_requests(features, box_low_res))
    for name, ours in got.items():
        ref = reference[name]
        assert ours.masks.shape == ref.masks.shape and ours.masks.dtype == bool, name
        assert ours.masks.shape[0] == (3 if name in ("point", "other point", "box multimask", "mask", "other mask")
                                       else 1)
        for k in range(len(ref.masks)):
            assert 0 < ref.masks[k].sum() < ref.masks[k].size, (name, k)
            assert mask_iou(ours.masks[k], ref.masks[k]) >= IOU_MIN, (name, k)
        np.testing.assert_allclose(ours.predicted_iou, ref.predicted_iou, atol=SCORE_TOL, err_msg=name)
        np.testing.assert_allclose(ours.stability_score, ref.stability_score, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(ours.low_res_logits, ref.low_res_logits, atol=1e-3, err_msg=name)
    state = decoder.accel_state()
    assert state["runtime"] == runtime and state["precision"] == "fp32" and state["fallbacks"] == []


def test_automatic_masks_equal_torch(graph_parts, torch_parts, monkeypatch):
    """``generate_masks`` (``decode_points``, 4 clicks in one batch, run by the graph in chunks of 3 and 1)
    through the graph: the same masks in the same order, with the same scores and clicks, as through torch."""
    _, _, decoder = graph_parts
    monkeypatch.setattr(decoder, "max_prompts_per_run", 3)
    torch_decoder, features = torch_parts
    settings = AmgSettings(points_per_side=2, points_per_batch=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                           box_nms_thresh=1.0)
    reference = generate_masks(torch_decoder, features, settings)
    got = generate_masks(decoder, features, settings)
    assert len(got) == len(reference) == 3 * 4
    assert len({m.area_px for m in reference}) == len(reference)  # every mask differs
    for ours, ref in zip(got, reference):
        assert ours.point_xy == pytest.approx(ref.point_xy, abs=1e-3)
        assert ours.predicted_iou == pytest.approx(ref.predicted_iou, abs=SCORE_TOL)
        assert ours.stability_score == pytest.approx(ref.stability_score, abs=1e-3)
        assert mask_iou(decode_rle(ours.rle), decode_rle(ref.rle)) >= IOU_MIN


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_garbage_and_truncated_exports_are_refused(runtime, export_dir, tmp_path):
    settings = RuntimeSettings(runtime=runtime, threads=1)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model\x00" * 64)
    truncated = tmp_path / "truncated.onnx"
    data = (export_dir / DECODER_FILE).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path in (garbage, truncated):
        with pytest.raises(RuntimeError, match=f"{runtime} could not"):
            load_graph(str(path), settings)


def test_graph_of_the_wrong_stage_is_refused(family, model, export_dir):
    settings = RuntimeSettings(runtime="onnxruntime", threads=1)
    encoder_graph = load_graph(str(export_dir / ENCODER_FILE), settings)
    with pytest.raises(ValueError, match="decoder graph lacks .*point_coords.*export it with"):
        family.decoder(model, graph=encoder_graph)
    with pytest.raises(ValueError, match="encoder graph lacks image.*export it with"):
        family.encoder(model, graph=load_graph(str(export_dir / DECODER_FILE), settings))
