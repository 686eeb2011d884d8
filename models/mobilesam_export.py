"""MobileSAM as ONNX: the export (:func:`export_onnx`) and the encoder and decoder that run the exported
graphs in a runtime of :mod:`models.runtime` (:class:`MobileSamGraphEncoder`, :class:`MobileSamGraphDecoder`).

The layout is SAM v1's standard one (what ``scripts/export_onnx_model.py`` of segment-anything and MobileSAM
writes for the decoder, and the usual encoder export beside it):

* ``encoder.onnx``: input ``image`` float32 (1, 3, 1024, 1024), the normalised, zero-padded input the
  TinyViT takes (``Sam.preprocess`` after ``ResizeLongestSide``); output ``image_embeddings`` float32
  (1, 256, 64, 64). The batch is fixed at 1: TinyViT's ``PatchMerging`` reads the batch as a Python int
  (``B = len(x)``), which tracing (and ``torch.export``) freezes into the graph, so a dynamic batch axis
  would be wrong for any other batch. :class:`MobileSamGraphEncoder` runs one image per call.
* ``decoder.onnx``: MobileSAM's own ``mobile_sam.utils.onnx.SamOnnxModel`` (prompt encoder, mask decoder and
  mask post-processing), exported with ``return_single_mask=False`` (all four mask tokens: the torch decoder's
  multimask choice is made outside the graph, see :meth:`MobileSamGraphDecoder._decode`). Inputs
  ``image_embeddings`` (1, 256, 64, 64), ``point_coords`` (N, P, 2) float32 in the 1024 px input frame,
  ``point_labels`` (N, P) float32 (1 foreground, 0 background, 2 / 3 the top-left / bottom-right box corner,
  -1 padding), ``mask_input`` (N, 1, 256, 256) float32 logits, ``has_mask_input`` (N,) float32 (1 or 0),
  ``orig_im_size`` (2,) float32 (height, width); outputs ``masks`` (N, 4, H, W) logits at the original size,
  ``iou_predictions`` (N, 4), ``low_res_masks`` (N, 4, 256, 256). N (prompts) and P (points) are dynamic;
  the official export fixes N at 1, and the wrapper's ``has_mask_input`` would broadcast against the mask
  width for N > 1, so the one change to the library's wrapper is that flag reshaped to (N, 1, 1, 1)
  (``_batched_sam_onnx_model``). A decoder exported by the official script (N = 1, ``return_single_mask``
  usually True) does not fit :class:`MobileSamGraphDecoder`, which runs a group of same-shaped prompts
  (the automatic-mask grid: 64 clicks) as one batch and needs all four mask tokens.

The graph-backed classes subclass the torch ones (:mod:`models.mobilesam`) and override only where the
network runs: preprocessing, prompt scaling, upsampling, thresholds and stability scores are the torch
path's own code, so the answers differ from torch only by the runtime's float rounding
(``tests/unit/test_mobilesam_export.py``).

Measured (``benchmarks/runtime_encoders.py --models mobile_sam``, 2 threads, AMD EPYC with AVX-512 BF16,
machine shared with other work): the encoder at 4.4x eager torch fp32 on ONNX Runtime and 6.1x on OpenVINO
fp32 (features within 1.2e-5; OpenVINO converts it in about 1 s), 10x on OpenVINO bf16 (features off by
0.11); a click's decoder call (three masks at 1800 x 1200) at 0.87x (ONNX Runtime) and 0.99x (OpenVINO) of
torch's: the decoder gains nothing.

Pure torch/numpy: :func:`export_onnx` writes into memory and returns bytes; loading a graph is
:func:`models.runtime.load_graph`'s business.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import torch

from models.mobilesam import EMBED_DIM, MobileSamImageEncoder, MobileSamMaskDecoder, _mobile_sam
from models.runtime import Graph, check_graph_io, graph_state
from models.segmenter import DECODER_FILE, ENCODER_FILE, DecoderSettings

ENCODER_INPUTS, ENCODER_OUTPUTS = ("image",), ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
#: How to make graphs that fit these stages (said when a graph does not).
EXPORT_HOW = "MobileSamFamily.export_onnx"
#: ``orig_im_size`` fed to the decoder graph by :class:`MobileSamGraphDecoder`, which drops the ``masks``
#: output: (1, 1) makes the graph's last upsampling (to the original size) produce 1 x 1 masks instead of
#: H x W ones (at 1200 x 1800, 64 clicks x 4 candidates would be 2.2 GB of float32). Its upsampling to
#: 1024 x 1024 remains (16 MiB a prompt: see ``MobileSamGraphDecoder.max_prompts_per_run``).
UNUSED_ORIG_IM_SIZE = np.float32([1, 1])
#: Labels of SAM v1's sparse prompts in ``point_labels``.
PAD_LABEL, BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL = -1, 2, 3


@functools.cache
def _batched_sam_onnx_model() -> type:
    """``mobile_sam.utils.onnx.SamOnnxModel`` with ``has_mask_input`` of shape (N,) applied per prompt."""
    _mobile_sam()  # its import, without the timm warnings
    from mobile_sam.utils.onnx import SamOnnxModel

    class _BatchedSamOnnxModel(SamOnnxModel):
        """The library's wrapper; ``_embed_masks`` gets the flag as (N, 1, 1, 1) so that it scales each
        prompt's mask embedding (the library multiplies the (N,) flag into (N, 256, 64, 64) directly, right
        only for N = 1)."""

        def _embed_masks(self, input_mask: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
            return super()._embed_masks(input_mask, has_mask_input.reshape(-1, 1, 1, 1))

    return _BatchedSamOnnxModel


def _onnx_bytes(module: torch.nn.Module, args: tuple, opset: int, **kwargs) -> bytes:
    """``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``) of ``module`` into memory."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints and asserts, checked by the tests
        torch.onnx.export(module, args, buffer, opset_version=opset, dynamo=False, do_constant_folding=True, **kwargs)
    return buffer.getvalue()


