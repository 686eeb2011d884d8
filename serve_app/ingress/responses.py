"""The 200 bodies of the HTTP routes, as pydantic models: what ``/openapi.json`` documents and what is sent.

A route declares its model once (``ok=`` of :meth:`serve_app.ingress.openapi.Described.route_spec` or
``body_spec``), and that declaration both documents the answer and is the route's ``response_model``: the
handler's answer, built as a dict (from the stages' records: :mod:`serve_app.assemble`, the decoder's
and video segmenter's), is validated into the model and sent as its serialisation, with the keys the
handler set. The models forbid unknown keys, so an answer field that is not declared here is a 500 (and
fails ``tests/integration/test_openapi_bodies.py``, which sends a request to every route) instead of an
undocumented key.

Coordinates are pixels of the image (or frame), x right and y down; boxes are [x0, y0, x1, y1] with the
pixel-edge convention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.ingress.readiness import RANDOM_WEIGHTS_WARNING

if TYPE_CHECKING:
    from deployments.contracts import ImageInfo

OUT = ConfigDict(extra="forbid")
BOX = Field(
    min_length=4, max_length=4, description="[x0, y0, x1, y1], pixels, pixel-edge convention; [0, 0, 0, 0] when empty"
)


class RleOut(BaseModel):
    """A COCO RLE mask (compressed counts)."""

    model_config = OUT
    size: list[int] = Field(min_length=2, max_length=2, description="[height, width], pixels")
    counts: str


class LogitsOut(BaseModel):
    """Low-res mask logits, usable as a prompt's ``mask_input``: little-endian float32 bytes in base64."""

    model_config = OUT
    base64: str
    shape: list[int]
    dtype: Literal["float32"]


class PolygonOut(BaseModel):
    """One 4-connected part of a mask: its outer ring and holes, [[x, y], ...] integer pixel corners."""

    model_config = OUT
    exterior: list[list[int]]
    holes: list[list[list[int]]]


class MaskFields(BaseModel):
    """A mask's area and box, and the mask in the request's ``mask_format``: ``rle``, ``png``,
    ``polygon`` (``polygons`` and COCO's flat ``segmentation`` lists) or ``none`` (neither)."""

    model_config = OUT
    area_px: int = Field(ge=0)
    bbox_xyxy: list[int] = BOX
    rle: RleOut | None = None
    png: str | None = Field(default=None, description="single-channel 0/255 PNG, base64")
    polygons: list[PolygonOut] | None = None
    segmentation: list[list[float]] | None = Field(
        default=None, description="COCO polygons: [x0, y0, x1, y1, ...] per outer ring"
    )


class MaskOut(MaskFields):
    """One mask of the model, with its scores."""

    predicted_iou: float
    stability_score: float
    low_res_logits: LogitsOut | None = Field(default=None, description="with return_logits: true")
    text_score: float | None = Field(
        default=None, description="text prompts: cosine similarity of the mask's crop and the text, in [-1, 1]"
    )


class ConceptInstanceOut(MaskFields):
    """One instance of a concept (a model with concept prompts): its mask, the model's box and score."""

    score: float = Field(ge=0, le=1, description="the model's confidence that this is an instance of the concept")
    box_xyxy: list[float] = Field(min_length=4, max_length=4, description="the model's box, float pixels")


class SegmentResult(BaseModel):
    """The answer to one prompt: ``masks`` (a geometric prompt's, best first; a text's automatic masks
    ranked by CLIP, ``text_method: "clip_rank"``), or ``instances`` (every instance of a concept found by a
    model with concept prompts, best score first, ``text_method: "concept"``)."""

    model_config = OUT
    masks: list[MaskOut] | None = None
    instances: list[ConceptInstanceOut] | None = None
    text_method: Literal["concept", "clip_rank"] | None = Field(
        default=None, description="concept prompts: which method answered"
    )


class ImageAnswer(BaseModel):
    """What every answer about one image carries."""

    model_config = OUT
    model_id: str
    weights: str = Field(description="the model's weights: sha256:<hex> of the file, or random")
    image_id: str = Field(description="SHA-256 of the image bytes: send it instead of the image next time")
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    encode_cached: bool = Field(description="the image's embedding was already held by its replica")
    timing_ms: dict[str, float]
    warnings: list[str] | None = Field(default=None, description="e.g. that random weights are in use")


class SegmentResponse(ImageAnswer):
    """200 of ``POST /v1/segment``: one result per prompt, in the request's order (one for no prompts:
    the centre click)."""

    results: list[SegmentResult]
    embedder_weights: str | None = Field(
        default=None, description="with text prompts: where the CLIP weights came from"
    )


class NeighborOut(BaseModel):
    """A labelled example near an instance."""

    model_config = OUT
    id: str
    label: str
    score: float = Field(description="cosine similarity, in [-1, 1]")


