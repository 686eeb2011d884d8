"""SAM 2 (Meta's ``sam2`` package) behind the family seam (:mod:`models.segmenter`).

The model is built by :func:`models.sam2_image.build_sam2_model`, encoded by
:class:`models.sam2_image.Sam2ImageEncoder` and decoded by :class:`models.sam2_decoder.Sam2MaskDecoder`;
their answers equal sam2's ``SAM2ImagePredictor`` (``tests/unit/test_sam2_parity.py``). Video tracking is
``models/sam2_video*.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from models.segmenter import Capabilities, DecoderSettings, ModelSpec, SegmenterFamily


class Sam2Family(SegmenterFamily):
    """SAM 2.1: clicks, boxes, mask input, multimask, automatic masks and video; no concept prompts."""

    name = "sam2"
    capabilities = Capabilities(video=True)
    runtimes = ("torch", "onnxruntime", "openvino", "tensorrt")
    export_layout = 2  # 2: the encoder graph's batch fixed at 1 (models/sam2_export.py)

    def build(self, spec: ModelSpec, state_dict: Mapping[str, Any] | None, *, seed: int | None, device: str):
        """A ``SAM2Base`` (see :func:`models.sam2_image.build_sam2_model`)."""
        from models.sam2_image import build_sam2_model

        return build_sam2_model(spec.name, state_dict, seed=seed, device=device)

    def encoder(self, model, accel=None, on_fallback: Callable[[str], None] | None = None, graph=None):
        """:class:`models.sam2_image.Sam2ImageEncoder` (features: :class:`models.sam2_image.ImageFeatures`);
        with ``graph`` (an ``encoder.onnx`` loaded by :func:`models.runtime.load_graph`),
        :class:`models.sam2_export.Sam2GraphEncoder` (same features; ``accel`` does not apply)."""
        if graph is not None:
            from models.sam2_export import Sam2GraphEncoder

            return Sam2GraphEncoder(model, graph)
        from models.sam2_image import Sam2ImageEncoder

        return Sam2ImageEncoder(model, accel, on_fallback)

    def decoder(self, model, settings: DecoderSettings | None = None, accel=None, on_fallback=None, graph=None):
        """:class:`models.sam2_decoder.Sam2MaskDecoder` (prompt encoder + mask decoder only); with ``graph``
        (a ``decoder.onnx`` loaded by :func:`models.runtime.load_graph`),
        :class:`models.sam2_export.Sam2GraphDecoder` (same answers; ``accel`` does not apply)."""
        if graph is not None:
            from models.sam2_export import Sam2GraphDecoder

            return Sam2GraphDecoder(model, graph, settings)
        from models.sam2_decoder import Sam2MaskDecoder

        return Sam2MaskDecoder(model, settings, accel, on_fallback)

    def export_onnx(self, model, opset: int = 17) -> dict[str, bytes]:
        """``encoder.onnx`` and ``decoder.onnx`` in the layout of :mod:`models.sam2_export` (SharpAI's and
        samexporter's, plus ``low_res_masks``; the decoder gives all four mask candidates).

        Raises:
            ValueError: the model's image encoder was dropped.
        """
        from models.sam2_export import export_sam2_onnx

        return export_sam2_onnx(model, opset)

    def drop_image_encoder(self, model) -> None:
        """Drop the Hiera trunk and FPN neck (most of the weights)."""
        model.image_encoder = None

    def feature_nbytes(self, spec: ModelSpec) -> int:
        """16.8 MB at 1024 px (:func:`models.sam2_image.feature_nbytes`)."""
        from models.sam2_image import feature_nbytes

        return feature_nbytes(spec.image_size)
