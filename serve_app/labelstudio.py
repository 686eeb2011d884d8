"""Label Studio's side of the ML backend protocol, as pure functions: a project's label config, the
annotator's clicks (the ``context`` of an interactive ``/predict``), and the prediction results Label
Studio reads (brush RLE or polygon regions in percent of the image).

No HTTP and no Ray here; the route (:mod:`serve_app.ingress.routes.labelstudio`) fetches the task's image,
asks the stages and hands their masks to :func:`brush_result` / :func:`polygon_results`. The brush RLE is
Label Studio's own encoding, written by ``label-studio-sdk``'s converter (``label_studio_sdk.converter.
brush.mask2rle``), imported when a brush result is built (``pip install label-studio-sdk``).

Coordinates: Label Studio gives and takes region coordinates in percent of the image's width and height
(``x``, ``y``, ``width``, ``height`` in [0, 100]); samgraph's prompts are pixels of the original image.
"""

from __future__ import annotations

import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

#: Control tags the backend reads: the mask outputs, the annotator's prompts, and the concept prompt.
MASK_TAGS = ("BrushLabels", "PolygonLabels")
PROMPT_TAGS = ("KeyPointLabels", "RectangleLabels")
TEXT_TAGS = ("TextArea", "Choices")
#: Tags that carry no data of their own: layout, and the children of a control.
LAYOUT_TAGS = ("View", "Header", "Style", "Label", "Choice")
#: Every tag a label config may hold for this backend (anything else is refused, naming it).
KNOWN_TAGS = ("Image", *MASK_TAGS, *PROMPT_TAGS, *TEXT_TAGS, *LAYOUT_TAGS)
#: The context region types of an interactive request, by the control tag that makes them.
CONTEXT_TYPES = {"keypointlabels": "KeyPointLabels", "rectanglelabels": "RectangleLabels", "textarea": "TextArea"}


@dataclass(frozen=True)
class Control:
    """A control tag of a label config.

    Attributes:
        tag: its tag name, e.g. ``BrushLabels``.
        name: its ``name`` (a result's ``from_name``).
        to_name: the object tag it labels (a result's ``to_name``).
        labels: the ``value`` of its ``<Label>`` (or ``<Choice>``) children, in order.
    """

    tag: str
    name: str
    to_name: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a project's label config the backend uses.

    Attributes:
        image_name: the ``<Image>`` tag's ``name`` (results' ``to_name``).
        image_key: the task data key of the image URL (``value="$image"`` -> ``image``).
        controls: every control tag over that image, in document order.
    """

    image_name: str
    image_key: str
    controls: tuple[Control, ...] = field(default_factory=tuple)

    def first(self, *tags: str) -> Control | None:
        """The first control whose tag is one of ``tags``, else None."""
        return next((c for c in self.controls if c.tag in tags), None)

    @property
    def mask_control(self) -> Control:
        """The control masks are answered with: the first ``PolygonLabels`` when the config has one (the
        project wants polygons), else the first ``BrushLabels``."""
        found = self.first("PolygonLabels") or self.first("BrushLabels")
        assert found is not None  # parse_label_config refuses a config without either
        return found

    @property
    def label_names(self) -> tuple[str, ...]:
        """The mask control's label names: the classes of whole-task pre-labelling."""
        return self.mask_control.labels