def export_encoder(model: torch.nn.Module, opset: int = 17) -> bytes:
    """``encoder.onnx``: the TinyViT of ``model`` (``image`` (1, 3, 1024, 1024) -> ``image_embeddings``
    (1, 256, 64, 64), float32); see the module docstring.

    Args:
        model: a ``Sam`` from :func:`models.mobilesam.build_mobile_sam_model` (on CPU).
        opset: ONNX opset.

    Returns:
        The ONNX model's bytes.
    """
    s = int(model.image_encoder.img_size)
    image = torch.zeros(1, 3, s, s)
    return _onnx_bytes(model.image_encoder, (image,), opset, input_names=list(ENCODER_INPUTS),
                       output_names=list(ENCODER_OUTPUTS))


def export_decoder(model: torch.nn.Module, opset: int = 17) -> bytes:
    """``decoder.onnx``: ``SamOnnxModel(model, return_single_mask=False)`` with dynamic prompt (N) and point
    (P) axes; inputs :data:`DECODER_INPUTS`, outputs :data:`DECODER_OUTPUTS` (see the module docstring).

    Args:
        model: a ``Sam`` from :func:`models.mobilesam.build_mobile_sam_model` (on CPU; the TinyViT must be
            present: the wrapper reads its input size).
        opset: ONNX opset.

    Returns:
        The ONNX model's bytes.
    """
    wrapper = _batched_sam_onnx_model()(model, return_single_mask=False).eval()
    h, w = model.prompt_encoder.image_embedding_size
    s = int(model.image_encoder.img_size)
    n, p = 2, 3  # example sizes; both axes are dynamic
    example = (
        torch.randn(1, EMBED_DIM, h, w),
        torch.randint(0, s, (n, p, 2)).float(),
        torch.randint(-1, 4, (n, p)).float(),
        torch.randn(n, 1, 4 * h, 4 * w),
        torch.ones(n),
        torch.tensor([1200.0, 1800.0]),
    )
    prompts, points = {0: "num_prompts"}, {0: "num_prompts", 1: "num_points"}
    dynamic_axes = {
        "point_coords": points,
        "point_labels": points,
        "mask_input": prompts,
        "has_mask_input": prompts,
        "masks": {0: "num_prompts", 2: "height", 3: "width"},
        "iou_predictions": prompts,
        "low_res_masks": prompts,
    }
    return _onnx_bytes(wrapper, example, opset, input_names=list(DECODER_INPUTS),
                       output_names=list(DECODER_OUTPUTS), dynamic_axes=dynamic_axes)


