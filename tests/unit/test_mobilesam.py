"""models.mobilesam (the MobileSAM family) against the official code: ``mobile_sam.SamPredictor`` and
``mobile_sam.SamAutomaticMaskGenerator`` on the same weights file, the same photos and the same prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.runtime.model_weights import load_state_dict
from models.amg import AmgSettings, generate_masks
from models.masks import decode_rle
from models.mobilesam import MobileSamFamily, MobileSamFeatures, feature_nbytes
from models.prompts import PromptSpec
from models.registry import MODELS, family_of, get_family, get_model_spec
from models.segmenter import DecodeRequest
from tests.conftest import SEED, TRUCK_BOX, mask_iou, shared_file

MODEL_ID = "mobile_sam"
POINT = [[500, 375]]
PAIR = [[500, 375], [1125, 625]]
BOX_CLICK = [[1375, 550]]  # a background click inside TRUCK_BOX
DOG_BOX = [100, 100, 900, 600]
DOG_POINT = [[600, 400]]
IOU_MIN = 0.999
SCORE_TOL = 1e-4

#: Rescaling of the seeded random weights (see ``checkpoint``).
HYPERNET_SCALE = 30.0
IOU_HEAD_SHIFT = 0.8


def _family() -> MobileSamFamily:
    return get_family(MODEL_ID)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def spec():
    return get_model_spec(MODEL_ID)


@pytest.fixture(scope="module")
def checkpoint(spec, tmp_path_factory):
    """MobileSAM's seeded random weights (``SEED``), saved as ``mobile_sam.pt`` is: a bare state dict.

    Two changes make the answers non-vacuous. With random weights the low-res logits stay within about
    +/-0.4, so every stability score is 0 and a mask is decided by logits next to the threshold; the last
    layer of each output hypernetwork MLP (``mask_decoder.output_hypernetworks_mlps.*.layers.2.weight``,
    which the logits are linear in) is scaled by ``HYPERNET_SCALE``, spreading them over about +/-10.
    The IoU head's last bias (``mask_decoder.iou_prediction_head.layers.2.bias``) is shifted by
    ``IOU_HEAD_SHIFT`` so that predicted IoUs lie around 0.7-0.9 rather than 0 and some pass an
    automatic-mask filter. The masks then are neither empty nor full and differ between prompts.
    """
    state = _family().build(spec, None, seed=SEED, device="cpu").state_dict()
    hypernet = [k for k in state if k.startswith("mask_decoder.output_hypernetworks_mlps.") and ".layers.2.w" in k]
    assert len(hypernet) == 4, hypernet  # one MLP per mask token
    for key in hypernet:
        state[key].mul_(HYPERNET_SCALE)
    state["mask_decoder.iou_prediction_head.layers.2.bias"].add_(IOU_HEAD_SHIFT)
    path = tmp_path_factory.mktemp("ckpt") / spec.filename
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def ours(spec, checkpoint):
    state, _ = load_state_dict(checkpoint, spec=spec)
    family = _family()
    model = family.build(spec, state, seed=None, device="cpu")
    return model, family.encoder(model), family.decoder(model)


@pytest.fixture(scope="module")
def reference_model(checkpoint):
    """MobileSAM built by its own ``build_sam_vit_t`` from the same file (``torch.load`` + ``load_state_dict``)."""
    from mobile_sam import sam_model_registry

    return sam_model_registry["vit_t"](checkpoint=str(checkpoint))


@pytest.fixture(scope="module")
def dog_rgb():
    from PIL import Image

    with Image.open(shared_file("images", "dog.jpg")) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def features(ours, truck_rgb, dog_rgb) -> list[MobileSamFeatures]:
    """Truck and dog (sizes differ) encoded in one batch."""
    _, encoder, _ = ours
    return encoder.encode_batch([truck_rgb, dog_rgb])


def _spec(box=None, points=None, labels=None, mask=None) -> PromptSpec:
    return PromptSpec(
        box_xyxy=None if box is None else np.array(box, np.float32),
        point_coords=None if points is None else np.array(points, np.float32),
        point_labels=None if labels is None else np.array(labels, np.int32),
        mask_input=mask,
    )


#: name -> (image index, SamPredictor.predict keyword arguments); "mask" entries reuse the box's logits.
CASES = {
    "box": (0, dict(box=np.array(TRUCK_BOX), multimask_output=False)),
    "point": (0, dict(point_coords=np.array(POINT), point_labels=np.array([1]), multimask_output=True)),
    "pair": (0, dict(point_coords=np.array(PAIR), point_labels=np.array([1, 0]), multimask_output=False)),
    "box+click": (0, dict(box=np.array(TRUCK_BOX), point_coords=np.array(BOX_CLICK), point_labels=np.array([0]),
                          multimask_output=False)),
    "dog box": (1, dict(box=np.array(DOG_BOX), multimask_output=True)),
    "dog point": (1, dict(point_coords=np.array(DOG_POINT), point_labels=np.array([1]), multimask_output=False)),
}


@pytest.fixture(scope="module")
def reference_answers(reference_model, truck_rgb, dog_rgb):
    """SamPredictor's (logits at the original size, IoU, low-res logits) per case, one image set at a time."""
    from mobile_sam import SamPredictor

    predictor = SamPredictor(reference_model)
    out, embeddings = {}, []
    for index, image in enumerate((truck_rgb, dog_rgb)):
        predictor.set_image(image)
        embeddings.append((predictor.features[0].numpy(), predictor.original_size, predictor.input_size))
        for name, (i, kwargs) in CASES.items():
            if i == index:
                out[name] = predictor.predict(**kwargs, return_logits=True)
        if index == 0:
            box_low_res = out["box"][2]
            out["box+mask"] = predictor.predict(box=np.array(TRUCK_BOX), mask_input=box_low_res,
                                                multimask_output=False, return_logits=True)
            out["mask"] = predictor.predict(mask_input=box_low_res, multimask_output=True, return_logits=True)
    return out, embeddings


