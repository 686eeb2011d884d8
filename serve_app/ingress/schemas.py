"""HTTP request bodies of /v1/segment, /v1/predict and /v1/examples, and the prompt types they share
with /v1/segment/video (``serve_app/ingress/video_schemas.py``) (pydantic v2).

Prompts convert into the vocabulary below HTTP, :class:`models.prompts.Prompt` (:meth:`PromptIn.to_prompt`,
:func:`to_prompt_specs`), whose rules (:func:`models.prompts.check_box`, :func:`models.prompts.check_points`)
the validators here apply, so a body and a Python caller are held to the same ones.

Coordinates are pixels of the uploaded image after EXIF orientation, (x, y) with x right and y down.
Rules that need the image size (coordinates inside the image) are checked by
:func:`check_prompts_in_image` once the size is known.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from deployments.contracts import check_in_image
from models.amg import AmgSettings
from models.fade_strategies import ExponentialFade, GaussianFade, LinearFade
from models.knn import LabelSettings
from models.masks import POLYGON_TOLERANCE_PX, decode_logits_base64
from models.prompts import LOW_RES_MASK_SIZE, Prompt, PromptError, PromptSpec, check_box, check_points, decoder_prompts
from models.segmenter import ConceptPrompt
from serve_app.ingress.errors import ApiError
from serve_app.settings import derive

#: Every body: unknown fields and non-finite numbers are rejected.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
SHA256_HEX = r"^[0-9a-f]{64}$"


class ImageIn(BaseModel):
    """An image inline: ``{"base64": "<JPEG/PNG/WebP/... bytes, base64>"}``."""

    model_config = STRICT
    base64: str = Field(min_length=1)


class LogitsIn(BaseModel):
    """Low-res mask logits as returned in ``low_res_logits``: little-endian array bytes in base64."""

    model_config = STRICT
    base64: str
    shape: tuple[int, int] = (LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)
    dtype: Literal["float32", "float16"] = "float32"

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: tuple[int, int]) -> tuple[int, int]:
        if tuple(v) != (LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE):
            raise ValueError(f"shape must be [{LOW_RES_MASK_SIZE}, {LOW_RES_MASK_SIZE}]")
        return v

    def to_array(self) -> np.ndarray:
        """(256, 256) float32 logits. Raises ValueError on bad bytes."""
        return decode_logits_base64(self.base64, self.shape, self.dtype)


#: The JSON schema of one point, ``[x, y, label]`` (checked by :func:`check_points`, which names the rule).
POINT_SCHEMA = {
    "type": "array",
    "prefixItems": [{"type": "number"}, {"type": "number"}, {"enum": [1, 0, "fg", "bg"]}],
    "minItems": 3,
    "maxItems": 3,
    "description": "[x, y, label]: pixels; label 1 or fg for foreground, 0 or bg for background",
}
MAX_PROMPTS = 64  # per /v1/segment request, and per tracked object of a clip
MAX_POINTS = 64  # per prompt
MAX_TEXT_CHARS = 300  # per text prompt


class GeometryIn(BaseModel):
    """``box_xyxy`` and ``points`` with their rules, shared by prompts, examples and video prompts."""

    model_config = STRICT
    box_xyxy: list[float] | None = Field(
        default=None, min_length=4, max_length=4, description="[x0, y0, x1, y1], pixels; x1 > x0, y1 > y0"
    )
    points: list[Annotated[list[Any], WithJsonSchema(POINT_SCHEMA)]] | None = Field(
        default=None,
        max_length=MAX_POINTS,
        json_schema_extra={"minItems": 1},  # empty: check_points says why
    )

    @field_validator("box_xyxy")
    @classmethod
    def _box(cls, v: list[float] | None) -> list[float] | None:
        return check_box(v)

    @field_validator("points")
    @classmethod
    def _points(cls, v: list[list[Any]] | None) -> list[list[Any]] | None:
        return check_points(v)


class ExemplarIn(BaseModel):
    """An example box of a concept: ``box_xyxy`` pixels and ``label`` 1 (or "pos": more like this) or 0
    (or "neg": not this)."""

    model_config = STRICT
    box_xyxy: list[float] = Field(min_length=4, max_length=4, description="[x0, y0, x1, y1], pixels")
    label: Literal[1, 0, "pos", "neg"] = 1

    @field_validator("box_xyxy")
    @classmethod
    def _box(cls, v: list[float]) -> list[float]:
        return check_box(v)

    @property
    def positive(self) -> bool:
        return self.label in (1, "pos")


MAX_EXEMPLARS = 16  # per concept prompt


class PromptIn(GeometryIn):
    """One object to segment (a box, points, both, and/or the low-res logits of an earlier answer), or a
    concept to find every instance of (a ``text``, example boxes in ``exemplars``, or both).

    ``box_xyxy``: [x0, y0, x1, y1] pixels with x1 > x0 and y1 > y0. ``points``: [[x, y, label], ...],
    label 1 or "fg" for foreground, 0 or "bg" for background. A concept prompt stands alone: on a model
    with concept prompts (SAM 3) it answers every instance found; on another a ``text`` ranks the
    automatic masks by CLIP similarity and ``exemplars`` are refused (422 ``unsupported_by_model``).
    """

    mask_input: LogitsIn | None = None
    text: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_CHARS)
    exemplars: list[ExemplarIn] | None = Field(default=None, min_length=1, max_length=MAX_EXEMPLARS)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("text must not be blank")
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> PromptIn:
        geometric = self.box_xyxy is not None or self.points is not None or self.mask_input is not None
        if self.is_text and geometric:
            raise ValueError(
                "a concept prompt (text, exemplars) stands alone: no box_xyxy, points or mask_input with it"
            )
        if not self.is_text and not geometric:
            raise ValueError("a prompt needs box_xyxy, points, mask_input, text or exemplars")
        return self

    @property
    def is_text(self) -> bool:
        """A concept prompt: a text and/or example boxes (answered by concept segmentation or CLIP ranking)."""
        return self.text is not None or self.exemplars is not None

    def to_concept(self, score_thresh: float, max_instances: int) -> ConceptPrompt:
        """The concept prompt below HTTP (:class:`models.segmenter.ConceptPrompt`)."""
        boxes = labels = None
        if self.exemplars:
            boxes = np.asarray([e.box_xyxy for e in self.exemplars], np.float32)
            labels = np.asarray([1 if e.positive else 0 for e in self.exemplars], np.int64)
        return ConceptPrompt(self.text, boxes, labels, score_thresh, max_instances)

    def to_prompt(self, multimask_output: bool | None = None) -> Prompt:
        """The prompt in the vocabulary below HTTP (:class:`models.prompts.Prompt`).

        Args:
            multimask_output: the request's choice; None leaves SAM's advice (:attr:`Prompt.multimask`).

        Raises:
            ValueError: a ``mask_input`` that does not decode.
        """
        pts = None if self.points is None else np.asarray(self.points, np.float64)
        return Prompt(
            box_xyxy=self.box_xyxy,
            point_coords=None if pts is None else pts[:, :2],
            point_labels=None if pts is None else pts[:, 2].astype(np.int32),
            mask_input=None if self.mask_input is None else self.mask_input.to_array(),
            text=self.text,
            multimask_output=multimask_output,
        )


class ImageRefIn(BaseModel):
    """The image of a request: inline (``image``, or a multipart file part), the ``image_id`` of an earlier
    upload, or both. With both, ``image_id`` must be the SHA-256 of the bytes, and a miss at the replica
    that owns the image is answered by encoding them again (resend on miss, ``"encode_cached": false``);
    with ``image_id`` alone a miss is 404 ``image_not_cached``."""

    model_config = STRICT
    image: ImageIn | None = None
    image_id: Annotated[str, Field(pattern=SHA256_HEX)] | None = None


#: The ``model_id`` of a request: a model the service serves (``GET /v1/models``); unset: the default.
MODEL_ID = Annotated[
    str | None,
    Field(min_length=1, max_length=100, description="a served model (GET /v1/models); unset: the default"),
]
MAX_INSTANCES = 1000


class SegmentRequest(ImageRefIn):
    """Body of ``POST /v1/segment`` (or the ``request`` part of a multipart upload).

    ``score_thresh`` and ``max_instances`` bound the instances of a concept prompt on a model with concept
    prompts (SAM 3): those scoring at least ``score_thresh``, at most ``max_instances``, best first.
    """

    model_config = STRICT
    model_id: MODEL_ID = None
    prompts: list[PromptIn] = Field(default_factory=list, max_length=MAX_PROMPTS)
    score_thresh: float = Field(default=0.5, ge=0, le=1)
    max_instances: int = Field(default=100, ge=1, le=MAX_INSTANCES)
    multimask_output: bool | None = None
    max_masks: int = Field(default=3, ge=1, le=3)
    mask_format: MASK_FORMAT = "rle"
    polygon_tolerance_px: POLYGON_TOLERANCE = POLYGON_TOLERANCE_PX
    return_logits: bool = False
    fade: FadeIn | None = None
    amg: AmgIn | None = None


@derive(GaussianFade, LinearFade, ExponentialFade, optional=True)
class FadeIn(BaseModel):
    """Context fade of the crops sent to CLIP (see ``models/fade_strategies.py``): ``strategy`` and the
    built-in strategies' parameters (``sigma_px``, ``min_fade``, ``max_distance_px``, ``decay``, with
    their limits); unset fields take the app's defaults when ``strategy`` is the app's, else the
    strategy's own. Crop geometry is app config."""

    model_config = STRICT
    strategy: str = "gaussian"

    def params(self) -> dict:
        """The strategy's own parameters that were set."""
        return {k: v for k, v in self.model_dump(exclude={"strategy"}).items() if v is not None}


