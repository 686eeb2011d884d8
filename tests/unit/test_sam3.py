"""SAM 3 behind the family seam (models/sam3.py) against transformers' own SAM 3 classes on the same weights.

The tiny architecture (``sam3-tiny``, 224 px) with seeded random weights whose head layers are rescaled by
``non_vacuous_heads`` (instances above 0.5 exist and differ between prompts; click masks are partial).
References run in process: ``Sam3Model`` + ``Sam3ImageProcessor.post_process_instance_segmentation`` for
concept prompts, ``Sam3TrackerModel`` (its own vision encoder: the detector's ViT + the tracker neck, the
weights renamed as transformers' ``sam3_tracker`` conversion mapping does) + ``Sam3TrackerProcessor`` for
clicks and boxes.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.prompts import PromptSpec
from models.registry import family_of, get_family, get_model_spec
from models.sam3 import (
    Sam3Family,
    Sam3Features,
    build_sam3_model,
    feature_nbytes,
    image_processor,
    non_vacuous_heads,
    tokenize,
)
from models.segmenter import ConceptPrompt, ConceptRequest, DecodeRequest
from tests.conftest import TRUCK_BOX, mask_iou, shared_file
from tests.sam3_references import concept_reference, detector_reference, tracker_reference, tracker_reference_model

TINY = "sam3-tiny"
SEED = 1234
CLICK = np.array([[900.0, 560.0]], np.float32)  # on the truck
#: SHA-256 of ``open_clip/bpe_simple_vocab_16e6.txt.gz`` (open_clip_torch 3.3.0) and of Meta's
#: ``sam3/assets/bpe_simple_vocab_16e6.txt.gz`` in facebookresearch/sam3 (git blob
#: 7b5088a527f720063f044eb928eee315f63b2fc0, 1,356,917 bytes, last changed in b26a5f3, 2025-12-11): the same
#: bytes, compared on 2026-12-06.
SAM3_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's ops are too small to gain from intra-op threads; on a loaded 2-core machine the
    thread pool's waiting cost several times the work (the parity test took 26 s with 2 threads, 6 s with 1).
    The full-size smoke (``slow``) runs with the default threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return non_vacuous_heads(build_sam3_model(TINY, seed=SEED).state_dict(), seed=SEED)


@pytest.fixture(scope="module")
def model(state):
    return build_sam3_model(TINY, state)


@pytest.fixture(scope="module")
def family() -> Sam3Family:
    return get_family("sam3")


@pytest.fixture(scope="module")
def encoder(family, model):
    return family.encoder(model)


@pytest.fixture(scope="module")
def decoder(family, model):
    return family.decoder(model)


def _rgb(name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(shared_file("images", name)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def truck() -> np.ndarray:
    return _rgb("truck.jpg")


@pytest.fixture(scope="module")
def cars() -> np.ndarray:
    return _rgb("cars.jpg")


@pytest.fixture(scope="module")
def features(encoder, truck, cars) -> list[Sam3Features]:
    return encoder.encode_batch([truck, cars])


@pytest.fixture(scope="module")
def detector_ref(model, state):
    return detector_reference(model, state)

@pytest.fixture(scope="module")
def tracker_ref(model, state):
    return tracker_reference_model(model, state)

# ------------------------------------------------------------------------------------------- build and load
def test_strict_loading_rejects_missing_unexpected_and_misshapen_keys(state):
    build_sam3_model(TINY, state)  # the exact state dict loads
    missing = dict(state)
    missing.pop("tracker_neck.fpn_layers.0.proj1.weight")
    with pytest.raises(RuntimeError, match="Missing key"):
        build_sam3_model(TINY, missing)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        build_sam3_model(TINY, {**state, "detector_model.extra.weight": torch.zeros(1)})
    key = "detector_model.text_projection.weight"
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_sam3_model(TINY, {**state, key: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="seed"):
        build_sam3_model(TINY)
    with pytest.raises(ValueError, match="valid names"):
        build_sam3_model("sam3-huge", seed=0)


def test_seeded_random_weights_are_deterministic():
    before = torch.random.get_rng_state()
    a = build_sam3_model(TINY, seed=7).state_dict()
    b = build_sam3_model(TINY, seed=7).state_dict()
    c = build_sam3_model(TINY, seed=8).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
    random = [k for k in a if a[k].is_floating_point() and a[k].numel() > 1 and a[k].std() > 0]
    assert sum(not torch.equal(a[k], c[k]) for k in random) == len(random)


def test_registry_and_capabilities(family):
    assert isinstance(family_of("sam3"), Sam3Family) and family_of(TINY) is family
    spec = get_model_spec("sam3", "sam3")
    assert spec.url == "https://huggingface.co/facebook/sam3/resolve/main/model.safetensors"
    assert spec.gated and spec.file_format == "safetensors" and spec.image_size == 1008
    assert get_model_spec(TINY).url == "" and get_model_spec(TINY).sha256 is None
    caps = family.capabilities.as_dict()
    assert caps == {
        "points": True,
        "boxes": True,
        "mask_input": True,
        "multimask": True,
        "automatic_masks": True,
        "concept_prompts": True,
        "video": False,
    }
    assert family.feature_nbytes(spec) == feature_nbytes(1008) == 132_710_400


# ------------------------------------------------------------------------------------------------ tokenizer
def test_open_clip_vocabulary_is_meta_sam3s():
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SAM3_BPE_SHA256


def test_tokenize_ids_and_attention_mask():
    ids, mask = tokenize(["a photo of a cat", "Truck", "word " * 40])
    assert ids.shape == mask.shape == (3, 32)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] and not ids[0, 7:].any()
    assert mask[0].tolist() == [1] * 7 + [0] * 25
    assert mask[1].sum() == 3 and ids[1, 1] == tokenize(["truck"])[0][0, 1]  # lower-cased
    assert mask[2].all() and ids[2, -1] == 49407  # truncated, <end> last


def test_padding_ids_do_not_matter(decoder, features):
    """transformers' ``Sam3Processor`` pads with its CLIP tokenizer's pad token, Meta's tokenizer (and open_clip)
    with 0: the padded positions are masked everywhere, so the detector answers the same."""
    ids, mask = tokenize(["truck"])
    other = torch.where(mask.bool(), ids, torch.full_like(ids, 49407))
    with torch.inference_mode():
        a = decoder.detector(vision_embeds=decoder._vision_embeds(features[0], 1), input_ids=ids, attention_mask=mask)
        b = decoder.detector(vision_embeds=decoder._vision_embeds(features[0], 1), input_ids=other, attention_mask=mask)
    for name in ("pred_logits", "presence_logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- encode
def test_encode_once_serves_both_heads(model, features, truck, cars, tracker_ref):
    """The stored features are the detector's FPN levels 0-2 and the tracker's inputs, from one ViT pass,
    with transformers' preprocessing."""
    pixels = image_processor(224)(images=[truck, cars], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        fpn = model.detector_model.get_vision_features(pixel_values=pixels).fpn_hidden_states
        trk = tracker_ref.get_image_features(pixels).fpn_hidden_states  # (h*w, N, c) each
    for i, f in enumerate(features):
        assert f.orig_hw == (truck, cars)[i].shape[:2]
        for lvl in range(3):
            np.testing.assert_allclose(f.detector_fpn[lvl], fpn[lvl][i].numpy(), atol=1e-5)
        for got, want in zip(f.tracker_high_res, trk[:2]):
            np.testing.assert_allclose(got, want[:, i].T.reshape(got.shape).numpy(), atol=1e-5)
        want = trk[2][:, i].T.reshape(f.tracker_embed.shape) + tracker_ref.no_memory_embedding.reshape(-1, 1, 1)
        np.testing.assert_allclose(f.tracker_embed, want.detach().numpy(), atol=1e-5)
        assert f.nbytes == feature_nbytes(224, 32)


# -------------------------------------------------------------------------------------------------- concepts


def _assert_same_instances(got, want) -> None:
    assert len(got.scores) == len(want["scores"]) > 0
    np.testing.assert_allclose(got.scores, want["scores"], atol=1e-4)
    np.testing.assert_allclose(got.boxes_xyxy, want["boxes"], atol=1e-2)
    assert all(mask_iou(a, b.astype(bool)) >= 0.999 for a, b in zip(got.masks, want["masks"]))


def test_concept_prompts_match_sam3model(decoder, features, truck, cars, detector_ref):
    """Text, text + boxes, positive and negative boxes, boxes alone, on two photos; the prompts of one image
    in one call (batched by kind); every answer equals Sam3Model + post_process_instance_segmentation."""
    box = np.array([TRUCK_BOX], np.float32)
    both = np.array([TRUCK_BOX, [100, 100, 300, 300]], np.float32)
    prompts = [
        ConceptPrompt(text="truck"),
        ConceptPrompt(text="a wheel"),
        ConceptPrompt(text="truck", boxes_xyxy=box),
        ConceptPrompt(text="truck", boxes_xyxy=both, box_labels=np.array([1, 0])),
        ConceptPrompt(boxes_xyxy=box),
    ]
    car_prompts = [ConceptPrompt(text="car"), ConceptPrompt(text="road", score_thresh=0.6, max_instances=2)]
    got = decoder.segment_concepts([ConceptRequest(features[0], prompts), ConceptRequest(features[1], car_prompts)])
    assert [len(g) for g in got] == [5, 2]
    for g, p in zip(got[0], prompts):
        _assert_same_instances(g, concept_reference(detector_ref, truck, p))
        assert g.masks.shape[1:] == truck.shape[:2] and (np.diff(g.scores) <= 0).all()
    _assert_same_instances(got[1][0], concept_reference(detector_ref, cars, car_prompts[0]))
    capped = concept_reference(detector_ref, cars, car_prompts[1])
    assert len(got[1][1].scores) == min(2, len(capped["scores"]))
    np.testing.assert_allclose(got[1][1].scores, capped["scores"][:2], atol=1e-4)
    # non-vacuous: the prompts answer differently
    assert len({tuple(np.round(g.scores, 4)) for g in got[0]}) == len(prompts)


# ---------------------------------------------------------------------------------------- clicks and boxes


def test_clicks_and_boxes_match_sam3trackermodel(decoder, features, truck, tracker_ref):
    click = PromptSpec(point_coords=CLICK, point_labels=np.ones(1, np.int32))
    two = PromptSpec(
        point_coords=np.array([[900, 560], [300, 900]], np.float32), point_labels=np.array([1, 0], np.int32)
    )
    box = PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32))
    box_click = PromptSpec(
        box_xyxy=np.array(TRUCK_BOX, np.float32), point_coords=CLICK, point_labels=np.ones(1, np.int32)
    )
    prompts = [click, two, box, box_click, click, box]
    flags = [True, True, True, True, False, False]
    got = decoder.predict_batch([DecodeRequest(features[0], prompts, flags)])[0]
    for g, p, multimask in zip(got, prompts, flags):
        masks, iou = tracker_reference(
            tracker_ref, truck, multimask, p.point_coords, p.point_labels, None if p.box_xyxy is None else p.box_xyxy
        )
        assert g.masks.shape == masks.shape == ((3 if multimask else 1), *truck.shape[:2])
        assert all(mask_iou(a, b) >= 0.999 for a, b in zip(g.masks, masks))
        np.testing.assert_allclose(g.predicted_iou, iou, atol=1e-4)
        assert g.low_res_logits.shape == (len(masks), 256, 256) and np.abs(g.low_res_logits).max() <= 32
    # non-vacuous: partial masks that differ between prompts and candidates, with a stability score
    assert all(0.01 < m.mean() < 0.99 for m in got[0].masks) and (got[0].stability_score > 0).all()
    assert mask_iou(got[0].masks[0], got[2].masks[0]) < 0.99 and mask_iou(got[0].masks[0], got[0].masks[1]) < 0.99

    # mask_input: the 256x256 logits of an earlier answer, with a click (and alone)
    prev = got[0].low_res_logits[int(np.argmax(got[0].predicted_iou))]
    again = [
        PromptSpec(point_coords=CLICK, point_labels=np.ones(1, np.int32), mask_input=prev),
        PromptSpec(mask_input=prev),
    ]
    for g, p in zip(decoder.predict_batch([DecodeRequest(features[0], again, False)])[0], again):
        masks, iou = tracker_reference(tracker_ref, truck, False, p.point_coords, p.point_labels, mask_input=prev)
        assert mask_iou(g.masks[0], masks[0]) >= 0.999
        np.testing.assert_allclose(g.predicted_iou, iou, atol=1e-4)


