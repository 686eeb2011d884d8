"""SAM 3 (Meta, Nov 2025) through Hugging Face ``transformers`` behind the family seam (:mod:`models.segmenter`).

One module for the family: the model builder, the image encoder, the decoder of clicks/boxes (the tracker
head) and of concept prompts (the detector), and :class:`Sam3Family`.

**Model.** :func:`build_sam3_model` builds ``transformers.Sam3VideoModel``, whose state dict is the layout of
``facebook/sam3`` on the hub (``detector_model.*`` = ``Sam3Model``, ``tracker_model.*`` =
``Sam3TrackerVideoModel`` without its vision encoder, ``tracker_neck.*`` = the tracker's FPN neck over the
shared ViT). The official ``model.safetensors`` is that state dict (the classes tie no weights), so it loads
with ``strict=True``: a missing, unexpected or misshapen key raises. (``Sam3Model`` alone ignores
``tracker_*`` keys and ``Sam3TrackerModel`` alone ignores ``detector_model.*`` and the memory keys when
``from_pretrained`` loads them; the whole video model ignores nothing, so strict loading means every key has
a home.) The memory attention/encoder of the tracker are loaded but unused here (video is future work).

**One encode for both prompt kinds** (:class:`Sam3ImageEncoder`): the ViT runs once per image; the detector
neck (``Sam3Model`` uses levels 0-2 of its FPN, ``fpn_hidden_states[:-1]``) and the tracker neck with the
tracker's ``conv_s0``/``conv_s1`` projections (``Sam3VideoModel.get_vision_features_for_tracker``) both run in
the encode. Preprocessing is ``transformers.Sam3ImageProcessor`` itself (resize to the model side, rescale to
[0, 1], normalise with mean = std = 0.5).

**Clicks and boxes** (:meth:`Sam3MaskDecoder.predict_batch`) run the tracker's prompt encoder and mask decoder
on the stored tracker features, as ``Sam3TrackerModel.forward(image_embeddings=...)`` does, with the masks
upsampled as ``Sam3TrackerProcessor.post_process_masks`` does (bilinear to the original size, logits > 0).
One difference from ``Sam3TrackerModel``'s own ``pixel_values`` path: there, ``no_memory_embedding`` is added
to the 4th FPN level (scale 0.5) which ``zip(..., backbone_feature_sizes)`` then drops, so it never reaches
the decoder; Meta's SAM 3 (``sam1_task_predictor.py``: ``vision_feats[-1] + no_mem_embed`` after ``scalp=1``)
and transformers' own video tracker (``Sam3TrackerVideoModel``, conditioning frames) add it to the 72x72
level the decoder reads. We follow Meta and the video tracker. The tests check both facts.

**Concept prompts** (:meth:`Sam3MaskDecoder.segment_concepts`) run ``Sam3Model.forward(vision_embeds=...)``
with the phrase tokenized by open_clip's CLIP BPE tokenizer (the same vocabulary file as Meta's
``sam3/assets/bpe_simple_vocab_16e6.txt.gz``, context length 32) and the example boxes normalised cxcywh,
and turn ``pred_logits``, ``presence_logits``, ``pred_boxes`` and ``pred_masks`` into instances as
``Sam3Processor.post_process_instance_segmentation`` does (score = sigmoid(logit) * sigmoid(presence);
mask = bilinear upsampling of sigmoid(mask logits) > 0.5; boxes scaled to pixels). Boxes without a text use
the phrase ``"visual"``, as ``Sam3Processor`` does.

Coordinates are pixels of the original image, (x, y) with x to the right and y down; boxes are XYXY.
Pure torch/numpy: no file or network I/O (open_clip reads its own packaged vocabulary file).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.accel import AccelSettings, accelerate
from models.prompts import LOW_RES_MASK_SIZE, PromptSpec
from models.registry import get_model_spec
from models.segmenter import (
    Capabilities,
    ConceptPrediction,
    ConceptPrompt,
    ConceptRequest,
    DecodeRequest,
    DecoderParts,
    DecoderSettings,
    EncoderParts,
    MaskPrediction,
    ModelSpec,
    SegmenterFamily,
    build_with_weights,
    check_images,
)

#: ``ModelSpec.config`` names of the two architectures.
FULL_CONFIG = "sam3_video"
TINY_CONFIG = "sam3_video_tiny"
#: Context length of SAM 3's CLIP text encoder (``text_config.max_position_embeddings``).
TEXT_CONTEXT_LENGTH = 32
#: The phrase ``Sam3Processor`` gives a prompt of example boxes without text.
VISUAL_PROMPT_TEXT = "visual"
#: Threshold of the sigmoid mask probabilities (``post_process_instance_segmentation``'s default).
CONCEPT_MASK_THRESHOLD = 0.5
_PATCH = 14  # ViT patch side of every SAM 3 config here


# ---------------------------------------------------------------------------------------------------- configs
def _tiny_config_dict() -> dict:
    """The tiny architecture: a 2-layer 64-wide ViT at 224 px (a 16x16 token grid), 32-wide necks and heads,
    a 1-layer 32-wide CLIP text encoder (full 49408 vocabulary), a 1+2-layer DETR with 20 queries, a
    1-layer memory attention. Builds in about 0.05 s; for tests and CPU smoke runs (random weights only)."""
    side, hidden = 224, 32
    vision = {
        "model_type": "sam3_vision_model",
        "fpn_hidden_size": hidden,
        "backbone_config": {
            "model_type": "sam3_vit_model",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": side,
            "patch_size": _PATCH,
            "window_size": 8,
            "global_attn_indexes": [1],
            "pretrain_image_size": side,
        },
    }
    small = {"hidden_size": hidden, "num_attention_heads": 2, "intermediate_size": 64}
    detector = {
        "model_type": "sam3",
        "vision_config": vision,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": 49408,
            "hidden_size": hidden,
            "intermediate_size": 64,
            "projection_dim": hidden,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": TEXT_CONTEXT_LENGTH,
            "hidden_act": "gelu",
        },
        "geometry_encoder_config": {**small, "num_layers": 1},
        "detr_encoder_config": {**small, "num_layers": 1},
        "detr_decoder_config": {**small, "num_layers": 2, "num_queries": 20},
        "mask_decoder_config": {"hidden_size": hidden, "num_attention_heads": 2},
    }
    tracker = {
        "model_type": "sam3_tracker_video",
        "vision_config": vision,
        "prompt_encoder_config": {"hidden_size": hidden, "image_size": side, "patch_size": _PATCH},
        "mask_decoder_config": {
            "hidden_size": hidden,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": hidden,
        },
        "memory_attention_hidden_size": hidden,
        "memory_attention_num_layers": 1,
        "memory_attention_feed_forward_hidden_size": 64,
        "memory_attention_rope_feat_sizes": [side // _PATCH] * 2,
        "memory_encoder_hidden_size": hidden,
        "memory_encoder_output_channels": 16,
        "mask_downsampler_embed_dim": hidden,
        "memory_fuser_num_layers": 1,
        "memory_fuser_embed_dim": hidden,
        "memory_fuser_intermediate_dim": 64,
        "image_size": side,
    }
    return {"detector_config": detector, "tracker_config": tracker}


def sam3_config(name: str):
    """The ``transformers.Sam3VideoConfig`` of an architecture.

    Args:
        name: :data:`FULL_CONFIG` (the defaults, which are ``facebook/sam3``: ViT-L/14 at 1008 px, 32 layers,
            a 24-layer CLIP text encoder, 6+6-layer DETR with 200 queries) or :data:`TINY_CONFIG`.

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    from transformers import Sam3VideoConfig

    if name == FULL_CONFIG:
        return Sam3VideoConfig()
    if name == TINY_CONFIG:
        return Sam3VideoConfig(**_tiny_config_dict())
    raise ValueError(f"unknown SAM 3 config {name!r}; valid configs: {FULL_CONFIG}, {TINY_CONFIG}")