@derive(AmgSettings, optional=True, exclude=("points_per_batch",))
class AmgIn(BaseModel):
    """Automatic-mask settings: the fields and limits of ``models/amg.py::AmgSettings``; unset fields
    take the app's defaults. ``points_per_batch`` is the app's alone (``amg:`` config): it changes the
    decoder's peak memory (about 26 MB a click on CPU: 27 GB at its limit of 1024), not the answer."""

    model_config = STRICT


COLLECTION_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
COLLECTION = Annotated[str, Field(pattern=COLLECTION_PATTERN)]
#: How masks come back: COCO RLE, a base64 PNG, polygons (rings with holes, and COCO's flat lists), or
#: area and box only.
MASK_FORMAT = Literal["rle", "png", "polygon", "none"]
#: Simplification of ``polygon`` masks: the most a simplified ring strays from the traced outline, pixels.
POLYGON_TOLERANCE = Annotated[
    float, Field(ge=0, le=64, description="polygon simplification tolerance, pixels (0: exact outline)")
]
LABEL_MAX_CHARS = 100
LABEL = Annotated[str, Field(min_length=1, max_length=LABEL_MAX_CHARS)]


MAX_CLASSES = 100  # per /v1/predict request


@derive(LabelSettings)
class PredictRequest(ImageRefIn):
    """Body of ``POST /v1/predict``: label every object in an image from the nearest labelled examples
    (``top_k``, ``min_score``, ``max_instances``: ``models/knn.py::LabelSettings``), and/or, on a model with
    concept prompts (SAM 3), find every instance of each of ``classes`` (one concept prompt per class on one
    encode; instances scoring at least ``score_thresh``, at most ``max_instances`` per class). With
    ``classes`` the collection is optional: without it (or when it does not exist) only the classes label."""

    model_config = STRICT
    model_id: MODEL_ID = None
    classes: list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]] | None = Field(
        default=None, min_length=1, max_length=MAX_CLASSES, description="class names, e.g. [\"person\", \"car\"]"
    )
    score_thresh: float = Field(default=0.5, ge=0, le=1)
    collection: COLLECTION | None = None
    mask_format: MASK_FORMAT = "rle"
    polygon_tolerance_px: POLYGON_TOLERANCE = POLYGON_TOLERANCE_PX
    fade: FadeIn | None = None
    amg: AmgIn | None = None

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        names = [c.strip() for c in v]
        if not all(names):
            raise ValueError("a class name must not be blank")
        if len(set(names)) != len(names):
            raise ValueError("each class name at most once")
        return names

    @property
    def examples_collection(self) -> str | None:
        """The collection to label from: ``collection``, else ``"default"`` without ``classes``."""
        return self.collection if self.collection is not None or self.classes else "default"


