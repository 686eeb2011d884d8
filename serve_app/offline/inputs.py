"""What a ``samgraph batch`` run works on: the input images and the checked flags.

* :func:`list_inputs`: the images of a folder or of a COCO annotation file, as rows for Ray Data;
* :func:`plan_run`: the run's flags checked against the input (:class:`BatchPlan`).

Each image's prompts are built and validated in the load stage
(:func:`deployments.offline_stages.prompt_specs`), by the rules of the prompt vocabulary that
``/v1/segment`` converts its bodies into (:class:`models.prompts.Prompt`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class BatchInput:
    """The images of a run, as rows for Ray Data, and the COCO categories where known.

    Attributes:
        items: ``{"path", "image_id", "anns"}`` per image, ``image_id`` COCO's id or the 1-based index in
            sorted file order; ``anns`` the image's COCO annotations as a JSON string (``"[]"`` for a
            folder), so that Arrow does not turn polygons into arrays on the way.
        categories: COCO category id -> name (empty for a folder).
        skipped: ``(path, reason)`` for files left out before the run (not images by suffix).
        coco_path: the annotation file, if any.
    """

    items: list[dict]
    categories: dict[int, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    coco_path: str | None = None


def list_inputs(
    source: str | os.PathLike, images_dir: str | os.PathLike | None = None, limit: int | None = None
) -> BatchInput:
    """Images of a folder (sorted by name, not recursive) or of a COCO annotation file.

    For a COCO file the images are ``images_dir/file_name``; ``images_dir`` defaults to COCO's layout, a
    folder beside ``annotations/`` named in the file's name (``annotations/instances_val2017.json`` ->
    ``val2017/``), else the file's own folder.

    Args:
        source: a folder of images, or a COCO annotation JSON file.
        images_dir: the folder of a COCO file's images (default: found as above).
        limit: only the first ``limit`` images (in file-name order, or by COCO image id).

    Returns:
        The run's :class:`BatchInput`; a folder's files that are not images by suffix are in ``skipped``.

    Raises:
        FileNotFoundError: ``source`` or the images folder does not exist.
        ValueError: a JSON file that is not a COCO annotation file.
    """
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"--input {src} does not exist")
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
        items, skipped = [], []
        for p in files:
            if p.suffix.lower() in IMAGE_SUFFIXES:
                items.append({"path": str(p), "image_id": len(items) + 1, "anns": "[]"})
            else:
                skipped.append(
                    (
                        str(p),
                        f"not an image file (suffix {p.suffix or 'none'}; expected one of {', '.join(IMAGE_SUFFIXES)})",
                    )
                )
        return BatchInput(items[:limit], skipped=skipped)
    data = json.loads(src.read_text())
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise ValueError(f"{src} is not a COCO annotation file (needs 'images' and 'annotations' lists)")
    folder = Path(images_dir) if images_dir else _default_images_dir(src)
    if not folder.is_dir():
        raise FileNotFoundError(f"images folder {folder} does not exist; give --images DIR")
    by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    images = sorted(data["images"], key=lambda im: int(im["id"]))[:limit]
    items = [
        {
            "path": str(folder / im["file_name"]),
            "image_id": int(im["id"]),
            "anns": json.dumps(by_image.get(int(im["id"]), [])),
        }
        for im in images
    ]
    categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
    return BatchInput(items, categories, coco_path=str(src))


def _default_images_dir(ann_file: Path) -> Path:
    """COCO's layout: ``annotations/instances_val2017[_suffix].json`` beside ``val2017/``."""
    for base in (ann_file.parent.parent, ann_file.parent):
        for token in ann_file.stem.split("_")[1:]:
            if token and (base / token).is_dir():
                return base / token
    return ann_file.parent


@dataclass
class BatchPlan:
    """What one run does (validated by :func:`plan_run`)."""

    prompts: str
    predict: bool
    add_examples: bool
    collection: str
    embeddings: bool
    #: Class names to find every instance of by concept prompts (a SAM 3 model; ``samgraph labelstudio
    #: prelabel``), instead of automatic masks.
    classes: tuple[str, ...] = ()


def plan_run(
    data: BatchInput, prompts: str | None, predict: bool, add_examples: bool, collection: str, embeddings: bool
) -> BatchPlan:
    """Check the flags against the input.

    Args:
        data: the run's input (:func:`list_inputs`).
        prompts: ``coco-boxes``, ``center-points`` or ``auto``; None for the input's default
            (``coco-boxes`` for a COCO file, ``center-points`` for a folder).
        predict: label every instance by its nearest examples in ``collection``.
        add_examples: store every ground-truth instance of the COCO file in ``collection``.
        collection: the examples' collection name.
        embeddings: keep each instance's CLIP embedding in the outputs.

    Returns:
        The checked :class:`BatchPlan`.

    Raises:
        ValueError: an unknown ``prompts`` mode or collection name, ``coco-boxes`` or ``--add-examples``
            without a COCO file, or ``--predict`` together with ``--add-examples`` (the labels would
            depend on the order the images finish in).
    """
    from deployments.offline_stages import PROMPT_MODES

    prompts = prompts or ("coco-boxes" if data.coco_path else "center-points")
    if prompts not in PROMPT_MODES:
        raise ValueError(f"--prompts must be one of {', '.join(PROMPT_MODES)}; got {prompts!r}")
    if prompts == "coco-boxes" and not data.coco_path:
        raise ValueError("--prompts coco-boxes needs a COCO annotation file as --input")
    if add_examples and not data.coco_path:
        raise ValueError("--add-examples needs a COCO annotation file as --input (its instances are the examples)")
    if add_examples and predict:
        raise ValueError(
            "--add-examples and --predict in one run would label images by examples of images that happen to "
            "finish first; run --add-examples first, then --predict"
        )
    from deployments.runtime.store_checks import check_collection_name

    return BatchPlan(prompts, predict, add_examples, check_collection_name(collection), embeddings)