def build_sam3_model(
    name: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build a SAM 3 model (``transformers.Sam3VideoModel``) from the registry, with given or seeded random weights.

    Args:
        name: registry name (``"sam3"``, ``"sam3-tiny"``).
        state_dict: the weights in the layout of ``facebook/sam3``'s ``model.safetensors``. Loaded strictly.
        seed: with ``state_dict=None``, the seed of the random initialisation (required then). The global
            torch RNG is left as it was (``torch.random.fork_rng``).
        device: torch device to place the model on.

    Returns:
        The ``Sam3VideoModel`` in eval mode.

    Raises:
        ValueError: unknown ``name``, or neither ``state_dict`` nor ``seed`` given.
        RuntimeError: ``state_dict`` has missing or unexpected keys or wrong shapes.
    """
    spec = get_model_spec(name, "sam3")
    from transformers import Sam3VideoModel  # heavy: import on use only

    config = sam3_config(spec.config)
    return build_with_weights(lambda: Sam3VideoModel(config), state_dict, seed, device, "build_sam3_model")


#: What :func:`non_vacuous_heads` changes: state-dict key -> (scale of the tensor or None, value to fill or None).
NON_VACUOUS_HEADS: dict[str, tuple[float | None, float | None]] = {
    "detector_model.dot_product_scoring.query_proj.weight": (100.0, None),
    "detector_model.detr_decoder.presence_head.layer3.bias": (None, 10.0),
    "tracker_model.mask_decoder.iou_prediction_head.proj_out.weight": (100.0, None),
    **{f"tracker_model.mask_decoder.output_hypernetworks_mlps.{i}.proj_out.weight": (1e5, None) for i in range(4)},
}


def non_vacuous_heads(state_dict: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random SAM 3 weights that give answers worth testing (a test helper; random weights only).

    With seeded random weights no concept instance scores above 0.5 (the query/text dot products are about
    0.01, the presence probability about 0.5) and click masks have logits of about 1e-3 (stability 0). This
    returns a copy of ``state_dict`` with the last layers of the heads rescaled (:data:`NON_VACUOUS_HEADS`):
    the detector's query projection x100 (instance logits spread over several units, so some instances
    score above 0.5 and the scores depend on the phrase), the presence head's last bias 10 (presence ~1),
    the tracker's hypernetwork outputs x1e5 (mask logits of about +-10, partial masks with a stability
    score) and IoU head x100 (candidates differ in predicted IoU); and ``no_memory_embedding`` (zero at
    initialisation) set to seeded N(0, 1) noise, so that tests see where it is added.

    Args:
        state_dict: weights of a :func:`build_sam3_model` model (any config).
        seed: seed of the ``no_memory_embedding`` noise.

    Returns:
        The new state dict (tensors of ``state_dict`` are not modified).
    """
    out = {k: v.clone() for k, v in state_dict.items()}
    for key, (scale, fill) in NON_VACUOUS_HEADS.items():
        if scale is not None:
            out[key].mul_(scale)
        if fill is not None:
            out[key].fill_(fill)
    key = "tracker_model.no_memory_embedding"
    out[key] = torch.randn(out[key].shape, generator=torch.Generator().manual_seed(seed), dtype=out[key].dtype)
    return out


# --------------------------------------------------------------------------------------------------- features
@dataclass(frozen=True)
class Sam3Features:
    """SAM 3 features of one image: what both heads read, batch dim dropped. ``g = image_size / 14``
    (72 at 1008 px), ``C`` = the FPN width (256 for ``facebook/sam3``).

    Attributes:
        detector_fpn: ((C, 4g, 4g), (C, 2g, 2g), (C, g, g)) float32, levels 0-2 of the detector's FPN neck
            (``Sam3VisionModel``'s ``fpn_hidden_states[:-1]``, what ``Sam3Model`` reads; its position
            encodings are a function of the shape and recomputed when decoding).
        tracker_embed: (C, g, g) float32, level 2 of the tracker neck plus ``no_memory_embedding``.
        tracker_high_res: ((C/8, 4g, 4g), (C/4, 2g, 2g)) float32, levels 0 and 1 of the tracker neck through
            the tracker mask decoder's ``conv_s0`` and ``conv_s1``.
        orig_hw: (height, width) of the original image in pixels.
    """

    detector_fpn: tuple[np.ndarray, np.ndarray, np.ndarray]
    tracker_embed: np.ndarray
    tracker_high_res: tuple[np.ndarray, np.ndarray]
    orig_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Total bytes of the arrays (132.7 MB at 1008 px; see :func:`feature_nbytes`)."""
        arrays = (*self.detector_fpn, self.tracker_embed, *self.tracker_high_res)
        return sum(a.nbytes for a in arrays)


def feature_nbytes(image_size: int = 1008, fpn_size: int = 256) -> int:
    """Bytes of one image's :class:`Sam3Features` (float32) for a model of input side ``image_size`` and FPN width
    ``fpn_size``: with g = side / 14, the detector's three levels C x (16 + 4 + 1) g^2 (111.5 MB at 1008 px,
    the figure of issue 21) and the tracker's C x g^2 + C/8 x 16 g^2 + C/4 x 4 g^2 (21.2 MB): 132.7 MB."""
    g2 = (image_size // _PATCH) ** 2
    detector = fpn_size * 21 * g2
    tracker = fpn_size * g2 + fpn_size // 8 * 16 * g2 + fpn_size // 4 * 4 * g2
    return 4 * (detector + tracker)


def _as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    # Arrays from Ray's object store are read-only views; we never write to them, so skip the copy.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array).to(device)


def image_processor(image_size: int):
    """``transformers.Sam3ImageProcessor`` for a model of input side ``image_size`` (its defaults otherwise:
    bilinear resize to a square, rescale by 1/255, normalise with mean = std = 0.5). Built offline."""
    from transformers import Sam3ImageProcessor

    return Sam3ImageProcessor(size={"height": image_size, "width": image_size})


class Sam3ImageEncoder(EncoderParts):
    """Batched SAM 3 image encoder: ViT once, then the detector neck and the tracker neck (+ projections).

    Args:
        model: a ``Sam3VideoModel`` from :func:`build_sam3_model`.
        accel: bf16 autocast / ``torch.compile`` for the encode (ViT and both necks); see :mod:`models.accel`.
            None: fp32 eager.
        on_fallback: called with a one-line message for each speed-up given up (the caller logs it).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        accel: AccelSettings | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.image_size = int(model.config.detector_config.vision_config.image_size)
        self.processor = image_processor(self.image_size)
        self._accelerated = accelerate(self._forward, self.device, accel, on_fallback, "image encoder")

    @property
    def device(self) -> torch.device:
        return next(self.model.detector_model.parameters()).device

    def _forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, s, s) -> [detector levels 0-2 (N, C, ., .), tracker embed (N, C, g, g), conv_s0, conv_s1]."""
        vision = self.model.detector_model.get_vision_features(pixel_values=pixel_values)
        feats, _ = self.model.get_vision_features_for_tracker(vision)  # each (h*w, N, c), high-res projected
        n, g = pixel_values.shape[0], self.image_size // _PATCH
        tracker = [f.permute(1, 2, 0).reshape(n, -1, g * k, g * k) for f, k in zip(feats, (4, 2, 1))]
        embed = tracker[2] + self.model.tracker_model.no_memory_embedding.reshape(1, -1, 1, 1)
        return [*vision.fpn_hidden_states[:3], embed, tracker[0], tracker[1]]

    @torch.inference_mode()
    def encode_batch(self, images: Sequence[np.ndarray]) -> list[Sam3Features]:
        """Encode several images in one forward pass.

        Args:
            images: each (H, W, 3) uint8 RGB in [0, 255]; sizes may differ (each is resized to the model's
                square input by ``Sam3ImageProcessor``).

        Returns:
            One :class:`Sam3Features` per image, in order.

        Raises:
            ValueError: an image is not (H, W, 3) uint8 with H, W > 0.
        """
        if not images:
            return []
        check_images(images)
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        outs = [t.float().cpu().numpy() for t in self._accelerated(pixels)]
        features = [
            Sam3Features(
                detector_fpn=(outs[0][i], outs[1][i], outs[2][i]),
                tracker_embed=outs[3][i],
                tracker_high_res=(outs[4][i], outs[5][i]),
                orig_hw=(int(images[i].shape[0]), int(images[i].shape[1])),
            )
            for i in range(len(images))
        ]
        assert len(features) == len(images)
        return features


# ---------------------------------------------------------------------------------------------------- decoder
def tokenize(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP BPE token ids of phrases, as SAM 3's text encoder takes them.

    open_clip's ``SimpleTokenizer`` with ``context_length=32`` and its default ``clean="lower"`` (Meta's
    ``sam3/model/tokenizer_ve.py`` is the same tokenizer with the same packaged vocabulary file and
    defaults): ``<start> tokens <end>`` then zeros, truncated to 32 with ``<end>`` last.

    Returns:
        (input_ids (K, 32) int64, attention_mask (K, 32) int64: 1 up to and including ``<end>``, then 0).
        Id 0 is a real token ("!"), so the mask is computed from the ``<end>`` position, not from the ids.
    """
    tokenizer = _tokenizer()
    ids = tokenizer(list(texts)).long()
    end = (ids == tokenizer.eot_token_id).int().argmax(dim=1, keepdim=True)
    mask = (torch.arange(ids.shape[1])[None] <= end).long()
    return ids, mask


@functools.lru_cache(maxsize=1)
def _tokenizer():
    """The open_clip tokenizer, made on first use (it reads its packaged vocabulary, about 0.3 s)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=TEXT_CONTEXT_LENGTH)