class RleIn(BaseModel):
    """A COCO RLE mask: ``{"size": [H, W], "counts": "<compressed string>"}``."""

    model_config = STRICT
    size: tuple[int, int]
    counts: str = Field(min_length=1)


class PolygonsRequest(BaseModel):
    """Body of ``POST /v1/masks/polygons``: COCO RLE masks (as any route returns them) to trace as polygons."""

    model_config = STRICT
    masks: list[RleIn] = Field(min_length=1, max_length=256)
    polygon_tolerance_px: POLYGON_TOLERANCE = POLYGON_TOLERANCE_PX


class ExampleRequest(ImageRefIn, GeometryIn):
    """Body of ``POST /v1/examples``: one labelled object, given by a prompt (``box_xyxy`` and/or
    ``points``, as in /v1/segment, segmented by ``model_id``) or a mask."""

    model_id: MODEL_ID = None
    mask_rle: RleIn | None = None
    label: LABEL
    collection: COLLECTION = "default"
    fade: FadeIn | None = None

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("label must not be blank")
        return v.strip()

    @model_validator(mode="after")
    def _one_object(self) -> ExampleRequest:
        if self.mask_rle is not None and (self.box_xyxy is not None or self.points is not None):
            raise ValueError("give either mask_rle or a prompt (box_xyxy and/or points), not both")
        if self.mask_rle is None and self.box_xyxy is None and self.points is None:
            raise ValueError("an example needs box_xyxy, points or mask_rle")
        return self

    def prompt(self) -> PromptIn:
        """The example's prompt as a /v1/segment prompt (validated by the same rules)."""
        return PromptIn(box_xyxy=self.box_xyxy, points=self.points)