def test_prompts_on_several_images_in_one_call(decoder, features):
    """Prompts of two images grouped into one forward pass answer as each image alone."""
    click = PromptSpec(point_coords=CLICK, point_labels=np.ones(1, np.int32))
    box = PromptSpec(box_xyxy=np.array([50, 60, 400, 300], np.float32))
    together = decoder.predict_batch([DecodeRequest(f, [click, box], True) for f in features])
    for f, got in zip(features, together):
        alone = decoder.predict_batch([DecodeRequest(f, [click, box], True)])[0]
        for a, b in zip(got, alone):
            assert mask_iou(a.masks[0], b.masks[0]) >= 0.999
            np.testing.assert_allclose(a.predicted_iou, b.predicted_iou, atol=1e-5)
    assert np.abs(together[0][0].predicted_iou - together[1][0].predicted_iou).max() > 1e-3  # two images


def test_transformers_image_tracker_drops_the_no_memory_embedding(model, decoder, features, truck, tracker_ref):
    """``Sam3TrackerModel(pixel_values=...)`` adds ``no_memory_embedding`` to the 4th FPN level, which it then
    drops: its answer is ours with that embedding at zero, and differs from ours (Meta's) otherwise."""
    from transformers import Sam3TrackerProcessor

    proc = Sam3TrackerProcessor(image_processor=image_processor(224))
    inputs = proc(images=truck, input_points=[[CLICK.tolist()]], input_labels=[[[1]]], return_tensors="pt")
    with torch.inference_mode():
        hf = tracker_ref(
            pixel_values=inputs["pixel_values"],
            input_points=inputs["input_points"],
            input_labels=inputs["input_labels"],
        )
    hf_masks = proc.post_process_masks(hf.pred_masks, inputs["original_sizes"])[0][0].numpy()
    click = PromptSpec(point_coords=CLICK, point_labels=np.ones(1, np.int32))
    ours = decoder.predict(features[0], click, True)
    f = features[0]
    no_mem = model.tracker_model.no_memory_embedding.detach().numpy().reshape(-1, 1, 1)
    zeroed = Sam3Features(f.detector_fpn, f.tracker_embed - no_mem, f.tracker_high_res, f.orig_hw)
    without = decoder.predict(zeroed, click, True)
    assert all(mask_iou(a, b) >= 0.999 for a, b in zip(without.masks, hf_masks))
    np.testing.assert_allclose(without.predicted_iou, hf.iou_scores[0, 0].numpy(), atol=1e-4)
    assert np.abs(ours.low_res_logits - without.low_res_logits).max() > 0.1