def box_xyxy_to_cxcywh_normalised(boxes_xyxy: np.ndarray, orig_hw: tuple[int, int]) -> torch.Tensor:
    """(K, 4) XYXY pixel boxes -> (K, 4) float32 (cx, cy, w, h) in [0, 1] of the original image, as
    ``Sam3Processor`` gives ``input_boxes`` (x / W, y / H, then cxcywh)."""
    h, w = orig_hw
    b = torch.as_tensor(np.asarray(boxes_xyxy, np.float32)).reshape(-1, 4) / torch.tensor([w, h, w, h])
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)


class Sam3MaskDecoder(DecoderParts):
    """Batched SAM 3 decoder over precomputed :class:`Sam3Features`: clicks and boxes through the tracker head,
    concept prompts through the detector. Implements :class:`models.segmenter.MaskDecoder` and
    :class:`models.segmenter.ConceptDecoder`.

    The ViT and necks are not used (a decoder replica may drop them, :meth:`Sam3Family.drop_image_encoder`).

    Args:
        model: a ``Sam3VideoModel`` from :func:`build_sam3_model`.
        settings: threshold and stability settings of click/box masks (concept masks use
            :data:`CONCEPT_MASK_THRESHOLD` on probabilities, as transformers does).
        accel: bf16 autocast / ``torch.compile`` for the tracker's mask decoder; see :mod:`models.accel`.
            None: fp32 eager. The concept path runs eager.
        on_fallback: called with a one-line message for each speed-up given up (the caller logs it).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        settings: DecoderSettings | None = None,
        accel: AccelSettings | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or DecoderSettings()
        self.detector = model.detector_model
        self.tracker = model.tracker_model
        self.image_size = int(model.config.detector_config.vision_config.image_size)
        self.position_encoding = self.detector.vision_encoder.neck.position_encoding  # parameter-free sine PE
        self._mask_decoder_call = accelerate(self.tracker.mask_decoder, self.device, accel, on_fallback, "mask decoder")

    @property
    def device(self) -> torch.device:
        return next(self.tracker.mask_decoder.parameters()).device

    def warm_up(self) -> None:
        """Decode one click on all-zero features so that compilation (lazy) and any fallback happen now."""
        g = self.image_size // _PATCH
        c = int(self.tracker.mask_decoder.hidden_size)
        zeros = Sam3Features(
            detector_fpn=tuple(np.zeros((c, g * k, g * k), np.float32) for k in (4, 2, 1)),  # type: ignore[arg-type]
            tracker_embed=np.zeros((c, g, g), np.float32),
            tracker_high_res=(
                np.zeros((c // 8, 4 * g, 4 * g), np.float32),
                np.zeros((c // 4, 2 * g, 2 * g), np.float32),
            ),
            orig_hw=(self.image_size, self.image_size),
        )
        s = self.image_size / 2
        self.predict(
            zeros, PromptSpec(point_coords=np.array([[s, s]], np.float32), point_labels=np.ones(1, np.int32)), True
        )

    # ------------------------------------------------------------------------------------ clicks and boxes
    def _scale(self, xy: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """(..., 2) pixel (x, y) -> the model's input frame (``Sam3TrackerProcessor._normalize_coordinates``)."""
        h, w = orig_hw
        out = xy.clone().float()
        out[..., 0] = out[..., 0] * (self.image_size / w)
        out[..., 1] = out[..., 1] * (self.image_size / h)
        return out

    def _decode(self, embed, high_res, points, labels, boxes, masks, multimask_output: bool):
        """The tracker head as ``Sam3TrackerModel.forward(image_embeddings=...)`` runs it.

        Args:
            embed: (B, C, g, g); high_res: [(B, C/8, 4g, 4g), (B, C/4, 2g, 2g)].
            points: (B, P, N, 2) model-frame pixels or None; labels: (B, P, N) int or None.
            boxes: (B, P, 4) model-frame XYXY or None; masks: (B, 1, h, w) logits or None.

        Returns:
            (low-res logits (B, P, C', 4g, 4g) float32, IoU (B, P, C') float32); C' = 3 or 1.
        """
        b = embed.shape[0]
        image_pe = self.tracker.get_image_wide_positional_embeddings().repeat(b, 1, 1, 1)
        if points is None and boxes is None:  # mask alone: one "not a point" (label -1), as transformers pads
            points = torch.zeros(b, 1, 1, 2, device=embed.device)
            labels = -torch.ones(b, 1, 1, dtype=torch.int32, device=embed.device)
        if masks is not None and masks.shape[-2:] != self.tracker.prompt_encoder.mask_input_size:
            masks = F.interpolate(
                masks.float(),
                size=self.tracker.prompt_encoder.mask_input_size,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        sparse, dense = self.tracker.prompt_encoder(
            input_points=points, input_labels=labels, input_boxes=boxes, input_masks=masks
        )
        low_res, iou, _, _ = self._mask_decoder_call(
            image_embeddings=embed,
            image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            high_resolution_features=list(high_res),
        )
        return low_res.float(), iou.float()

    @torch.inference_mode()
    def predict_batch(self, requests: Sequence[DecodeRequest]) -> list[list[MaskPrediction]]:
        """Masks for every prompt of every request (clicks, a box, ``mask_input``; the tracker head).

        Prompts are grouped by shape (clicks, box, mask input, multimask flag) so that each group is one
        decoder forward pass over many images (one prompt per batch row). Per prompt the answer equals
        ``Sam3TrackerModel.forward(image_embeddings=..., input_points=..., input_labels=..., input_boxes=...,
        input_masks=..., multimask_output=...)`` with ``Sam3TrackerProcessor``'s coordinates and
        ``post_process_masks`` (up to float rounding of batched kernels). ``multimask_output=False`` gets the
        tracker's dynamic fallback (``dynamic_multimask_via_stability``: the single-mask token unless its
        stability is below 0.98, then the best of the three candidates), as in SAM 2.

        ``low_res_logits`` and ``mask_input`` are 256x256 (the seam's size): SAM 3's own low-res masks are
        4g x 4g (288x288 at 1008 px); they are resampled to 256 (bilinear, antialiased) on the way out, and a
        256x256 ``mask_input`` is resampled to 4g x 4g on the way in, as ``Sam3TrackerModel.forward`` does.

        Args:
            requests: decoder jobs, each one image with its prompts.

        Returns:
            For each request, one :class:`MaskPrediction` per prompt, in order.
        """
        from sam2.utils.amg import calculate_stability_score

        results: list[list[MaskPrediction | None]] = [[None] * len(req.prompts) for req in requests]
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for r, req in enumerate(requests):
            for p, prompt in enumerate(req.prompts):
                n_points = 0 if prompt.point_coords is None else len(prompt.point_coords)
                key = (n_points, prompt.box_xyxy is not None, prompt.mask_input is not None, req.multimask_output[p])
                groups.setdefault(key, []).append((r, p))
        dev = self.device
        for (n_points, has_box, has_mask, multimask), members in groups.items():
            feats = [requests[r].features for r, _ in members]
            embed = torch.stack([_as_tensor(f.tracker_embed, dev) for f in feats])
            high_res = [torch.stack([_as_tensor(f.tracker_high_res[lvl], dev) for f in feats]) for lvl in (0, 1)]
            prompts = [requests[r].prompts[p] for r, p in members]
            points = labels = boxes = masks = None
            if n_points:
                points = torch.stack(
                    [self._scale(torch.as_tensor(q.point_coords), f.orig_hw) for q, f in zip(prompts, feats)]
                )[:, None].to(dev)
                labels = torch.stack([torch.as_tensor(q.point_labels, dtype=torch.int32) for q in prompts])[:, None].to(
                    dev
                )
            if has_box:
                boxes = torch.stack(
                    [
                        self._scale(torch.as_tensor(q.box_xyxy).reshape(2, 2), f.orig_hw).reshape(4)
                        for q, f in zip(prompts, feats)
                    ]
                )[:, None].to(dev)
            if has_mask:
                masks = torch.stack([torch.as_tensor(q.mask_input, dtype=torch.float32) for q in prompts])[:, None].to(
                    dev
                )
            low_res, iou = self._decode(embed, high_res, points, labels, boxes, masks, multimask)
            low_res, iou = low_res[:, 0], iou[:, 0]  # (B, C', 4g, 4g), (B, C')
            for k, (r, p) in enumerate(members):
                logits = self.upsample_logits(low_res[k], feats[k].orig_hw)
                stability = calculate_stability_score(
                    logits, self.settings.mask_threshold, self.settings.stability_score_offset
                )
                results[r][p] = MaskPrediction(
                    masks=(logits > self.settings.mask_threshold).cpu().numpy(),
                    predicted_iou=iou[k].cpu().numpy(),
                    stability_score=stability.float().cpu().numpy(),
                    low_res_logits=self._to_seam_size(low_res[k]).clamp(-32.0, 32.0).cpu().numpy(),
                )
        return results  # type: ignore[return-value]

    @staticmethod
    def _to_seam_size(low_res: torch.Tensor) -> torch.Tensor:
        """(C, h, w) native low-res logits -> (C, 256, 256) (bilinear, antialiased), the seam's ``mask_input``."""
        if low_res.shape[-2:] == (LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE):
            return low_res
        size = (LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)
        return F.interpolate(low_res[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]

    @torch.inference_mode()
    def decode_points(
        self, features: Sam3Features, point_coords: np.ndarray, multimask_output: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One foreground click per prompt on one image, in one forward pass (the automatic-mask grid).

        Args:
            features: the image's features.
            point_coords: (B, 2) float (x, y) pixels of the original image, one click per prompt.
            multimask_output: three candidates per click (True) or one.

        Returns:
            (low-res logits (B, C', 4g, 4g) float32, predicted IoU (B, C') float32), torch tensors, at SAM 3's
            native low-res side (288 at 1008 px, not 256); upsample with :meth:`upsample_logits`.
        """
        dev = self.device
        xy = self._scale(torch.as_tensor(np.asarray(point_coords), dtype=torch.float), features.orig_hw)
        points = xy[None, :, None, :].to(dev)  # (1, B, 1, 2): one image, B prompts of one click
        labels = torch.ones(points.shape[:3], dtype=torch.int32, device=dev)
        embed = _as_tensor(features.tracker_embed, dev)[None]
        high_res = [_as_tensor(h, dev)[None] for h in features.tracker_high_res]
        low_res, iou = self._decode(embed, high_res, points, labels, None, None, multimask_output)
        return low_res[0], iou[0]

    def upsample_logits(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """(N, h, w) low-res logits (any side) -> (N, H, W) float32 logits at the original size: bilinear,
        ``align_corners=False``, as ``Sam3TrackerProcessor.post_process_masks`` upsamples."""
        return F.interpolate(low_res[None].float(), size=tuple(orig_hw), mode="bilinear", align_corners=False)[0]

    # ------------------------------------------------------------------------------------ concept prompts
    def _vision_embeds(self, features: Sam3Features, n: int):
        """The detector's ``vision_embeds`` for ``n`` prompts on one image: levels 0-2 expanded to batch ``n``
        (no copy) with their sine position encodings; a placeholder 4th level, which ``Sam3Model`` drops."""
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        dev = self.device
        levels = [_as_tensor(f, dev)[None].expand(n, -1, -1, -1) for f in features.detector_fpn]
        pos = [self.position_encoding(lvl.shape, dev, lvl.dtype) for lvl in levels]
        return Sam3VisionEncoderOutput(fpn_hidden_states=(*levels, None), fpn_position_encoding=(*pos, None))

    @torch.inference_mode()
    def segment_concepts(self, requests: Sequence[ConceptRequest]) -> list[list[ConceptPrediction]]:
        """Every instance of each concept prompt of each request (the detector, ``Sam3Model``).

        The prompts of one image are grouped by kind (text alone; k example boxes) and each group is one
        ``Sam3Model.forward`` with the phrases batched (the class vocabulary of ``/v1/predict`` sends many
        phrases for one image). Per prompt the answer equals ``Sam3Model.forward(vision_embeds=...,
        input_ids=..., attention_mask=..., input_boxes=..., input_boxes_labels=...)`` followed by
        ``Sam3Processor.post_process_instance_segmentation(threshold=score_thresh, mask_threshold=0.5,
        target_sizes=[orig_hw])``, except: an instance scoring exactly ``score_thresh`` is kept (the seam's
        "at least"; transformers keeps strictly greater), and instances are sorted best first and cut at
        ``max_instances``.

        Returns:
            For each request, one :class:`ConceptPrediction` per prompt, in order.
        """
        results: list[list[ConceptPrediction | None]] = [[None] * len(req.prompts) for req in requests]
        for r, req in enumerate(requests):
            groups: dict[int, list[int]] = {}
            for p, prompt in enumerate(req.prompts):
                groups.setdefault(0 if prompt.boxes_xyxy is None else len(prompt.boxes_xyxy), []).append(p)
            for n_boxes, members in groups.items():
                prompts = [req.prompts[p] for p in members]
                outputs = self._detect(req.features, prompts, n_boxes)
                for k, p in enumerate(members):
                    results[r][p] = self._instances(outputs, k, prompts[k], req.features.orig_hw)
        return results  # type: ignore[return-value]

    def _detect(self, features: Sam3Features, prompts: Sequence[ConceptPrompt], n_boxes: int):
        """One ``Sam3Model.forward`` for prompts with the same number of example boxes (0: text only)."""
        dev = self.device
        ids, mask = tokenize([q.text if q.text is not None else VISUAL_PROMPT_TEXT for q in prompts])
        kwargs: dict[str, Any] = {}
        if n_boxes:
            kwargs["input_boxes"] = torch.stack(
                [box_xyxy_to_cxcywh_normalised(q.boxes_xyxy, features.orig_hw) for q in prompts]
            ).to(dev)
            kwargs["input_boxes_labels"] = torch.stack([torch.as_tensor(q.box_labels) for q in prompts]).to(dev)
        return self.detector(
            vision_embeds=self._vision_embeds(features, len(prompts)),
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            **kwargs,
        )

    @staticmethod
    def _instances(outputs, k: int, prompt: ConceptPrompt, orig_hw: tuple[int, int]) -> ConceptPrediction:
        """Row ``k`` of a detector output -> the instances of ``prompt`` (``post_process_instance_segmentation``)."""
        scores = outputs.pred_logits[k].sigmoid()
        if outputs.presence_logits is not None:
            scores = scores * outputs.presence_logits[k].sigmoid()
        keep = torch.nonzero(scores >= prompt.score_thresh)[:, 0]
        keep = keep[torch.argsort(scores[keep], descending=True, stable=True)][: prompt.max_instances]
        h, w = orig_hw
        boxes = outputs.pred_boxes[k][keep] * torch.tensor([w, h, w, h], dtype=torch.float32, device=keep.device)
        probs = outputs.pred_masks[k][keep].sigmoid()
        if len(keep):
            probs = F.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            masks = (probs > CONCEPT_MASK_THRESHOLD).cpu().numpy()
        else:
            masks = np.zeros((0, h, w), bool)
        return ConceptPrediction(
            masks=masks,
            boxes_xyxy=boxes.float().cpu().numpy(),
            scores=scores[keep].float().cpu().numpy(),
        )


# ----------------------------------------------------------------------------------------------------- family
class Sam3Family(SegmenterFamily):
    """SAM 3: clicks, boxes, mask input, multimask and automatic masks (tracker head), concept prompts
    (detector); one encode serves both. Video tracking is future work (``Sam3VideoModel`` holds the memory
    modules, unused here)."""

    name = "sam3"
    capabilities = Capabilities(concept_prompts=True, video=False)
    shares_encoder = True

    def build(self, spec: ModelSpec, state_dict: Mapping[str, Any] | None, *, seed: int | None, device: str):
        """A ``Sam3VideoModel`` (see :func:`build_sam3_model`)."""
        return build_sam3_model(spec.name, state_dict, seed=seed, device=device)

    def encoder(
        self, model, accel=None, on_fallback: Callable[[str], None] | None = None, graph=None
    ) -> Sam3ImageEncoder:
        """:class:`Sam3ImageEncoder` (features: :class:`Sam3Features`). Torch only: SAM 3 is not exported
        (``graph`` must be None; see :attr:`runtimes`)."""
        _torch_only(graph)
        return Sam3ImageEncoder(model, accel, on_fallback)

    def decoder(
        self, model, settings: DecoderSettings | None = None, accel=None, on_fallback=None, graph=None
    ) -> Sam3MaskDecoder:
        """:class:`Sam3MaskDecoder` (tracker head, text encoder and detector heads). Torch only."""
        _torch_only(graph)
        return Sam3MaskDecoder(model, settings, accel, on_fallback)

    def drop_image_encoder(self, model) -> None:
        """Drop the ViT and the FPN convolutions of both necks (about half the weights of ``facebook/sam3``);
        the detector's parameter-free position encoding stays (the decoder recomputes it)."""
        model.detector_model.vision_encoder.backbone = None
        model.detector_model.vision_encoder.neck.fpn_layers = torch.nn.ModuleList()
        model.tracker_neck = None

    def feature_nbytes(self, spec: ModelSpec) -> int:
        """132.7 MB at 1008 px (:func:`feature_nbytes`; the tiny model: 0.82 MB at 224 px, FPN width 32)."""
        return feature_nbytes(spec.image_size, sam3_config(spec.config).detector_config.vision_config.fpn_hidden_size)


def _torch_only(graph) -> None:
    if graph is not None:
        raise ValueError("SAM 3 runs on torch only: its encoder and decoder are not exported to ONNX")