def check_prompts_in_image(
    prompts: list[PromptIn], width: int, height: int, field_prefix: str | None = "prompts"
) -> None:
    """Every coordinate must lie in [0, width] x [0, height] (:func:`deployments.contracts.check_in_image`).

    Args:
        field_prefix: the error names ``{field_prefix}[i].box_xyxy``; None names a lone prompt's
            ``box_xyxy`` (as in ``/v1/examples``).

    Raises:
        OutOfImage: 422 ``out_of_image`` naming the first prompt field outside the image.
    """
    check_in_image([(p.box_xyxy, p.points or []) for p in prompts], width, height, field_prefix)


def to_prompt_specs(
    prompts: list[PromptIn], width: int | None = None, height: int | None = None
) -> tuple[list[PromptSpec], list[bool]]:
    """Validated geometric prompts -> decoder prompts and default multimask flags
    (:func:`models.prompts.decoder_prompts`); no prompts -> a centre click of the ``width`` x ``height``
    image, or none when the size is not given (the decoder then clicks the centre, see
    :meth:`deployments.contracts.DecodeJob.for_image`).

    Raises:
        ApiError: 422 for a ``mask_input`` that does not decode, naming ``prompts[i].mask_input``.
    """
    converted = []
    for i, p in enumerate(prompts):
        try:
            converted.append(p.to_prompt())
        except PromptError as e:  # a rule of the vocabulary the body's validators did not already apply
            raise ApiError(422, "invalid_request", str(e), f"prompts[{i}].{e.field}") from None
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"mask_input: {e}", f"prompts[{i}].mask_input") from None
    return decoder_prompts(converted, width, height)


SegmentRequest.model_rebuild()