def parse_label_config(xml: str) -> LabelConfig:
    """A Label Studio label config (XML) -> :class:`LabelConfig`.

    The config must hold one ``<Image>`` and, over it, a ``BrushLabels`` or ``PolygonLabels`` with at
    least one label; ``KeyPointLabels``, ``RectangleLabels`` (the annotator's prompts), ``TextArea`` and
    ``Choices`` (concept prompts) are optional.

    Raises:
        ValueError: the XML does not parse, holds a tag outside :data:`KNOWN_TAGS` (named, with the known
            ones), no or several ``<Image>`` tags, a control without ``name``/``toName``, or no mask
            control with labels. The message is what Label Studio shows the user.
    """
    if not isinstance(xml, str) or not xml.strip():
        raise ValueError("label config: empty; give the project's XML label config")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ValueError(f"label config: not valid XML: {e}") from None
    images, controls = [], []
    for el in root.iter():
        tag = el.tag
        if tag not in KNOWN_TAGS:
            known = ", ".join(KNOWN_TAGS)
            raise ValueError(f"label config: tag <{tag}> is not supported by samgraph (supported: {known})")
        if tag == "Image":
            images.append(el)
        elif tag in (*MASK_TAGS, *PROMPT_TAGS, *TEXT_TAGS):
            name, to_name = el.get("name"), el.get("toName")
            if not name or not to_name:
                raise ValueError(f"label config: <{tag}> needs name and toName attributes")
            children = "Choice" if tag == "Choices" else "Label"
            labels = tuple(c.get("value") for c in el.iter(children) if c.get("value"))
            controls.append(Control(tag, name, to_name, labels))
    if len(images) != 1:
        raise ValueError(f"label config: needs exactly one <Image> tag; found {len(images)}")
    image = images[0]
    image_name, value = image.get("name"), image.get("value") or ""
    if not image_name or not value.startswith("$") or len(value) < 2:
        raise ValueError('label config: <Image> needs a name and a value="$key" naming the task data key')
    own = tuple(c for c in controls if image_name in c.to_name.split(","))
    config = LabelConfig(image_name, value[1:], own)
    masks = [c for c in own if c.tag in MASK_TAGS]
    if not masks:
        raise ValueError(f"label config: needs a BrushLabels or PolygonLabels over <Image name={image_name!r}>")
    if not config.mask_control.labels:
        raise ValueError(f"label config: <{config.mask_control.tag} name={config.mask_control.name!r}> has no labels")
    return config


@dataclass(frozen=True)
class Interaction:
    """The annotator's prompts of an interactive request, in pixels of the original image.

    Attributes:
        points: ``[[x, y, label], ...]``, label 1 positive, 0 negative (samgraph's point prompts).
        box_xyxy: ``[x0, y0, x1, y1]`` or None.
        texts: concept prompts typed into a text area.
        label: the label the annotator chose on the prompt regions (the last one given), or None.
        width, height: the image size Label Studio gives (``original_width``, ``original_height``).
    """

    points: tuple[tuple[float, float, int], ...]
    box_xyxy: tuple[float, float, float, float] | None
    texts: tuple[str, ...]
    label: str | None
    width: int
    height: int


def parse_context(context: dict) -> Interaction | None:
    """The ``context`` Label Studio sends with an interactive ``/predict`` -> :class:`Interaction`.

    Each region of ``context["result"]`` is a ``keypointlabels`` (``value.x``, ``value.y`` in percent;
    ``is_positive``), a ``rectanglelabels`` (``value.x, y, width, height`` in percent) or a ``textarea``
    (``value.text``: a list of strings). Several keypoints add up; the last rectangle is the box.

    Returns:
        None for an empty context (no click: whole-task pre-labelling).

    Raises:
        ValueError: a region of another type, or without the coordinates or image size its type needs.
    """
    regions = (context or {}).get("result") or []
    if not isinstance(regions, list):
        raise ValueError("context.result: must be a list of regions")
    if not regions:
        return None
    points, box, texts, label, size = [], None, [], None, None
    for i, r in enumerate(regions):
        where = f"context.result[{i}]"
        kind = r.get("type") if isinstance(r, dict) else None
        if kind not in CONTEXT_TYPES:
            raise ValueError(f"{where}.type: {kind!r} is not a prompt samgraph takes ({', '.join(CONTEXT_TYPES)})")
        value = r.get("value") or {}
        if kind == "textarea":
            texts += [t for t in value.get("text") or [] if isinstance(t, str) and t.strip()]
            continue
        try:
            w, h = int(r["original_width"]), int(r["original_height"])
            x, y = float(value["x"]) / 100 * w, float(value["y"]) / 100 * h
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: needs original_width, original_height and value.x, value.y") from None
        if w < 1 or h < 1:
            raise ValueError(f"{where}: original_width and original_height must be at least 1")
        size = (w, h)
        chosen = value.get(kind) or []
        label = chosen[0] if chosen else label
        if kind == "keypointlabels":
            points.append((x, y, 1 if r.get("is_positive", True) else 0))
        else:
            try:
                x1, y1 = x + float(value["width"]) / 100 * w, y + float(value["height"]) / 100 * h
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{where}: a rectangle needs value.width and value.height") from None
            box = (x, y, x1, y1)
    if not points and box is None and not texts:
        raise ValueError("context.result: no keypoint, rectangle or text to prompt with")
    width, height = size if size is not None else (0, 0)
    return Interaction(tuple(points), box, tuple(texts), label, width, height)


