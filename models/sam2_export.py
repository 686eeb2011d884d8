"""SAM 2 as two ONNX graphs (``encoder.onnx`` + ``decoder.onnx``), and the encoder and decoder that run them.

The layout is that of the SAM 2 ONNX exports in the wild (``SharpAI/sam2-hiera-tiny-onnx``, vietanhdev's
``samexporter``), with one more output (``low_res_masks``) and one difference of semantics (all four mask
candidates out, see below):

``encoder.onnx``
    in ``image`` (1, 3, S, S) float32, the output of sam2's ``SAM2Transforms`` (resized to the model's side S,
    1024 for every SAM 2.1 size, scaled to [0, 1] and normalised with ImageNet's mean and std);
    out ``image_embed`` (1, 256, S/16, S/16), ``high_res_feats_0`` (1, 32, S/4, S/4) and
    ``high_res_feats_1`` (1, 64, S/8, S/8), float32: :class:`models.sam2_image.ImageFeatures` of one image.
    The batch is fixed at 1 (:class:`Sam2GraphEncoder` runs a batch image by image): with a dynamic batch
    axis, Hiera's window-partition shape arithmetic cannot be constant-folded and OpenVINO's CPU plugin
    takes about 80 s to compile the graph on 2 cores (0.3-2 s with the batch fixed; on CPU the best
    encoder batch is 1 anyway).

``decoder.onnx`` (N prompts, P points each, on one image; N and P dynamic)
    in ``image_embed`` (B, 256, S/16, S/16), ``high_res_feats_0`` (B, 32, S/4, S/4), ``high_res_feats_1``
    (B, 64, S/8, S/8): B = 1 (one image, broadcast over the prompts inside the graph, as sam2's
    ``repeat_image=True`` does, so a batch of prompts does not copy the 16.8 MB features per prompt) or
    B = N (one image per prompt);
    ``point_coords`` (N, P, 2) float32, (x, y) in the model's input frame (S x S pixels, what
    ``SAM2Transforms.transform_coords(normalize=True)`` gives); a box is two points, its corners
    (x0, y0) and (x1, y1), with labels 2 and 3, placed before the clicks;
    ``point_labels`` (N, P) float32: 1 foreground click, 0 background click, 2 / 3 box corners, -1 padding
    (a point that counts for nothing, to give prompts with fewer points the same P);
    ``mask_input`` (N or 1, 1, S/4, S/4) float32, low-res logits of an earlier answer;
    ``has_mask_input`` (N,) float32, 1 where ``mask_input`` is used, 0 where not (a batch-1 ``mask_input``
    is broadcast, so a batch with no mask input needs one (1, 1, S/4, S/4) array only);
    ``orig_im_size`` (2,) float32, (height, width) of the original image in pixels;
    out ``masks`` (N, 4, height, width) float32 logits upsampled bilinearly to ``orig_im_size`` (threshold
    them at 0), ``iou_predictions`` (N, 4) float32, ``low_res_masks`` (N, 4, S/4, S/4) float32 logits.

    The four candidates are, in order, the single-mask output (sam2's token 0) and the three multimask
    outputs. The choice of sam2's ``MaskDecoder.forward`` (``multimask_output=True``: candidates 1-3;
    False: candidate 0, or with ``dynamic_multimask_via_stability`` the most likely multimask candidate when
    candidate 0 is unstable) is left to the caller, so one graph answers both kinds exactly
    (:meth:`Sam2GraphDecoder._decode` calls sam2's own ``_dynamic_multimask_via_stability``). Exports in the
    wild pick the three multimask candidates inside the graph and have no ``low_res_masks``.

    Padding as in sam2: the graph appends one padding point (label -1) to every prompt that has points, as
    ``PromptEncoder._embed_points(pad=True)`` does, and none to a prompt with no points (P = 0: mask input
    alone), where sam2 has no sparse prompt at all. So a caller passes its points as they are, without
    a padding point of its own; extra padding points (label -1) are extra not-a-point tokens and change the
    answer slightly (what sam2 would answer to them too).

Exports are written into memory (:func:`export_sam2_onnx` returns the bytes): writing and checking files
is the caller's (``deployments/``). Pure torch/numpy otherwise.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from models.runtime import Graph, check_graph_io, graph_state
from models.sam2_decoder import Sam2MaskDecoder
from models.sam2_image import ImageFeatures
from models.segmenter import DECODER_FILE, ENCODER_FILE, DecoderSettings, EncoderParts, check_images

#: Names of the encoder graph's input and outputs.
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1")
#: Names of the decoder graph's inputs and outputs.
DECODER_INPUTS = (
    "image_embed",
    "high_res_feats_0",
    "high_res_feats_1",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
#: How to make graphs that fit these stages (said when a graph does not).
EXPORT_HOW = "Sam2Family.export_onnx"


class Sam2EncoderGraph(nn.Module):
    """The image encoder as one module to export: ``model.forward_image`` (Hiera trunk, FPN neck and the
    mask decoder's high-res projections), ``_prepare_backbone_features`` and ``no_mem_embed``, as
    :meth:`models.sam2_image.Sam2ImageEncoder.encode_batch` runs them.

    Args:
        model: a ``SAM2Base`` (:func:`models.sam2_image.build_sam2_model`).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        s = int(model.image_size)
        self._feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) float32 normalised image -> (image_embed, high_res_feats_0, high_res_feats_1)."""
        backbone_out = self.model.forward_image(image)
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        n = image.shape[0]
        f0, f1, embed = (
            feat.permute(1, 2, 0).reshape(n, -1, *size) for feat, size in zip(vision_feats, self._feat_sizes)
        )
        return embed, f0, f1


class Sam2DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder as one module to export, in the layout of this module's docstring.

    The prompt embedding is sam2's own ``PromptEncoder._embed_points`` and ``mask_downscaling``; the mask
    decoder is sam2's ``MaskDecoder.predict_masks`` (all four candidates).

    Args:
        model: a ``SAM2Base`` (:func:`models.sam2_image.build_sam2_model`).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See the module docstring for shapes; returns (masks, iou_predictions, low_res_masks)."""
        pe = self.prompt_encoder
        # One padding point per prompt with points, none with P = 0: ``[:, :1]`` has min(P, 1) points.
        coords = torch.cat([point_coords, torch.zeros_like(point_coords[:, :1])], dim=1)
        labels = torch.cat([point_labels, torch.zeros_like(point_labels[:, :1]) - 1], dim=1)
        # sam2 shifts the points by 0.5 before padding; the padding point's coordinates are unused (label -1).
        sparse = pe._embed_points(coords, labels, pad=False)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input) + (1 - has) * no_mask
        # sam2 adds dense to the (repeated) image embedding; in the graph a batch-1 image broadcasts in that
        # addition and in the high-res additions (predict_masks' B == N assert is checked once, when traced
        # with B = N). Run eagerly, the image is expanded (a view) to pass that assert.
        if not torch.onnx.is_in_onnx_export():
            image_embed = image_embed.expand(sparse.shape[0], -1, -1, -1)
        low_res, iou, _, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=False,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        size = orig_im_size.to(torch.int64)
        masks = nn.functional.interpolate(low_res, size=(size[0], size[1]), mode="bilinear", align_corners=False)
        return masks, iou, low_res


