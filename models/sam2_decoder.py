"""SAM 2 prompt encoder and mask decoder over precomputed image features (``models/sam2_image.py``).

The computation is exactly that of sam2's ``SAM2ImagePredictor.predict`` (``sam2/sam2_image_predictor.py``):
the same prompt handling (boxes as two corner points with labels 2 and 3, placed before the clicks) and
the same mask post-processing (bilinear upsampling of the 256x256 logits to the original size,
threshold 0). The only difference is batching: many prompts of many images per decoder call.

Coordinates everywhere are pixels of the original image, (x, y) with x to the right and y down;
boxes are XYXY.

Pure torch/numpy: no file or network I/O.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from models.accel import AccelSettings, accelerate
from models.prompts import PromptSpec
from models.sam2_image import ImageFeatures
from models.segmenter import DecodeRequest, DecoderParts, DecoderSettings, MaskPrediction


def _as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    # Arrays from Ray's object store are read-only views; we never write to them, so skip the copy.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array).to(device)


class Sam2MaskDecoder(DecoderParts):
    """Batched SAM 2 prompt encoder + mask decoder over precomputed :class:`ImageFeatures`.

    Only the prompt encoder and mask decoder of ``model`` are used; the image encoder may be dropped
    by the caller to save memory (see :meth:`from_model`).

    Args:
        model: a ``SAM2Base`` from :func:`models.sam2_image.build_sam2_model`.
        settings: threshold and stability settings.
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
        from sam2.utils.transforms import SAM2Transforms

        self.settings = settings or DecoderSettings()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.image_size = int(model.image_size)
        self.transforms = SAM2Transforms(
            resolution=model.image_size, mask_threshold=self.settings.mask_threshold
        )
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
        zeros = ImageFeatures(
            image_embed=np.zeros((256, s // 16, s // 16), np.float32),
            high_res_feats=(np.zeros((32, s // 4, s // 4), np.float32), np.zeros((64, s // 8, s // 8), np.float32)),
            orig_hw=(s, s),
        )
        click = PromptSpec(point_coords=np.array([[s / 2, s / 2]], np.float32), point_labels=np.array([1], np.int32))
        self.predict(zeros, click, multimask_output=True)

    @torch.inference_mode()
    def predict_batch(self, requests: Sequence[DecodeRequest]) -> list[list[MaskPrediction]]:
        """Predict masks for every prompt of every request.

        Prompts are grouped by shape (number of prompt points, presence of ``mask_input``, multimask
        flag) so each group is one decoder forward pass over many images; per prompt the result equals
        ``SAM2ImagePredictor.predict`` (up to float rounding of batched kernels).

        Args:
            requests: decoder jobs, each one image with its prompts.

        Returns:
            For each request, one :class:`MaskPrediction` per prompt, in order.
        """
        from sam2.utils.amg import calculate_stability_score

        items = [(r, p) for r, req in enumerate(requests) for p in range(len(req.prompts))]
        results: list[list[MaskPrediction | None]] = [[None] * len(req.prompts) for req in requests]
        groups: dict[tuple[int, bool, bool], list[tuple[int, int]]] = {}
        for r, p in items:
            prompt = requests[r].prompts[p]
            key = (prompt.num_tokens, prompt.mask_input is not None, requests[r].multimask_output[p])
            groups.setdefault(key, []).append((r, p))

        dev = self.device
        for (num_tokens, has_mask, multimask), members in groups.items():
            req_ids = sorted({r for r, _ in members})
            embed, high_res, repeat_image = self._group_features(
                [requests[r].features for r in req_ids], [req_ids.index(r) for r, _ in members]
            )
            points = None
            if num_tokens:
                coords, labels = zip(*(self._prompt_points(requests[r], requests[r].prompts[p]) for r, p in members))
                points = (torch.stack(coords).to(dev), torch.stack(labels).to(dev))
            mask_input = None
            if has_mask:
                mask_input = torch.stack(
                    [torch.as_tensor(requests[r].prompts[p].mask_input, dtype=torch.float32) for r, p in members]
                )[:, None].to(dev)
            low_res, iou = self._decode(points, mask_input, embed, high_res, multimask, repeat_image)
            for k, (r, p) in enumerate(members):
                logits = self.upsample_logits(low_res[k], requests[r].features.orig_hw)
                stability = calculate_stability_score(
                    logits, self.settings.mask_threshold, self.settings.stability_score_offset
                )
                results[r][p] = MaskPrediction(
                    masks=(logits > self.settings.mask_threshold).cpu().numpy(),
                    predicted_iou=iou[k].float().cpu().numpy(),
                    stability_score=stability.float().cpu().numpy(),
                    low_res_logits=torch.clamp(low_res[k], -32.0, 32.0).float().cpu().numpy(),
                )
        return results  # type: ignore[return-value]

    def _group_features(
        self, features: list[ImageFeatures], slots: list[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor], bool]:
        """Decoder inputs for a group of prompts whose images are ``features`` (prompt k on image
        ``slots[k]``). One image: its (1, ...) tensors with ``repeat_image=True``, as sam2 does, no copy.
        Several: per-prompt rows gathered from the stacked images, ``repeat_image=False``."""
        dev = self.device
        if len(features) == 1:
            f = features[0]
            return (
                _as_tensor(f.image_embed, dev)[None],
                [_as_tensor(h, dev)[None] for h in f.high_res_feats],
                True,
            )
        index = torch.tensor(slots, device=dev)
        embed = torch.stack([_as_tensor(f.image_embed, dev) for f in features]).index_select(0, index)
        high_res = [
            torch.stack([_as_tensor(f.high_res_feats[lvl], dev) for f in features]).index_select(0, index)
            for lvl in (0, 1)
        ]
        return embed, high_res, False

    @torch.inference_mode()
    def decode_points(
        self, features: ImageFeatures, point_coords: np.ndarray, multimask_output: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One foreground click per prompt on one image, in one forward pass (the automatic-mask grid).

        Args:
            features: the image's features.
            point_coords: (B, 2) float (x, y) pixels of the original image, one click per prompt.
            multimask_output: three candidates per click (True, as sam2's automatic generator) or one.

        Returns:
            (low-res logits (B, C, 256, 256) float32, predicted IoU (B, C) float32), torch tensors;
            upsample with :meth:`upsample_logits`.
        """
        coords = torch.as_tensor(np.asarray(point_coords), dtype=torch.float)[:, None, :]
        xy = self.transforms.transform_coords(coords, normalize=True, orig_hw=features.orig_hw).to(self.device)
        labels = torch.ones(xy.shape[:2], dtype=torch.int, device=self.device)
        embed, high_res, _ = self._group_features([features], [0] * xy.shape[0])
        low_res, iou = self._decode((xy, labels), None, embed, high_res, multimask_output, True)
        return low_res.float(), iou.float()

    def _decode(self, points, mask_input, embed, high_res, multimask_output: bool, repeat_image: bool):
        """Prompt encoder + mask decoder, as ``SAM2ImagePredictor._predict`` calls them (boxes already
        merged into ``points`` as corner clicks). Returns float32 (low-res logits, IoU) whatever the
        precision in force."""
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=mask_input)
        low_res, iou, _, _ = self._mask_decoder_call(
            image_embeddings=embed,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=repeat_image,
            high_res_features=high_res,
        )
        return low_res.float(), iou.float()

    def upsample_logits(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """(N, 256, 256) low-res logits -> (N, H, W) float32 logits at the original size (sam2's bilinear
        upsampling, ``SAM2Transforms.postprocess_masks``).

        The result is the transposed view of an (N, W, H) contiguous tensor: each mask is stored column
        by column, the order COCO RLE reads, so masks thresholded from it (which keep that layout) are
        RLE-encoded without copying (:func:`models.masks.encode_rle_batch`). It equals sam2's row-major
        upsampling up to float rounding of the bilinear weights (about 1e-6 on logits of magnitude 10),
        so a pixel can differ only where a logit lies within that of the threshold.
        """
        h, w = orig_hw
        return self.transforms.postprocess_masks(low_res.transpose(-1, -2)[:, None], (w, h))[:, 0].transpose(-1, -2)

    def _prompt_points(self, request: DecodeRequest, prompt: PromptSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Box corners (labels 2, 3) then clicks, scaled to the model's input frame, as sam2 does."""
        coords, labels = [], []
        if prompt.box_xyxy is not None:
            coords.append(torch.as_tensor(prompt.box_xyxy, dtype=torch.float).reshape(2, 2))
            labels.append(torch.tensor([2, 3], dtype=torch.int))
        if prompt.point_coords is not None:
            coords.append(torch.as_tensor(prompt.point_coords, dtype=torch.float))
            labels.append(torch.as_tensor(prompt.point_labels, dtype=torch.int))
        xy = self.transforms.transform_coords(torch.cat(coords), normalize=True, orig_hw=request.features.orig_hw)
        return xy, torch.cat(labels)
