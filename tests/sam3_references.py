"""transformers' own SAM 3 classes as references on the weights of a samgraph SAM 3 model: ``Sam3Model`` for
concept prompts and ``Sam3TrackerModel`` (its own vision encoder: the detector's ViT and the tracker neck, the
weights renamed as transformers' ``sam3_tracker`` conversion mapping does) for clicks and boxes. Shared by
``tests/unit/test_sam3.py`` and ``tests/integration/test_model_families.py``."""

from __future__ import annotations

import re

import torch

from models.sam3 import image_processor, tokenize
from models.segmenter import ConceptPrompt


def detector_reference(model, state):
    """transformers' ``Sam3Model`` alone, from the ``detector_model.*`` weights (strictly)."""
    from transformers import Sam3Model

    ref = Sam3Model(model.config.detector_config).eval()
    ref.load_state_dict(
        {k.removeprefix("detector_model."): v for k, v in state.items() if k.startswith("detector_model.")}
    )
    return ref



def tracker_reference_model(model, state):
    """transformers' ``Sam3TrackerModel`` with its own vision encoder, the weights renamed as transformers'
    conversion mapping for ``sam3_tracker`` does; the keys it does not take must be those its
    ``_keys_to_ignore_on_load_unexpected`` names (the video tracker's memory modules)."""
    from transformers import Sam3TrackerConfig, Sam3TrackerModel

    trk = model.config.tracker_config
    config = Sam3TrackerConfig(
        vision_config=model.config.detector_config.vision_config.to_dict(),
        prompt_encoder_config=trk.prompt_encoder_config.to_dict(),
        mask_decoder_config=trk.mask_decoder_config.to_dict(),
    )
    config.vision_config.backbone_feature_sizes = trk.vision_config.backbone_feature_sizes
    ref = Sam3TrackerModel(config).eval()
    renamed = {}
    for k, v in state.items():
        if k.startswith("detector_model.vision_encoder.backbone."):
            renamed[k.replace("detector_model.vision_encoder.backbone.", "vision_encoder.backbone.")] = v
        elif k.startswith("tracker_neck."):
            renamed["vision_encoder.neck." + k.removeprefix("tracker_neck.")] = v
        elif k.startswith("tracker_model."):
            renamed[k.removeprefix("tracker_model.")] = v
    missing, unexpected = ref.load_state_dict(renamed, strict=False)
    assert not missing
    ignored = Sam3TrackerModel._keys_to_ignore_on_load_unexpected
    assert unexpected and all(any(re.search(p, k) for p in ignored) for k in unexpected), unexpected
    return ref



def concept_reference(detector_ref, image, prompt: ConceptPrompt, image_size: int = 224) -> dict:
    """``Sam3Model`` + ``Sam3ImageProcessor.post_process_instance_segmentation`` on one image and concept:
    ``{"scores", "boxes", "masks"}`` best score first (masks (N, H, W) bool)."""
    from transformers.models.sam3.processing_sam3 import box_xyxy_to_cxcywh

    pixels = image_processor(image_size)(images=[image], return_tensors="pt")["pixel_values"]
    ids, mask = tokenize([prompt.text or "visual"])
    kwargs = {}
    if prompt.boxes_xyxy is not None:
        h, w = image.shape[:2]
        boxes = torch.as_tensor(prompt.boxes_xyxy) / torch.tensor([w, h, w, h], dtype=torch.float32)
        kwargs = {
            "input_boxes": box_xyxy_to_cxcywh(boxes)[None],
            "input_boxes_labels": torch.as_tensor(prompt.box_labels)[None],
        }
    with torch.inference_mode():
        out = detector_ref(pixel_values=pixels, input_ids=ids, attention_mask=mask, **kwargs)
    res = image_processor(image_size).post_process_instance_segmentation(
        out, threshold=prompt.score_thresh, mask_threshold=0.5, target_sizes=[image.shape[:2]]
    )[0]
    order = torch.argsort(res["scores"], descending=True)
    return {k: (v[order] > 0 if k == "masks" else v[order]).numpy() for k, v in res.items()}



def tracker_reference(
    tracker_ref, image, multimask, points=None, labels=None, box=None, mask_input=None, image_size: int = 224
):
    """``Sam3TrackerModel.forward(image_embeddings=...)`` with the embeddings of its own vision encoder, the
    no-memory embedding on the 72x72 (here 16x16) level as Meta adds it, and ``post_process_masks``."""
    from transformers import Sam3TrackerProcessor

    proc = Sam3TrackerProcessor(image_processor=image_processor(image_size))
    kw = {}
    if points is not None:
        kw |= {"input_points": [[points.tolist()]], "input_labels": [[labels.tolist()]]}
    if box is not None:
        kw["input_boxes"] = [[box.tolist()]]
    inputs = proc(images=image, return_tensors="pt", **kw)
    with torch.inference_mode():
        maps = tracker_ref.get_image_features(inputs["pixel_values"]).fpn_hidden_states[:3]
        sizes = tracker_ref.backbone_feature_sizes
        embeds = [m.permute(1, 2, 0).reshape(1, -1, *s) for m, s in zip(maps, sizes)]
        embeds[-1] = embeds[-1] + tracker_ref.no_memory_embedding.reshape(1, -1, 1, 1)
        masks = None if mask_input is None else torch.as_tensor(mask_input)[None, None]
        out = tracker_ref(
            image_embeddings=embeds,
            input_points=inputs.get("input_points"),
            input_labels=inputs.get("input_labels"),
            input_boxes=inputs.get("input_boxes"),
            input_masks=masks,
            multimask_output=multimask,
        )
    full = proc.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0]
    return full.numpy(), out.iou_scores[0, 0].numpy()