def test_automatic_masks_run_on_sam3(decoder, features):
    from models.amg import AmgSettings, generate_masks

    masks = generate_masks(
        decoder, features[0], AmgSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    )
    assert masks and all(m.rle["size"] == list(features[0].orig_hw) for m in masks)


def test_decoder_after_dropping_the_image_encoder(family, state, features):
    model = build_sam3_model(TINY, state)
    full = family.decoder(model)
    prompt = PromptSpec(point_coords=CLICK, point_labels=np.ones(1, np.int32))
    concept = [ConceptRequest(features[0], [ConceptPrompt(text="truck")])]
    before, before_c = full.predict(features[0], prompt, True), full.segment_concepts(concept)[0][0]
    family.drop_image_encoder(model)
    assert model.tracker_neck is None and model.detector_model.vision_encoder.backbone is None
    dec = family.decoder(model)
    after, after_c = dec.predict(features[0], prompt, True), dec.segment_concepts(concept)[0][0]
    assert np.array_equal(before.masks, after.masks) and np.array_equal(before_c.scores, after_c.scores)


# ------------------------------------------------------------------------------------------ full-size smoke
@pytest.fixture
def default_threads(one_torch_thread):
    """The process's own thread count, for the full-size smoke."""
    torch.set_num_threads(one_torch_thread)
    yield
    torch.set_num_threads(1)