class InstanceOut(MaskFields):
    """An instance: an automatic mask with its label voted by its nearest examples (null when none is above
    ``min_score``; ``label_source: "examples"``), or an instance of one of the request's ``classes`` found
    by a model with concept prompts (``label_source: "classes"``, ``confidence``: the model's score)."""

    label: str | None
    confidence: float | None
    neighbors: list[NeighborOut]
    label_source: Literal["examples", "classes"]
    predicted_iou: float | None = Field(default=None, description="examples: the mask's predicted IoU")
    stability_score: float | None = Field(default=None, description="examples: the mask's stability score")
    score: float | None = Field(default=None, description="classes: the model's score")
    box_xyxy: list[float] | None = Field(default=None, description="classes: the model's box, float pixels")


class PredictResponse(ImageAnswer):
    """200 of ``POST /v1/predict``."""

    collection: str | None = Field(description="the collection that labelled (null: classes only)")
    instances: list[InstanceOut]
    embedder_weights: str | None = None


class ExampleAdded(BaseModel):
    """200 of ``POST /v1/examples``."""

    model_config = OUT
    ids: list[str] = Field(min_length=1)
    collection: str
    label: str
    image_id: str
    area_px: int = Field(ge=1)
    timing_ms: dict[str, float]


class ExampleItem(BaseModel):
    model_config = OUT
    id: str
    label: str


class ExampleList(BaseModel):
    """200 of ``GET /v1/examples``: per-label counts and one page of ids (``next_offset``: the next page's
    ``offset``, null on the last)."""

    model_config = OUT
    collection: str
    dim: int
    total: int
    counts: dict[str, int]
    items: list[ExampleItem]
    next_offset: str | None


class ExampleDeleted(BaseModel):
    """200 of ``DELETE /v1/examples/{example_id}``."""

    model_config = OUT
    deleted: str
    collection: str


class VideoObjectOut(MaskFields):
    """One tracked object on one frame."""

    obj_id: int
    object_score: float = Field(ge=0, le=1, description="sigmoid of the object-presence logit")
    object_score_logit: float


class VideoFrameOut(BaseModel):
    model_config = OUT
    frame_index: int = Field(ge=0)
    propagate_ms: float
    objects: list[VideoObjectOut]


class VideoResponse(BaseModel):
    """200 of ``POST /v1/segment/video`` without ``stream`` (with it: NDJSON lines ``start``, ``frame``...,
    ``end``, or ``error`` midway; see docs/video.md)."""

    model_config = OUT
    model_id: str
    weights: str
    num_frames: int
    width: int
    height: int
    obj_ids: list[int]
    frames: list[VideoFrameOut]
    timing_ms: dict[str, float]
    warnings: list[str] | None = None


#: The 200 of ``POST /v1/segment/video`` with ``stream: true``.
NDJSON = {
    "application/x-ndjson": {
        "schema": {"type": "string", "description": "with stream: true, one JSON record a line (docs/video.md)"}
    }
}
#: An examples file: the 200 of ``GET /v1/examples/export`` and the body of ``POST /v1/examples/import``.
EXAMPLES_FILE = {
    "application/x-ndjson": {
        "schema": {
            "type": "string",
            "description": "JSON Lines: a header, one line per example, an end line (docs/http-api.md)",
        }
    }
}


class PolygonsResponse(BaseModel):
    """200 of ``POST /v1/masks/polygons``: one record per mask, in order."""

    model_config = OUT
    masks: list[MaskFields]
    polygon_tolerance_px: float


class ImportResult(BaseModel):
    """200 of ``POST /v1/examples/import``."""

    model_config = OUT
    collection: str
    imported: int = Field(ge=0)
    created: bool = Field(description="the collection was new")
    dim: int
    count: int = Field(ge=0, description="examples in the collection after the import")
    warnings: list[str] | None = Field(default=None, description="notes about the import, if any")


class SessionInfo(BaseModel):
    """A video session (``/v1/video/sessions``): its clip, objects and expiry; ``timing_ms`` when it was
    just opened."""

    model_config = OUT
    session_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    num_frames: int = Field(ge=1)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    obj_ids: list[int]
    frames_tracked: int = Field(ge=0)
    propagating: bool
    nbytes: int = Field(ge=0)
    replica: str | None
    model_id: str
    weights: str
    expires_at: str = Field(description="ISO-8601 UTC, e.g. 2025-01-31T12:00:00Z")
    warnings: list[str] | None = None
    timing_ms: dict[str, float] | None = None


class SessionFrame(BaseModel):
    """200 of ``POST /v1/video/sessions/{id}/prompts``: the prompted frame's masks of every object."""

    model_config = OUT
    session_id: str
    frame_index: int = Field(ge=0)
    objects: list[VideoObjectOut]
    obj_ids: list[int]
    mask_format: str
    timing_ms: dict[str, float]


class ObjectRemoved(BaseModel):
    """200 of ``DELETE /v1/video/sessions/{id}/objects/{obj_id}``: the objects left, and the frames whose
    masks changed."""

    model_config = OUT
    session_id: str
    obj_ids: list[int]
    frames: list[VideoFrameOut]
    mask_format: str


class SessionCancelled(BaseModel):
    model_config = OUT
    session_id: str
    cancelled: bool = Field(description="a propagation was running")