@pytest.fixture(scope="module")
def our_answers(ours, features):
    """Every case in one ``predict_batch`` over both images (mask cases in a second call: they need the
    box's low-res logits)."""
    _, _, decoder = ours
    truck = [("box", _spec(box=TRUCK_BOX), False), ("point", _spec(points=POINT, labels=[1]), True),
             ("pair", _spec(points=PAIR, labels=[1, 0]), False),
             ("box+click", _spec(box=TRUCK_BOX, points=BOX_CLICK, labels=[0]), False)]
    dog = [("dog box", _spec(box=DOG_BOX), True), ("dog point", _spec(points=DOG_POINT, labels=[1]), False)]
    requests = [DecodeRequest(f, [p for _, p, _ in items], [m for _, _, m in items])
                for f, items in zip(features, (truck, dog))]
    answers = decoder.predict_batch(requests)
    assert [len(a) for a in answers] == [len(truck), len(dog)]
    out = {name: a for items, row in zip((truck, dog), answers) for (name, _, _), a in zip(items, row)}
    box_low_res = out["box"].low_res_logits[0]
    box_mask, mask = decoder.predict_batch(
        [DecodeRequest(features[0], [_spec(box=TRUCK_BOX, mask=box_low_res), _spec(mask=box_low_res)], [False, True])]
    )[0]
    out["box+mask"], out["mask"] = box_mask, mask
    return out


def test_registry_entry_and_family():
    family = get_family(MODEL_ID)
    assert isinstance(family, MobileSamFamily) and family_of(MODEL_ID) is family
    caps = family.capabilities
    assert caps.points and caps.boxes and caps.mask_input and caps.multimask and caps.automatic_masks
    assert not caps.concept_prompts and not caps.video
    spec = MODELS[MODEL_ID]
    assert spec.family == "mobile_sam" and spec.config == "vit_t" and spec.checkpoint_key is None
    assert spec.file_format == "torch" and spec.filename == "mobile_sam.pt"
    assert spec.url == "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
    with pytest.raises(ValueError, match="valid names: .*sam2.1_hiera_tiny.*mobile_sam"):
        get_model_spec("mobile_sam_v2")
    with pytest.raises(ValueError, match="unknown model family .*; valid: .*mobile_sam"):
        get_family("mobilesam")