def _export(module: nn.Module, args: tuple, input_names, output_names, dynamic_axes, opset: int) -> bytes:
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            module,
            args,
            buffer,
            opset_version=opset,
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def export_encoder_onnx(model: nn.Module, opset: int = 17) -> bytes:
    """``encoder.onnx`` of ``model`` (layout: module docstring), as bytes.

    Args:
        model: a ``SAM2Base`` in eval mode, with its image encoder.
        opset: ONNX opset version.

    Raises:
        ValueError: the model has no image encoder (dropped by ``Sam2Family.drop_image_encoder``).
    """
    if model.image_encoder is None:
        raise ValueError("the model's image encoder was dropped; build the model again to export it")
    s = int(model.image_size)
    image = torch.zeros(1, 3, s, s, device=next(model.parameters()).device)
    return _export(Sam2EncoderGraph(model).eval(), (image,), ENCODER_INPUTS, ENCODER_OUTPUTS, None, opset)


def export_decoder_onnx(model: nn.Module, opset: int = 17) -> bytes:
    """``decoder.onnx`` of ``model`` (layout: module docstring), as bytes.

    Args:
        model: a ``SAM2Base`` in eval mode (its image encoder is not needed).
        opset: ONNX opset version.
    """
    s = int(model.image_size)
    n, p = 2, 3  # traced with N = B = 2 and P = 3 so that neither is fixed to a constant
    g = torch.Generator().manual_seed(0)
    args = (
        torch.randn(n, 256, s // 16, s // 16, generator=g),
        torch.randn(n, 32, s // 4, s // 4, generator=g),
        torch.randn(n, 64, s // 8, s // 8, generator=g),
        torch.rand(n, p, 2, generator=g) * s,
        torch.tensor([[2.0, 3.0, 1.0], [1.0, 0.0, -1.0]]),
        torch.randn(n, 1, s // 4, s // 4, generator=g),
        torch.tensor([1.0, 0.0]),
        torch.tensor([float(s), float(s)]),
    )
    args = tuple(a.to(next(model.sam_mask_decoder.parameters()).device) for a in args)
    axes = {
        "image_embed": {0: "image_batch"},
        "high_res_feats_0": {0: "image_batch"},
        "high_res_feats_1": {0: "image_batch"},
        "point_coords": {0: "num_prompts", 1: "num_points"},
        "point_labels": {0: "num_prompts", 1: "num_points"},
        "mask_input": {0: "mask_batch"},
        "has_mask_input": {0: "num_prompts"},
        "masks": {0: "num_prompts", 2: "height", 3: "width"},
        "iou_predictions": {0: "num_prompts"},
        "low_res_masks": {0: "num_prompts"},
    }
    return _export(Sam2DecoderGraph(model).eval(), args, DECODER_INPUTS, DECODER_OUTPUTS, axes, opset)


def export_sam2_onnx(model: nn.Module, opset: int = 17) -> dict[str, bytes]:
    """``{ENCODER_FILE: bytes, DECODER_FILE: bytes}`` of ``model`` (see :func:`export_encoder_onnx`,
    :func:`export_decoder_onnx`). For SAM 2.1 tiny: 109 MB + 17 MB, about 5 s on 2 idle cores."""
    return {ENCODER_FILE: export_encoder_onnx(model, opset), DECODER_FILE: export_decoder_onnx(model, opset)}


class Sam2GraphEncoder(EncoderParts):
    """:class:`models.sam2_image.Sam2ImageEncoder` with the network run by an ``encoder.onnx`` graph.

    Same preprocessing (sam2's ``SAM2Transforms``) and the same :class:`ImageFeatures` out.

    Args:
        model: the ``SAM2Base`` the graph was exported from (its image size; its weights are not used).
        graph: the loaded ``encoder.onnx`` (:func:`models.runtime.load_graph`).

    Raises:
        ValueError: the graph does not have the inputs and outputs of the layout.
    """

    def __init__(self, model: nn.Module, graph: Graph) -> None:
        from sam2.utils.transforms import SAM2Transforms

        check_graph_io(graph, ENCODER_INPUTS, ENCODER_OUTPUTS, "SAM 2 encoder", EXPORT_HOW)
        self.graph = graph
        self.image_size = int(model.image_size)
        self.transforms = SAM2Transforms(resolution=self.image_size, mask_threshold=0.0)

    def accel_state(self) -> dict:
        """The runtime and precision in force: ``{"runtime", "precision", "compiler", "requested",
        "fallbacks"}``."""
        return graph_state(self.graph)

    @torch.inference_mode()
    def encode_batch(self, images: Sequence[np.ndarray]) -> list[ImageFeatures]:
        """See :meth:`models.sam2_image.Sam2ImageEncoder.encode_batch` (same arguments, answer and errors)."""
        if not images:
            return []
        check_images(images)
        batch = self.transforms.forward_batch(list(images)).numpy()
        feats = []
        for i, image in enumerate(images):  # the graph's batch is 1 (module docstring)
            out = self.graph.run({"image": batch[i : i + 1]})
            embed, f0, f1 = (np.asarray(out[name], np.float32)[0] for name in ENCODER_OUTPUTS)
            feats.append(ImageFeatures(embed, (f0, f1), (int(image.shape[0]), int(image.shape[1]))))
        assert len(feats) == len(images)
        return feats


class Sam2GraphDecoder(Sam2MaskDecoder):
    """:class:`models.sam2_decoder.Sam2MaskDecoder` with the prompt encoder and mask decoder run by a
    ``decoder.onnx`` graph.

    Everything but the network is the torch decoder's (prompt handling, grouping, upsampling, stability
    scores, :meth:`decode_points` for automatic masks), and the choice among the graph's four candidates is
    sam2's own (``MaskDecoder.forward``'s rule and ``_dynamic_multimask_via_stability``), so both answer
    the same up to the runtime's float rounding.

    Args:
        model: the ``SAM2Base`` the graph was exported from (sizes and the multimask rule; its prompt
            encoder and mask decoder weights are not run).
        graph: the loaded ``decoder.onnx`` (:func:`models.runtime.load_graph`).
        settings: threshold and stability settings.

    Raises:
        ValueError: the graph does not have the inputs and outputs of the layout.
    """

    def __init__(self, model: nn.Module, graph: Graph, settings: DecoderSettings | None = None) -> None:
        check_graph_io(graph, DECODER_INPUTS, DECODER_OUTPUTS, "SAM 2 decoder", EXPORT_HOW)
        super().__init__(model, settings)
        self.graph = graph
        s = self.image_size
        self._low_res = s // 4
        self._no_mask = np.zeros((1, 1, s // 4, s // 4), np.float32)
        # the graph's ``masks`` output is not used here: ask for it at the low-res size, where it costs nothing
        self._orig_im_size = np.array([s // 4, s // 4], np.float32)

    def accel_state(self) -> dict:
        """The runtime and precision in force: ``{"runtime", "precision", "compiler", "requested",
        "fallbacks"}``."""
        return graph_state(self.graph)

    def _decode(self, points, mask_input, embed, high_res, multimask_output: bool, repeat_image: bool):
        """The graph in place of sam2's prompt encoder + mask decoder; the same (low-res logits (N, C, 256,
        256), IoU (N, C)) float32 tensors as :meth:`Sam2MaskDecoder._decode`."""
        del repeat_image  # the graph broadcasts a batch-1 image itself
        if points is not None:
            coords = points[0].detach().cpu().numpy().astype(np.float32, copy=False)
            labels = points[1].detach().cpu().numpy().astype(np.float32)
        n = coords.shape[0] if points is not None else mask_input.shape[0]
        if points is None:
            coords, labels = np.zeros((n, 0, 2), np.float32), np.zeros((n, 0), np.float32)
        if mask_input is None:
            masks_in, has = self._no_mask, np.zeros(n, np.float32)
        else:
            masks_in, has = mask_input.detach().cpu().numpy().astype(np.float32, copy=False), np.ones(n, np.float32)
        out = self.graph.run(
            {
                "image_embed": embed.detach().cpu().numpy(),
                "high_res_feats_0": high_res[0].detach().cpu().numpy(),
                "high_res_feats_1": high_res[1].detach().cpu().numpy(),
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": masks_in,
                "has_mask_input": has,
                "orig_im_size": self._orig_im_size,
            }
        )
        low_res = torch.from_numpy(np.asarray(out["low_res_masks"], np.float32)).to(self.device)
        iou = torch.from_numpy(np.asarray(out["iou_predictions"], np.float32)).to(self.device)
        assert low_res.shape[0] == iou.shape[0] == n
        return select_masks(self.mask_decoder, low_res, iou, multimask_output)


def select_masks(
    mask_decoder: nn.Module, low_res: torch.Tensor, iou: torch.Tensor, multimask_output: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates sam2's ``MaskDecoder.forward`` returns, from all four of ``predict_masks``.

    Args:
        mask_decoder: sam2's ``MaskDecoder`` (its ``dynamic_multimask_via_stability`` rule).
        low_res: (N, 4, h, w) float32 logits, candidate 0 the single-mask output.
        iou: (N, 4) float32 predicted IoU.
        multimask_output: True: candidates 1-3; False: candidate 0, or sam2's dynamic fallback to the best
            multimask candidate where candidate 0 is unstable (when the model has that rule).

    Returns:
        (logits (N, C, h, w), IoU (N, C)), C = 3 or 1.
    """
    if multimask_output:
        return low_res[:, 1:], iou[:, 1:]
    if mask_decoder.dynamic_multimask_via_stability:
        return mask_decoder._dynamic_multimask_via_stability(low_res, iou)
    return low_res[:, 0:1], iou[:, 0:1]


__all__ = [
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "ENCODER_INPUTS",
    "ENCODER_OUTPUTS",
    "Sam2DecoderGraph",
    "Sam2EncoderGraph",
    "Sam2GraphDecoder",
    "Sam2GraphEncoder",
    "export_decoder_onnx",
    "export_encoder_onnx",
    "export_sam2_onnx",
    "select_masks",
]

