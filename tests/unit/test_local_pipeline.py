"""The in-process API (no Ray) over the same models/ code: segment, examples, predict, text."""

from __future__ import annotations

import numpy as np
import pytest

from deployments.errors import OutOfImage
from models.amg import AmgSettings
from models.prompts import Prompt, PromptError
from serve_app.local import LocalPipeline
from tests.conftest import TRUCK_BOX, mask_iou


@pytest.fixture(scope="module")
def pipe():
    from deployments.runtime.vectorstore import ExampleStore
    from models.embedder import build_clip
    from models.sam2_decoder import Sam2MaskDecoder
    from models.sam2_image import Sam2ImageEncoder, build_sam2_model

    sam = build_sam2_model("sam2.1_hiera_tiny", seed=0)
    amg = AmgSettings(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    return LocalPipeline(
        Sam2ImageEncoder(sam),
        Sam2MaskDecoder(sam),
        build_clip("ViT-B-32", seed=0),
        ExampleStore(in_memory=True),
        amg=amg,
    )


def test_segment_equals_the_reference_predictor(pipe, truck_rgb):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    (pred,) = pipe.segment(truck_rgb, [Prompt(box_xyxy=TRUCK_BOX)])
    assert pred.masks.shape == (1, *truck_rgb.shape[:2]) and pred.masks.any()
    reference = SAM2ImagePredictor(pipe.encoder.model)  # Meta's predictor on the very same weights
    reference.set_image(truck_rgb)
    masks, iou, _ = reference.predict(box=np.array(TRUCK_BOX, np.float32), multimask_output=False)
    assert mask_iou(pred.masks[0], masks[0].astype(bool)) >= 0.999
    assert pred.predicted_iou[0] == pytest.approx(iou[0], abs=1e-4)


def test_examples_then_predict_and_text(pipe, truck_rgb):
    ids = pipe.add_example(truck_rgb, "truck", box_xyxy=TRUCK_BOX, collection="local")
    pipe.add_example(truck_rgb, "window", points=[[500, 375, 1]], collection="local")
    assert len(ids) == 1 and pipe.store.counts("local") == {"truck": 1, "window": 1}
    found = pipe.predict(truck_rgb, collection="local", top_k=2, max_instances=3)
    assert found and all(i["label"] in ("truck", "window") for i in found)
    assert all({n["label"] for n in i["neighbors"]} == {"truck", "window"} for i in found)
    ranked = pipe.find_by_text(truck_rgb, "a truck", max_masks=2)
    assert 1 <= len(ranked) <= 2 and ranked[0]["text_score"] >= ranked[-1]["text_score"]


def test_examples_of_another_embedder_are_refused(pipe, truck_rgb):
    """The in-process API names its embedder to the store: a collection another embedder made refuses
    its examples, even at the same dimension."""
    from deployments.errors import EmbedderMismatch

    ours, theirs = "open_clip:ViT-B-32:@random:seed0", "open_clip:ViT-B-32:@random:seed1"
    local = LocalPipeline(pipe.encoder, pipe.decoder, pipe.embedder, pipe.store, amg=pipe.amg, embedder_id=ours)
    image = np.ascontiguousarray(truck_rgb[300:556, 100:356])  # small: the fade's cost is per pixel
    mask = np.zeros(image.shape[:2], bool)
    mask[50:200, 30:220] = True
    local.add_example(image, "truck", mask=mask, collection="mine")
    assert pipe.store.embedder("mine") == ours
    pipe.store.add("theirs", np.ones((1, pipe.embedder.dim), np.float32), ["x"], embedder=theirs)
    with pytest.raises(EmbedderMismatch, match="seed1"):
        local.add_example(image, "truck", mask=mask, collection="theirs")
    assert pipe.store.counts("theirs") == {"x": 1}  # (predict's search passes embedder_id the same way)


def test_needs_embedder_and_store(truck_rgb, pipe):
    bare = LocalPipeline(pipe.encoder, pipe.decoder)
    with pytest.raises(ValueError, match="embedder and a store"):
        bare.predict(truck_rgb)


def test_segment_takes_prompt_dicts_and_names_the_field_at_fault(pipe, truck_rgb):
    """Dicts in ``/v1/segment``'s form give the masks of the same :class:`Prompt`; a bad one is refused
    before any encoding, naming its field."""
    click = Prompt(point_coords=[[900, 500]], point_labels=[1])
    as_dict, as_prompt = pipe.segment(truck_rgb, [{"points": [[900, 500, "fg"]]}, click])  # one encode
    assert as_dict.masks.shape[0] == 3  # a lone click: SAM's three candidates
    np.testing.assert_array_equal(as_dict.masks, as_prompt.masks)
    with pytest.raises(PromptError, match=r"prompts\[1\]\.box_xyxy: x1 must be greater than x0") as info:
        pipe.segment(truck_rgb, [{"box_xyxy": TRUCK_BOX}, {"box_xyxy": [30, 0, 10, 5]}])
    assert info.value.field == "prompts[1].box_xyxy"
    h, w = truck_rgb.shape[:2]
    with pytest.raises(OutOfImage) as out:
        pipe.segment(truck_rgb, [Prompt(box_xyxy=[0, 0, w + 10, 10])])
    assert out.value.field == "prompts[0].box_xyxy"