class SessionClosed(BaseModel):
    model_config = OUT
    session_id: str
    closed: bool


class ModelAccel(BaseModel):
    model_config = OUT
    precision: str
    compiler: str | None


class RuntimeChoice(BaseModel):
    model_config = OUT
    runtime: str = Field(description="torch, onnxruntime, openvino or tensorrt")
    precision: str = Field(description="fp32, bf16 or fp16")


class ExportFileOut(BaseModel):
    model_config = OUT
    sha256: str
    size_bytes: int = Field(ge=0)


class ExportOut(BaseModel):
    """The ONNX export a stage runs (``encoder.onnx``, ``decoder.onnx``)."""

    model_config = OUT
    verified: bool = Field(description="every file matched its manifest's SHA-256 and size (false: no manifest)")
    weights: str | None = Field(description="the weights it was exported from, as its manifest records them")
    opset: int | None
    files: dict[str, ExportFileOut]


class StageRuntimeOut(RuntimeChoice):
    """The runtime and precision a model stage runs (``runtime``, ``precision``: in force), what its config
    asked for, why any differs, and the CPU flags that decided."""

    requested: RuntimeChoice
    fallbacks: list[str] = Field(description="one message per fallback (runtime -> torch, precision -> fp32)")
    cpu_flags: list[str] = Field(
        description="the CPU flags of interest present (avx2, avx512_bf16, amx_bf16, ...): bf16 is native with "
        "avx512_bf16 or amx_bf16"
    )
    export: ExportOut | None = Field(description="the ONNX export run; null on torch")


class ModelOut(BaseModel):
    """A served model (``GET /v1/models``; ``/readyz`` shows the first eight fields)."""

    model_config = OUT
    model_id: str
    family: str | None = Field(description="sam2, sam3, mobile_sam, ...")
    weights: str = Field(description='"sha256:<hex>" of the weights file, or "random"')
    default: bool = Field(description="requests without model_id get this model")
    capabilities: dict[str, bool] = Field(
        description="points, boxes, mask_input, multimask, automatic_masks, concept_prompts, video"
    )
    devices: dict[str, str]
    accel: dict[str, ModelAccel]
    runtime: dict[str, StageRuntimeOut] = Field(description="per stage (encoder, decoder)")
    params_m: float | None = Field(default=None, description="parameters, millions")
    image_size: int | None = Field(default=None, description="side of the model input, pixels")
    feature_bytes: int | None = Field(default=None, description="bytes of one cached image's features")


class ModelList(BaseModel):
    """200 of ``GET /v1/models``: every served model, the default first."""

    model_config = OUT
    default: str
    models: list[ModelOut] = Field(min_length=1)


class Health(BaseModel):
    model_config = OUT
    status: Literal["ok"]


class Readiness(BaseModel):
    """``GET /readyz``: 200 ``ready`` with what runs where, or 503 ``not_ready`` with the reason."""

    model_config = ConfigDict(extra="allow")
    status: Literal["ready", "not_ready"]
    reason: str | None = None
    model_id: str | None = None
    weights: str | None = None


class CacheTotals(BaseModel):
    """The image-cache counters of the decoder replicas found, summed."""

    model_config = OUT
    entries: int = Field(ge=0)
    bytes: int = Field(ge=0)
    hits: int = Field(ge=0)
    misses: int = Field(ge=0)
    evictions: int = Field(ge=0)
    encodes: int = Field(ge=0)


class DecoderTotals(BaseModel):
    """The decoder replicas' work, summed, and each replica's own ``stats()`` by replica id."""

    model_config = OUT
    requests: int = Field(ge=0)
    batches: int = Field(ge=0)
    busy_s: float = Field(ge=0)
    replicas: dict[str, dict[str, Any]]


class Stats(BaseModel):
    """200 of ``GET /v1/stats``: work counters of one replica per stage (each stage's own keys), the
    decoders' per replica (of every served model), and ``cache``, their image caches' counters summed
    (``cache_by_model``: per served model)."""

    model_config = OUT
    cache: CacheTotals
    cache_by_model: dict[str, CacheTotals]
    decoder: DecoderTotals
    encoder: dict[str, Any]
    embedder: dict[str, Any]
    retriever: dict[str, Any]
    fader: dict[str, Any]
    video: dict[str, Any] | None = Field(default=None, description="with a video segmenter")


def image_answer(image: ImageInfo, body: dict, timing: dict) -> dict:
    """The answer about one image: model and weights, the image's id and size, ``encode_cached``, the
    route's ``body`` and ``timing_ms``, and the random-weights warning where it applies."""
    out = {
        "model_id": body.pop("model_id"),
        "weights": body.pop("weights"),
        "image_id": image.image_id,
        "width": image.width,
        "height": image.height,
        "encode_cached": image.encode_cached,
        **body,
        "timing_ms": timing,
    }
    if out["weights"] == "random" or body.get("embedder_weights") == "random":
        out["warnings"] = [RANDOM_WEIGHTS_WARNING]
    return out
