"""MobileSAM (the official code, packaged as ``mobilesam-mirror``, import name ``mobile_sam``) behind the
family seam (:mod:`models.segmenter`).

MobileSAM is segment-anything v1 with its ViT image encoder replaced by a TinyViT (``vit_t``, 10.1 M
parameters in all); the prompt encoder and mask decoder are SAM's. The computation here is exactly that of
``mobile_sam.SamPredictor`` (``mobile_sam/predictor.py``):

* :meth:`MobileSamImageEncoder.encode_batch` is ``set_image``: ``ResizeLongestSide(1024).apply_image``
  (PIL resize of the long side to 1024 px), then ``Sam.preprocess`` (normalise with SAM's pixel mean and
  std, zero-pad right and bottom to 1024 x 1024), then the TinyViT; many images per forward pass.
* :meth:`MobileSamMaskDecoder.predict_batch` is ``predict`` / ``predict_torch``: clicks and the box scaled by
  ``ResizeLongestSide.apply_coords`` / ``apply_boxes``; the box goes to the prompt encoder as a box
  embedding (SAM v1; not as two corner clicks, as SAM 2 does), and clicks without a box get SAM v1's
  padding point; masks are ``Sam.postprocess_masks`` (bilinear to 1024, crop the padding, bilinear to the
  original size) thresholded at the decoder's ``mask_threshold`` (``Sam.mask_threshold``, 0.0, by default).
  SAM v1 has no dynamic multimask fallback: ``multimask_output=False`` answers the single-mask token.

Differences, none of which changes an answer: batching (many images per encode; many prompts of one shape
per decoder pass); low-res logits clamped to [-32, 32] (as SAM 2's ``predict`` does); a stability score per
mask (``mobile_sam.utils.amg.calculate_stability_score``); masks upsampled in column-major order (see
:meth:`MobileSamMaskDecoder.upsample_logits`). Parity: ``tests/unit/test_mobilesam.py``.

Coordinates everywhere are pixels of the original image, (x, y) with x to the right and y down; boxes are
XYXY. Pure torch/numpy: no file or network I/O; ``mobile_sam`` (and timm) are imported on first use.
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
from models.prompts import PromptSpec
from models.segmenter import (
    Capabilities,
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

#: Channels of the image embedding and of the prompt tokens (SAM's ``prompt_embed_dim``).
EMBED_DIM = 256


@functools.cache
def _mobile_sam():
    """``import mobile_sam``, without the warnings its import prints: ``tiny_vit_sam.py`` imports timm's
    deprecated ``timm.models.layers`` / ``timm.models.registry`` (FutureWarning) and re-registers timm's
    ``tiny_vit_*`` model names (UserWarning). Only those messages are ignored, only during the import (the
    first call; later calls return the module)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Importing from timm\.models\.", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"Overwriting tiny_vit_", category=UserWarning)
        import mobile_sam
        import mobile_sam.utils.amg
        import mobile_sam.utils.transforms  # noqa: F401
    return mobile_sam