def export_onnx(model: torch.nn.Module, opset: int = 17) -> dict[str, bytes]:
    """``{ENCODER_FILE: encoder.onnx bytes, DECODER_FILE: decoder.onnx bytes}`` of ``model``; see
    :func:`export_encoder` and :func:`export_decoder`."""
    return {ENCODER_FILE: export_encoder(model, opset), DECODER_FILE: export_decoder(model, opset)}


class _EncoderGraphCall:
    """Stands in for the torch encoder's ``AcceleratedCall``: (B, 3, 1024, 1024) float32 tensor -> (B, 256,
    64, 64) float32 tensor through ``graph``, one image per run (the export's batch is 1)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        images = x.float().cpu().numpy()
        out = [self.graph.run({"image": images[i : i + 1]})["image_embeddings"] for i in range(len(images))]
        return torch.from_numpy(np.concatenate(out).astype(np.float32, copy=False))

    def state(self) -> dict:
        return graph_state(self.graph)


class MobileSamGraphEncoder(MobileSamImageEncoder):
    """:class:`models.mobilesam.MobileSamImageEncoder` with the TinyViT run by an ``encoder.onnx`` graph.

    Same preprocessing (``ResizeLongestSide`` + ``Sam.preprocess``) and the same
    :class:`models.mobilesam.MobileSamFeatures` out; ``accel_state()`` is :func:`models.runtime.graph_state`.

    Args:
        model: the ``Sam`` the graph was exported from (its preprocessing and sizes; the TinyViT's weights
            are not used).
        graph: the loaded ``encoder.onnx`` (:func:`models.runtime.load_graph`).

    Raises:
        ValueError: the graph does not have the inputs and outputs of the layout.
    """

    def __init__(self, model: torch.nn.Module, graph: Graph) -> None:
        check_graph_io(graph, ENCODER_INPUTS, ENCODER_OUTPUTS, "MobileSAM encoder", EXPORT_HOW)
        self.model = model
        self.graph = graph
        self.image_size = int(model.image_encoder.img_size)
        self.transform = _mobile_sam().utils.transforms.ResizeLongestSide(self.image_size)
        self._accelerated = _EncoderGraphCall(graph)


class MobileSamGraphDecoder(MobileSamMaskDecoder):
    """:class:`models.mobilesam.MobileSamMaskDecoder` with the prompt encoder and mask decoder run by a
    ``decoder.onnx`` graph.

    The prompts are scaled, grouped and answered by the torch decoder's own code (``predict_batch``,
    ``decode_points``, ``upsample_logits``, stability scores); only :meth:`_decode` differs. The graph's
    ``low_res_masks`` are used; its ``masks`` output (the library's upsampling of all four candidates, part
    of the standard layout) is computed by the runtime and dropped, at 1 x 1 (:data:`UNUSED_ORIG_IM_SIZE`).

    Attributes:
        max_prompts_per_run: prompts per graph run (a larger group runs in chunks). The graph upsamples
            every prompt's four candidates to 1024 x 1024 for its unused ``masks`` output, 16 MiB of float32
            a prompt, so a chunk of 16 holds about 0.3 GB there (64 at once: over 1 GB).

    Args:
        model: the ``Sam`` the graph was exported from (its prompt encoder's sizes and the threshold; the
            weights are not used). The TinyViT may have been dropped.
        graph: the loaded ``decoder.onnx`` (:func:`models.runtime.load_graph`).
        settings: threshold and stability settings, as for the torch decoder.

    Raises:
        ValueError: the graph does not have the inputs and outputs of the layout.
    """

    max_prompts_per_run: int = 16

    def __init__(self, model: torch.nn.Module, graph: Graph, settings: DecoderSettings | None = None) -> None:
        check_graph_io(graph, DECODER_INPUTS, DECODER_OUTPUTS, "MobileSAM decoder", EXPORT_HOW)
        self.graph = graph
        self.settings = settings or DecoderSettings(mask_threshold=float(model.mask_threshold))
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.image_size = int(model.prompt_encoder.input_image_size[0])
        self.transform = _mobile_sam().utils.transforms.ResizeLongestSide(self.image_size)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # the graph takes numpy arrays

    def accel_state(self) -> dict:
        """The runtime and precision in force (:func:`models.runtime.graph_state`)."""
        return graph_state(self.graph)

    def _decode(self, features, points, boxes, mask_input, multimask_output: bool):
        """The torch decoder's ``_decode`` through the graph: the prompts as ``SamPredictor.predict_torch``
        gives them to the prompt encoder, written in the graph's sparse form.

        Clicks come first, then the box as two corner points labelled 2 and 3 (the order of SAM v1's
        ``PromptEncoder``); clicks without a box get its padding point (label -1); a prompt with neither
        (mask input alone) has P = 0 points, as the torch prompt encoder has no sparse token then. Of the
        four mask tokens' outputs, multimask keeps 1-3 and single-mask keeps 0 (``MaskDecoder.forward``'s
        slice; MobileSAM has no dynamic multimask fallback).

        Returns:
            float32 (low-res logits (N, C, 256, 256), IoU (N, C)) torch tensors.
        """
        coords, labels = [], []
        if points is not None:
            coords.append(points[0].cpu().numpy().astype(np.float32))
            labels.append(points[1].cpu().numpy().astype(np.float32))
        if boxes is not None:
            corners = boxes.cpu().numpy().astype(np.float32).reshape(-1, 2, 2)
            coords.append(corners)
            labels.append(np.broadcast_to(np.float32([BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL]), corners.shape[:2]))
        n = next((len(c) for c in coords), None)
        if n is None:
            n = len(mask_input) if mask_input is not None else 1
        if points is not None and boxes is None:  # SamPredictor's padding point
            coords.append(np.zeros((n, 1, 2), np.float32))
            labels.append(np.full((n, 1), PAD_LABEL, np.float32))
        s = self.image_size
        if mask_input is None:
            masks, has_mask = np.zeros((n, 1, s // 4, s // 4), np.float32), np.zeros(n, np.float32)
        else:
            masks, has_mask = mask_input.cpu().numpy().astype(np.float32), np.ones(n, np.float32)
        feeds = {
            "point_coords": np.concatenate(coords, axis=1) if coords else np.zeros((n, 0, 2), np.float32),
            "point_labels": np.concatenate(labels, axis=1) if labels else np.zeros((n, 0), np.float32),
            "mask_input": masks,
            "has_mask_input": has_mask,
        }
        embedding = np.asarray(features.image_embedding, np.float32)[None]
        keep = slice(1, None) if multimask_output else slice(0, 1)
        low_res, iou = [], []
        for start in range(0, n, self.max_prompts_per_run):
            chunk = {k: v[start : start + self.max_prompts_per_run] for k, v in feeds.items()}
            out = self.graph.run({**chunk, "image_embeddings": embedding, "orig_im_size": UNUSED_ORIG_IM_SIZE})
            low_res.append(np.asarray(out["low_res_masks"], np.float32)[:, keep])
            iou.append(np.asarray(out["iou_predictions"], np.float32)[:, keep])
        return torch.from_numpy(np.concatenate(low_res)), torch.from_numpy(np.concatenate(iou))