def _region(control: Control, kind: str, value: dict, width: int, height: int, score: float | None) -> dict:
    out = {
        "id": uuid.uuid4().hex[:10],
        "from_name": control.name,
        "to_name": control.to_name,
        "type": kind,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": value,
        "readonly": False,
    }
    if score is not None:
        out["score"] = float(score)
    return out


def brush_result(mask: np.ndarray, control: Control, label: str, score: float | None = None) -> dict:
    """One ``brushlabels`` region of a mask, in Label Studio's brush RLE.

    Args:
        mask: (H, W) bool or 0/1 mask of the original image.
        control: the ``BrushLabels`` control (``from_name``, ``to_name``).
        label: the region's label.
        score: the region's score in [0, 1], or None.

    Raises:
        ValueError: ``mask`` is not 2-D.
        ModuleNotFoundError: ``label-studio-sdk`` is not installed (``pip install label-studio-sdk``).
    """
    from label_studio_sdk.converter import brush

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: must be (H, W); got shape {mask.shape}")
    rle = brush.mask2rle((mask > 0).astype(np.uint8) * 255)
    value = {"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [label]}
    return _region(control, "brushlabels", value, mask.shape[1], mask.shape[0], score)


def polygon_results(
    polygons: list[dict], control: Control, label: str, width: int, height: int, score: float | None = None
) -> list[dict]:
    """``polygonlabels`` regions of a mask's polygons, one per part (Label Studio's polygon has one ring,
    so a part's holes are left out).

    Args:
        polygons: samgraph's ``polygons`` of one mask: ``[{"exterior": [[x, y], ...], "holes": [...]}]``,
            integer pixel corners of the original image.
        control: the ``PolygonLabels`` control.
        label: the regions' label.
        width, height: the image size, pixels.
        score: the regions' score, or None.
    """
    out = []
    for part in polygons:
        ring = part["exterior"]
        if len(ring) > 1 and ring[0] == ring[-1]:
            ring = ring[:-1]  # Label Studio closes the ring itself
        if len(ring) < 3:
            continue
        points = [[x / width * 100, y / height * 100] for x, y in ring]
        out.append(_region(control, "polygonlabels", {"points": points, "polygonlabels": [label], "closed": True},
                           width, height, score))
    return out


def model_version(model_id: str) -> str:
    """The ``model_version`` of every prediction samgraph makes: ``samgraph-<model_id>`` (Label Studio skips
    tasks that already hold a prediction of this version)."""
    return f"samgraph-{model_id}"


def mask_regions(record: dict, control: Control, label: str, width: int, height: int, score: float) -> list[dict]:
    """A samgraph mask record as Label Studio regions of ``control``: one ``brushlabels`` region, or one
    ``polygonlabels`` region per part of the mask for a ``PolygonLabels`` control.

    Args:
        record: a mask of ``/v1/segment`` or ``/v1/predict`` (or of the offline pipeline): ``rle`` (COCO RLE
            of the original image) and/or ``polygons`` (pixel rings of the original image). A polygon control
            without ``polygons`` gets them from the RLE (``/v1/predict``'s ``polygon`` mask format).
        control: the mask control (:attr:`LabelConfig.mask_control`).
        label: the regions' label.
        width, height: the image size, pixels.
        score: the regions' score in [0, 1].
    """
    from models.masks import decode_rle, mask_format_fields

    if control.tag == "PolygonLabels":
        polygons = record.get("polygons")
        if polygons is None:
            polygons = mask_format_fields(decode_rle(record["rle"]), "polygon")["polygons"]
        return polygon_results(polygons, control, label, width, height, score)
    return [brush_result(decode_rle(record["rle"]), control, label, score)]


def instances_prediction(
    instances: Iterable[dict], config: LabelConfig, width: int, height: int, model_id: str
) -> dict:
    """One task's whole-image prediction (no click) from labelled instances: every instance whose label is
    one of the config's label names, as regions of its mask control scored by the instance's
    ``confidence`` (clamped to [0, 1]); instances with another label or none are left out.

    The online route (``/predict`` without a context) and ``samgraph labelstudio prelabel`` both build
    their predictions here, from ``/v1/predict``'s instances or the offline pipeline's.

    Args:
        instances: ``{"label", "confidence", "rle" and/or "polygons"}`` records (``/v1/predict``'s
            ``instances``: by the few-shot vote, or the SAM 3 classes).
        config: the project's label config.
        width, height: the image size, pixels.
        model_id: the model that made them (``model_version`` ``samgraph-<model_id>``).
    """
    names = set(config.label_names)
    control = config.mask_control
    results = []
    for inst in instances:
        if inst.get("label") not in names:
            continue
        score = min(1.0, max(0.0, float(inst.get("confidence") or 0.0)))
        results += mask_regions(inst, control, inst["label"], width, height, score)
    return prediction(results, model_version(model_id))


#: What a project's ML backend connection may set in Label Studio's *Extra params* (``/setup``'s
#: ``extra_params``): the served model that answers, and the collection of few-shot examples that labels.
BACKEND_OPTIONS = ("model_id", "collection")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class BackendOptions:
    """A project's choices for the backend (from Label Studio's *Extra params*).

    Attributes:
        model_id: the served model that answers (None: the service's default model).
        collection: the collection whose few-shot examples label whole-task pre-labelling on models without
            concept prompts (None: ``default``).
    """

    model_id: str | None = None
    collection: str | None = None


def parse_extra_params(extra: dict | str | None) -> BackendOptions:
    """``/setup``'s ``extra_params`` (a JSON object, or its text as Label Studio's form keeps it) ->
    :class:`BackendOptions`.

    Raises:
        ValueError: not a JSON object, a key outside :data:`BACKEND_OPTIONS`, or a value that is not a name
            of 1-64 characters of ``[A-Za-z0-9_.-]``.
    """
    if extra is None or extra == "" or extra == {}:
        return BackendOptions()
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            raise ValueError('extra_params: not valid JSON; give an object such as {"collection": "mine"}') from None
    if not isinstance(extra, dict):
        raise ValueError("extra_params: must be a JSON object")
    unknown = sorted(set(extra) - set(BACKEND_OPTIONS))
    if unknown:
        known = ", ".join(BACKEND_OPTIONS)
        raise ValueError(f"extra_params: unknown key(s) {', '.join(unknown)} (samgraph reads {known})")
    for key, value in extra.items():
        if value is not None and (not isinstance(value, str) or not _NAME.fullmatch(value)):
            raise ValueError(f"extra_params.{key}: must be a name of 1-64 characters of A-Z, a-z, 0-9, _, . or -")
    return BackendOptions(extra.get("model_id"), extra.get("collection"))


def prediction(results: list[dict], model_version: str) -> dict:
    """One task's prediction: its regions, their mean score (0 for none) and the model version."""
    scores = [r["score"] for r in results if r.get("score") is not None]
    return {"result": results, "score": float(np.mean(scores)) if scores else 0.0, "model_version": model_version}


def brush_mask(rle: list[int], width: int, height: int) -> np.ndarray:
    """Label Studio's brush RLE -> (H, W) bool mask (the inverse of :func:`brush_result`'s encoding), by
    ``label-studio-sdk``'s decoder.

    Raises:
        ValueError: the RLE does not hold ``width * height`` RGBA pixels.
    """
    from label_studio_sdk.converter import brush

    flat = np.asarray(brush.decode_rle(rle), dtype=np.uint8)
    if flat.size != width * height * 4:
        raise ValueError(f"rle: decodes to {flat.size} values; expected {width} x {height} x 4")
    return flat.reshape(height, width, 4)[:, :, 3] > 0