@pytest.mark.slow
def test_full_size_sam3_random_weights_smoke(family, truck, default_threads):
    """facebook/sam3's architecture (Sam3VideoConfig defaults, 1008 px) with random weights: its keys are the
    hub layout, one encode of truck.jpg and a text prompt; prints the CPU encode time."""
    spec = get_model_spec("sam3")
    t0 = time.perf_counter()
    model = family.build(spec, None, seed=0, device="cpu")
    build_s = time.perf_counter() - t0
    keys = model.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"detector_model", "tracker_model", "tracker_neck"}
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    encoder, decoder = family.encoder(model), family.decoder(model)
    t0 = time.perf_counter()
    f = encoder.encode(truck)
    encode_s = time.perf_counter() - t0
    assert f.nbytes == family.feature_nbytes(spec) == 132_710_400
    t0 = time.perf_counter()
    got = decoder.segment_concepts(
        [ConceptRequest(f, [ConceptPrompt(text="truck", score_thresh=0.0, max_instances=5)])]
    )
    text_s = time.perf_counter() - t0
    assert got[0][0].masks.shape == (5, *truck.shape[:2])
    t0 = time.perf_counter()
    decoder.predict(f, PromptSpec(point_coords=CLICK, point_labels=np.ones(1, np.int32)), True)
    click_s = time.perf_counter() - t0
    print(
        f"\nsam3 full size, CPU ({torch.get_num_threads()} threads): {params_m:.1f}M params, build {build_s:.1f} s, "
        f"encode {encode_s:.1f} s, text prompt {text_s:.2f} s, click {click_s:.2f} s, features {f.nbytes / 1e6:.1f} MB"
    )