def build_mobile_sam_model(
    spec: ModelSpec,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build MobileSAM (``mobile_sam.modeling.Sam`` with a TinyViT encoder) with given or seeded random weights.

    Args:
        spec: the registry entry; ``spec.config`` names the builder of ``mobile_sam.sam_model_registry``
            (``"vit_t"``).
        state_dict: the model's weights (``mobile_sam.pt`` is the state dict itself). Loaded strictly.
        seed: with ``state_dict=None``, the seed of the random initialisation (required then). The global
            torch RNG is left as it was.
        device: torch device to place the model on.

    Returns:
        The ``Sam`` in eval mode, built by MobileSAM's own ``build_sam_vit_t``.

    Raises:
        ValueError: neither ``state_dict`` nor ``seed``; an unknown ``spec.config``.
        RuntimeError: ``state_dict`` has missing or unexpected keys or wrong shapes.
    """
    registry = _mobile_sam().sam_model_registry
    if spec.config != "vit_t":  # the vit_b/l/h builders there are SAM v1's own, not MobileSAM
        raise ValueError(f"unknown MobileSAM config {spec.config!r}; valid configs: vit_t")
    make = lambda: registry[spec.config](checkpoint=None)  # noqa: E731
    return build_with_weights(make, state_dict, seed, device, "build_mobile_sam_model")


@dataclass(frozen=True)
class MobileSamFeatures:
    """MobileSAM features of one image, as ``SamPredictor.set_image`` keeps them (batch dim dropped).

    Attributes:
        image_embedding: (256, 64, 64) float32, the TinyViT's output for the padded 1024 x 1024 input.
        orig_hw: (height, width) of the original image in pixels.
        input_hw: (height, width) of the image resized so that its long side is 1024 px, before padding
            (``SamPredictor.input_size``; :func:`input_hw_of` of ``orig_hw``): the top-left part of the
            model's input frame that holds the image.
    """

    image_embedding: np.ndarray
    orig_hw: tuple[int, int]
    input_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Size of the embedding in bytes (4 MiB at 1024 px)."""
        return self.image_embedding.nbytes


def feature_nbytes(image_size: int = 1024) -> int:
    """Bytes of one image's :class:`MobileSamFeatures` for a model of input side ``image_size``
    (float32, 256 x (s/16)^2 values: 4 MiB at 1024)."""
    return 4 * EMBED_DIM * (image_size // 16) ** 2


def input_hw_of(orig_hw: tuple[int, int], image_size: int = 1024) -> tuple[int, int]:
    """(height, width) of an image of size ``orig_hw`` resized so that its long side is ``image_size``
    (``ResizeLongestSide.get_preprocess_shape``: sides rounded half up)."""
    rls = _mobile_sam().utils.transforms.ResizeLongestSide
    return tuple(int(v) for v in rls.get_preprocess_shape(orig_hw[0], orig_hw[1], image_size))  # type: ignore


class MobileSamImageEncoder(EncoderParts):
    """Batched MobileSAM image encoder (TinyViT), with ``SamPredictor.set_image``'s preprocessing.

    Args:
        model: a ``Sam`` from :func:`build_mobile_sam_model`.
        accel: bf16 autocast / ``torch.compile`` / TensorRT for the TinyViT; see :mod:`models.accel`.
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
        self.image_size = int(model.image_encoder.img_size)
        self.transform = _mobile_sam().utils.transforms.ResizeLongestSide(self.image_size)
        self._accelerated = accelerate(model.image_encoder, self.device, accel, on_fallback, "image encoder")

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def encode_batch(self, images: Sequence[np.ndarray]) -> list[MobileSamFeatures]:
        """Encode several images in one TinyViT forward pass.

        Args:
            images: each (H, W, 3) uint8 RGB in [0, 255]; sizes may differ (each is resized to a long side
                of 1024 px and zero-padded to 1024 x 1024 after normalisation, as ``SamPredictor.set_image``).

        Returns:
            One :class:`MobileSamFeatures` per image, in order.

        Raises:
            ValueError: an image is not (H, W, 3) uint8 with H, W > 0.
        """
        if not images:
            return []
        check_images(images)
        batch, input_hws = [], []
        for image in images:
            resized = torch.as_tensor(self.transform.apply_image(image), device=self.device)
            input_hws.append((int(resized.shape[0]), int(resized.shape[1])))
            batch.append(self.model.preprocess(resized.permute(2, 0, 1).contiguous()[None]))
        embeddings = self._accelerated(torch.cat(batch)).float().cpu().numpy()
        out = [
            MobileSamFeatures(
                image_embedding=embeddings[i],
                orig_hw=(int(image.shape[0]), int(image.shape[1])),
                input_hw=input_hws[i],
            )
            for i, image in enumerate(images)
        ]
        assert len(out) == len(images)
        return out


class MobileSamMaskDecoder(DecoderParts):
    """Batched SAM v1 prompt encoder + mask decoder over precomputed :class:`MobileSamFeatures`.

    Only ``model.prompt_encoder`` and ``model.mask_decoder`` are used; the TinyViT may be dropped
    (:meth:`MobileSamFamily.drop_image_encoder`).

    Args:
        model: a ``Sam`` from :func:`build_mobile_sam_model`.
        settings: threshold and stability settings (the default threshold is ``Sam.mask_threshold``, 0.0).
        accel: bf16 autocast / ``torch.compile`` for the mask decoder module (``tensorrt`` is for the
            encoder and ignored here); see :mod:`models.accel`. None: fp32 eager.
        on_fallback: called with a one-line message for each speed-up given up (the caller logs it).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        settings: DecoderSettings | None = None,
        accel: AccelSettings | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or DecoderSettings(mask_threshold=float(model.mask_threshold))
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.image_size = int(model.prompt_encoder.input_image_size[0])
        self.transform = _mobile_sam().utils.transforms.ResizeLongestSide(self.image_size)
        self._mask_decoder_call = accelerate(self.mask_decoder, self.device, accel, on_fallback, "mask decoder")

    @property
    def device(self) -> torch.device:
        return next(self.mask_decoder.parameters()).device

    def warm_up(self) -> None:
        """Decode one click on all-zero features so that compilation (lazy) and any fallback happen now.

        Only this prompt shape is compiled here; other shapes (boxes, more clicks, batches) compile on
        first use.
        """
        s = self.image_size
        zeros = MobileSamFeatures(np.zeros((EMBED_DIM, s // 16, s // 16), np.float32), (s, s), (s, s))
        click = PromptSpec(point_coords=np.array([[s / 2, s / 2]], np.float32), point_labels=np.array([1], np.int32))
        self.predict(zeros, click, multimask_output=True)

    @torch.inference_mode()
    def predict_batch(self, requests: Sequence[DecodeRequest]) -> list[list[MaskPrediction]]:
        """Predict masks for every prompt of every request.

        The prompts of one image are grouped by shape (number of clicks, box or not, ``mask_input`` or not,
        multimask flag); each group is one decoder forward pass. SAM v1's mask decoder takes one image
        embedding per pass (it repeats it for every prompt), so groups do not span images. Per prompt the
        result equals ``SamPredictor.predict`` (up to float rounding of batched kernels).

        Args:
            requests: decoder jobs, each one image (:class:`MobileSamFeatures`) with its prompts.

        Returns:
            For each request, one :class:`MaskPrediction` per prompt, in order: masks (C, H, W) bool,
            predicted_iou (C,), stability_score (C,), low_res_logits (C, 256, 256) clamped to [-32, 32].
        """
        calculate_stability_score = _mobile_sam().utils.amg.calculate_stability_score
        thr, offset = self.settings.mask_threshold, self.settings.stability_score_offset
        results: list[list[MaskPrediction]] = []
        for request in requests:
            features = request.features
            groups: dict[tuple[int, bool, bool, bool], list[int]] = {}
            for p, prompt in enumerate(request.prompts):
                n_points = 0 if prompt.point_coords is None else len(prompt.point_coords)
                key = (n_points, prompt.box_xyxy is not None, prompt.mask_input is not None)
                groups.setdefault((*key, request.multimask_output[p]), []).append(p)
            answers: list[MaskPrediction | None] = [None] * len(request.prompts)
            for (n_points, has_box, has_mask, multimask), members in groups.items():
                prompts = [request.prompts[p] for p in members]
                points = boxes = mask_input = None
                if n_points:
                    coords = np.stack([self.transform.apply_coords(q.point_coords, features.orig_hw) for q in prompts])
                    labels = np.stack([q.point_labels for q in prompts])
                    points = (
                        torch.as_tensor(coords, dtype=torch.float, device=self.device),
                        torch.as_tensor(labels, dtype=torch.int, device=self.device),
                    )
                if has_box:
                    xyxy = np.concatenate([self.transform.apply_boxes(q.box_xyxy, features.orig_hw) for q in prompts])
                    boxes = torch.as_tensor(xyxy, dtype=torch.float, device=self.device)
                if has_mask:
                    stacked = np.stack([q.mask_input for q in prompts])[:, None]
                    mask_input = torch.as_tensor(stacked, dtype=torch.float, device=self.device)
                low_res, iou = self._decode(features, points, boxes, mask_input, multimask)
                for k, p in enumerate(members):  # one prompt at a time: full-size logits are large
                    logits = self.upsample_logits(low_res[k], features.orig_hw)
                    answers[p] = MaskPrediction(
                        masks=(logits > thr).cpu().numpy(),
                        predicted_iou=iou[k].cpu().numpy(),
                        stability_score=calculate_stability_score(logits, thr, offset).float().cpu().numpy(),
                        low_res_logits=torch.clamp(low_res[k], -32.0, 32.0).cpu().numpy(),
                    )
            results.append(answers)  # type: ignore[arg-type]
        assert len(results) == len(requests)
        return results

    @torch.inference_mode()
    def decode_points(
        self, features: MobileSamFeatures, point_coords: np.ndarray, multimask_output: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One foreground click per prompt on one image, in one forward pass (the automatic-mask grid).

        The clicks are scaled as ``SamAutomaticMaskGenerator._process_batch`` scales them (float64 until
        the prompt encoder's positional encoding).

        Args:
            features: the image's features.
            point_coords: (B, 2) float (x, y) pixels of the original image, one click per prompt.
            multimask_output: three candidates per click (True, as SAM's automatic generator) or one.

        Returns:
            (low-res logits (B, C, 256, 256) float32, predicted IoU (B, C) float32), torch tensors;
            upsample with :meth:`upsample_logits`.
        """
        coords = self.transform.apply_coords(np.asarray(point_coords).reshape(-1, 2), features.orig_hw)
        xy = torch.as_tensor(coords, device=self.device)[:, None, :]
        labels = torch.ones(xy.shape[:2], dtype=torch.int, device=self.device)
        return self._decode(features, (xy, labels), None, None, multimask_output)

    def _decode(self, features: MobileSamFeatures, points, boxes, mask_input, multimask_output: bool):
        """Prompt encoder + mask decoder, as ``SamPredictor.predict_torch`` calls them, for prompts on one
        image (prompts in the model's 1024 px input frame). Returns float32 (low-res logits (B, C, 256, 256),
        IoU (B, C)) whatever the precision in force."""
        with warnings.catch_warnings():  # arrays from Ray's object store are read-only; nothing writes to them
            warnings.simplefilter("ignore", UserWarning)
            embedding = torch.from_numpy(features.image_embedding).to(self.device)[None]
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res, iou = self._mask_decoder_call(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        return low_res.float(), iou.float()

    def upsample_logits(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """(N, 256, 256) low-res logits -> (N, H, W) float32 logits at the original size.

        ``Sam.postprocess_masks``: bilinear to the 1024 x 1024 input frame, crop the padding (keep the
        :func:`input_hw_of` top-left part), bilinear to the original (H, W). Written out here because
        ``Sam.postprocess_masks`` reads the side from the image encoder, which a decoder replica drops.

        The result is the transposed view of an (N, W, H) contiguous tensor: each mask is stored column by
        column, the order COCO RLE reads, so masks thresholded from it are RLE-encoded without copying
        (:func:`models.masks.encode_rle_batch`). It equals the row-major upsampling up to float rounding
        of the bilinear weights, so a pixel can differ only where a logit lies within that of the threshold.
        """
        h, w = orig_hw
        in_h, in_w = input_hw_of(orig_hw, self.image_size)
        s = self.image_size
        x = F.interpolate(low_res.float().transpose(-1, -2)[:, None], (s, s), mode="bilinear", align_corners=False)
        x = F.interpolate(x[..., :in_w, :in_h], (w, h), mode="bilinear", align_corners=False)
        return x[:, 0].transpose(-1, -2)


class MobileSamFamily(SegmenterFamily):
    """MobileSAM: clicks, boxes, mask input, multimask and automatic masks; no concept prompts, no video."""

    name = "mobile_sam"
    capabilities = Capabilities(concept_prompts=False, video=False)
    runtimes = ("torch", "onnxruntime", "openvino", "tensorrt")

    def build(self, spec: ModelSpec, state_dict: Mapping[str, Any] | None, *, seed: int | None, device: str):
        """A ``mobile_sam.modeling.Sam`` (see :func:`build_mobile_sam_model`)."""
        return build_mobile_sam_model(spec, state_dict, seed=seed, device=device)

    def encoder(
        self, model, accel=None, on_fallback: Callable[[str], None] | None = None, graph=None
    ) -> MobileSamImageEncoder:
        """:class:`MobileSamImageEncoder` (features: :class:`MobileSamFeatures`); with ``graph`` (a loaded
        ``encoder.onnx``) :class:`models.mobilesam_export.MobileSamGraphEncoder` (``accel`` unused)."""
        if graph is not None:
            from models.mobilesam_export import MobileSamGraphEncoder

            return MobileSamGraphEncoder(model, graph)
        return MobileSamImageEncoder(model, accel, on_fallback)

    def decoder(self, model, settings: DecoderSettings | None = None, accel=None, on_fallback=None, graph=None):
        """:class:`MobileSamMaskDecoder` (prompt encoder + mask decoder only); with ``graph`` (a loaded
        ``decoder.onnx``) :class:`models.mobilesam_export.MobileSamGraphDecoder` (``accel`` unused)."""
        if graph is not None:
            from models.mobilesam_export import MobileSamGraphDecoder

            return MobileSamGraphDecoder(model, graph, settings)
        return MobileSamMaskDecoder(model, settings, accel, on_fallback)

    def export_onnx(self, model, opset: int = 17) -> dict[str, bytes]:
        """``encoder.onnx`` and ``decoder.onnx`` in SAM v1's layout (:func:`models.mobilesam_export.export_onnx`)."""
        from models.mobilesam_export import export_onnx

        return export_onnx(model, opset)

    def drop_image_encoder(self, model) -> None:
        """Drop the TinyViT (6.1 M of the 10.1 M parameters)."""
        model.image_encoder = None

    def feature_nbytes(self, spec: ModelSpec) -> int:
        """4 MiB at 1024 px (:func:`feature_nbytes`)."""
        return feature_nbytes(spec.image_size)