def test_strict_loading_and_seeded_weights(spec):
    family = _family()
    rng = torch.random.get_rng_state()
    a = family.build(spec, None, seed=7, device="cpu").state_dict()
    b = family.build(spec, None, seed=7, device="cpu").state_dict()
    c = family.build(spec, None, seed=8, device="cpu").state_dict()
    assert torch.equal(torch.random.get_rng_state(), rng), "building must not move the global RNG"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["mask_decoder.iou_token.weight"], c["mask_decoder.iou_token.weight"])
    assert family.build(spec, a, seed=None, device="cpu") is not None

    missing = dict(a)
    del missing["mask_decoder.iou_token.weight"]
    with pytest.raises(RuntimeError, match="Missing key"):
        family.build(spec, missing, seed=None, device="cpu")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        family.build(spec, {**a, "image_encoder.extra.weight": torch.zeros(1)}, seed=None, device="cpu")
    with pytest.raises(ValueError, match="seed"):
        family.build(spec, None, seed=None, device="cpu")


def test_batched_encoder_equals_set_image(features, reference_answers, spec):
    _, embeddings = reference_answers
    for ours, (embedding, orig_hw, input_hw) in zip(features, embeddings):
        assert ours.image_embedding.shape == (256, 64, 64) and ours.image_embedding.dtype == np.float32
        assert ours.orig_hw == tuple(orig_hw) and ours.input_hw == tuple(input_hw)
        assert ours.nbytes == feature_nbytes() == _family().feature_nbytes(spec) == 4 * 2**20
        np.testing.assert_allclose(ours.image_embedding, embedding, atol=1e-4, rtol=1e-4)
    assert features[0].input_hw == (683, 1024)  # 1200x1800 truck; the dog's long side differs


@pytest.mark.parametrize("name", [*CASES, "box+mask", "mask"])
def test_predict_batch_equals_sam_predictor(name, our_answers, reference_answers):
    from mobile_sam.utils.amg import calculate_stability_score

    logits, iou, low_res = reference_answers[0][name]
    ours = our_answers[name]
    assert ours.masks.shape == logits.shape and ours.masks.dtype == bool
    for k in range(len(logits)):
        reference_mask = logits[k] > 0.0
        assert 0 < reference_mask.sum() < reference_mask.size, "vacuous: an empty or full mask"
        assert mask_iou(ours.masks[k], reference_mask) >= IOU_MIN
    np.testing.assert_allclose(ours.predicted_iou, iou, atol=SCORE_TOL)
    stability = calculate_stability_score(torch.as_tensor(logits), 0.0, 1.0).numpy()
    np.testing.assert_allclose(ours.stability_score, stability, atol=1e-3)
    np.testing.assert_allclose(ours.low_res_logits, np.clip(low_res, -32, 32), atol=1e-3)


def test_answers_differ_between_prompts(our_answers):
    """Non-vacuous: the prompts give different masks (and stability is not 0 everywhere)."""
    first = {name: a.masks[0] for name, a in our_answers.items() if not name.startswith("dog")}
    names = list(first)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if {a, b} != {"box", "box+mask"}:  # refining the box with its own logits may keep the mask
                assert mask_iou(first[a], first[b]) < 0.95, (a, b)
    assert max(float(a.stability_score.max()) for a in our_answers.values()) > 0.5


def test_decoder_after_dropping_the_encoder(spec, checkpoint, features, our_answers):
    state, _ = load_state_dict(checkpoint, spec=spec)
    family = _family()
    model = family.build(spec, state, seed=None, device="cpu")
    family.drop_image_encoder(model)
    assert model.image_encoder is None
    decoder = family.decoder(model)
    decoder.warm_up()
    answer = decoder.predict(features[0], _spec(points=POINT, labels=[1]), True)
    np.testing.assert_array_equal(answer.masks, our_answers["point"].masks)
    assert decoder.accel_state()["compiler"] == "eager" and decoder.accel_state()["precision"] == "fp32"


def test_bf16_decoder(ours, features, our_answers):
    """``accel`` goes through :func:`models.accel.accelerate` as for SAM 2: bf16 autocast on the mask decoder,
    float32 answers, masks close to fp32's (bf16 rounds the logits, so not equal)."""
    from models.accel import AccelSettings

    model, _, _ = ours
    decoder = _family().decoder(model, accel=AccelSettings(precision="bf16"))
    answer = decoder.predict(features[0], _spec(box=TRUCK_BOX), False)
    assert decoder.accel_state()["precision"] == "bf16"
    assert answer.predicted_iou.dtype == answer.low_res_logits.dtype == np.float32
    assert mask_iou(answer.masks[0], our_answers["box"].masks[0]) > 0.9


def test_encoder_rejects_bad_images(ours):
    _, encoder, _ = ours
    assert encoder.encode_batch([]) == []
    with pytest.raises(ValueError, match=r"images\[1\] must be \(H, W, 3\) uint8"):
        encoder.encode_batch([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    assert encoder.accel_state()["compiler"] == "eager"


#: (box_nms_thresh, pred_iou_thresh, stability_score_thresh): every candidate (NMS 1.0 keeps all 3 x 9,
#: filters off: the full ranking is compared), and SAM's NMS 0.7 with filters that random weights pass.
AMG_CASES = [(1.0, 0.0, 0.0), (0.7, 0.8, 0.2)]


@pytest.mark.parametrize(("nms", "iou_thresh", "stability_thresh"), AMG_CASES)
def test_automatic_masks_equal_sam_automatic_mask_generator(
    ours, reference_model, features, dog_rgb, nms, iou_thresh, stability_thresh
):
    """``models.amg.generate_masks`` over this family against MobileSAM's ``SamAutomaticMaskGenerator``
    with the same settings and one crop layer (its default ``crop_n_layers=0``), on the dog photo: the same
    masks in the same (NMS) order, the same predicted IoU, stability score and grid click.

    The algorithms line up for one crop: a grid of foreground clicks (the same ``build_point_grid``), three
    candidates each, the IoU filter (strictly above), the stability filter (at least), box NMS by predicted
    IoU. Not compared: crops (``crop_n_layers > 0``) and ``min_mask_region_area`` (neither is in
    ``generate_masks``). The generator's crop-edge filter drops nothing with one crop, and empty masks
    (which ``generate_masks`` drops) do not occur here (checked). With random weights a photo's masks are
    speckle over the whole frame, so at NMS 0.7 one mask survives; NMS 1.0 compares all 27 candidates.
    """
    from mobile_sam import SamAutomaticMaskGenerator

    _, _, decoder = ours
    kw = dict(points_per_side=3, points_per_batch=9, pred_iou_thresh=iou_thresh,
              stability_score_thresh=stability_thresh, box_nms_thresh=nms)
    got = generate_masks(decoder, features[1], AmgSettings(**kw))
    reference = SamAutomaticMaskGenerator(reference_model, output_mode="binary_mask", **kw).generate(dog_rgb)
    assert len(got) == len(reference) >= 1
    if nms == 1.0:
        assert len(got) == 3 * 9
    h, w = dog_rgb.shape[:2]
    areas = set()
    for ours_mask, ref in zip(got, reference):
        mask = decode_rle(ours_mask.rle)
        assert 0 < ref["segmentation"].sum() < h * w
        assert mask_iou(mask, ref["segmentation"]) >= IOU_MIN
        assert ours_mask.predicted_iou == pytest.approx(ref["predicted_iou"], abs=SCORE_TOL)
        assert ours_mask.stability_score == pytest.approx(ref["stability_score"], abs=1e-3)
        assert ours_mask.point_xy == pytest.approx(ref["point_coords"][0], abs=1e-3)
        areas.add(ours_mask.area_px)
    assert len(areas) == len(got)  # every mask differs: not one mask compared many times
    assert all(m.predicted_iou > iou_thresh and m.stability_score >= stability_thresh for m in got)
