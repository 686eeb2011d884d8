"""SAM 2 weights: the registry's published checkpoints, a local checkpoint file, or seeded random weights.

The SAM 2 side of :mod:`deployments.runtime.weights` (the shared source, cache dir, download and checks):

* ``registry`` (default): the checkpoint named by the model registry is downloaded once into the cache
  dir with a progress bar, atomically, and its SHA-256 is checked against the registry before anything
  is loaded.
* ``file``: ``SAMGRAPH_SAM2_CHECKPOINT=/path/ckpt.pt``, a file holding ``{"model": state_dict}`` as
  Meta's checkpoints do.
* ``random``: ``SAMGRAPH_WEIGHTS=random``, seeded by ``SAMGRAPH_SEED``.

Checkpoints are always loaded with ``torch.load(weights_only=True)`` and strictly (no missing or
unexpected keys).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from deployments.runtime.weights import (
    ChecksumMismatch,
    WeightsError,
    WeightsSource,
    cache_dir,
    download,
    sha256_file,
    verify_sha256,
)
from models.registry import Sam2Checkpoint, get_sam2_checkpoint

log = logging.getLogger("samgraph.weights")


def pull_checkpoint(spec: Sam2Checkpoint, directory: Path | None = None, progress: bool = True) -> Path:
    """Return the verified cached file of a registry checkpoint, downloading it if needed.

    Raises:
        ChecksumMismatch: a cached file or the download does not match the registry's SHA-256.
        WeightsError: the download failed; the message names the offline alternatives.
    """
    path = (directory or cache_dir()) / spec.filename
    if path.exists():
        if spec.sha256:
            verify_sha256(path, spec.sha256)
        return path
    log.info("downloading %s from %s to %s", spec.name, spec.url, path)
    try:
        return download(spec.url, path, spec.sha256, progress=progress)
    except ChecksumMismatch:
        raise
    except WeightsError as e:
        raise WeightsError(
            f"{e}. Without network, either set SAMGRAPH_SAM2_CHECKPOINT=/path/to/{spec.filename} (a file "
            f"holding {{'model': state_dict}} as Meta publishes it), or put the file in {path.parent} "
            "(`samgraph models pull` fetches it where there is network), or set SAMGRAPH_WEIGHTS=random "
            "for an offline smoke run with meaningless masks."
        ) from e


def preflight(model_id: str, source: WeightsSource) -> None:
    """Fail fast, before any replica starts, when the chosen SAM 2 weights cannot be had (see
    :meth:`WeightsSource.preflight`; ``registry`` downloads and verifies the checkpoint now).

    Raises:
        ValueError: unknown ``model_id``.
        WeightsError, ChecksumMismatch: as :func:`pull_checkpoint`; a missing checkpoint file.
    """
    spec = get_sam2_checkpoint(model_id)
    source.preflight(lambda: pull_checkpoint(spec))


def load_state_dict(path: str | os.PathLike, expected_sha256: str | None = None) -> tuple[dict, str]:
    """Load the ``"model"`` state dict of a SAM 2 checkpoint file with ``weights_only=True``.

    Args:
        path: checkpoint file holding ``{"model": state_dict}``.
        expected_sha256: if given, the file must have this digest.

    Returns:
        (state_dict, sha256 hex of the file).

    Raises:
        ChecksumMismatch: the digest differs from ``expected_sha256``.
        WeightsError: the file is missing, unreadable, or holds no ``"model"`` dict.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file {path} does not exist")
    digest = verify_sha256(path, expected_sha256) if expected_sha256 else sha256_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, disallowed globals
        raise WeightsError(f"cannot load checkpoint {path} with weights_only=True: {e}") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise WeightsError(f"checkpoint {path} must hold {{'model': state_dict}} as Meta's checkpoints do")
    return ckpt["model"], digest


@dataclass(frozen=True)
class LoadedSam2:
    """A built SAM 2 model and the identity of its weights.

    Attributes:
        model: the ``SAM2Base``.
        model_id: registry name.
        weights: ``"sha256:<hex>"`` of the checkpoint file, or ``"random"`` (seeded, meaningless masks).
    """

    model: object
    model_id: str
    weights: str


def _resolve_state(model_id: str, source: WeightsSource, progress: bool) -> tuple[dict | None, str]:
    """(state dict, weights id) of ``source``; (None, ``"random"``) for random weights."""
    spec = get_sam2_checkpoint(model_id)
    if source.kind == "random":
        log.warning("SAM 2 %s with RANDOM weights (seed %d): masks are meaningless", model_id, source.seed)
        return None, "random"
    if source.kind == "file":
        state, digest = load_state_dict(source.checkpoint)
        log.info("SAM 2 %s from %s (sha256 %s)", model_id, source.checkpoint, digest)
    else:
        path = pull_checkpoint(spec, progress=progress)
        state, digest = load_state_dict(path, spec.sha256)
        log.info("SAM 2 %s from registry file %s (sha256 %s, verified)", model_id, path, digest)
    return state, f"sha256:{digest}"


def load_sam2(model_id: str, source: WeightsSource, device: str = "cpu", progress: bool = True) -> LoadedSam2:
    """Build the registry model ``model_id`` with weights from ``source``.

    Raises:
        ValueError: unknown ``model_id``.
        WeightsError, ChecksumMismatch: as :func:`pull_checkpoint` and :func:`load_state_dict`.
        RuntimeError: the checkpoint does not fit the architecture (missing/unexpected keys).
    """
    from models.sam2_image import build_sam2_model

    return _build(build_sam2_model, model_id, source, device, progress)


def load_sam2_video(
    model_id: str, source: WeightsSource, device: str = "cpu", progress: bool = True, image_size: int | None = None
) -> LoadedSam2:
    """sam2's ``SAM2VideoPredictor`` for ``model_id`` with weights from ``source``: the same file, the same
    SHA-256 check and the same seeded random weights as :func:`load_sam2` gives the image stages.
    ``image_size``: the model's input side in pixels (None: the config's; see
    :func:`models.sam2_video.build_sam2_video_model`).

    Raises:
        ValueError: unknown ``model_id``.
        WeightsError, ChecksumMismatch: as :func:`pull_checkpoint` and :func:`load_state_dict`.
        RuntimeError: the checkpoint does not fit the architecture (missing/unexpected keys).
    """
    from models.sam2_video import build_sam2_video_model

    return _build(build_sam2_video_model, model_id, source, device, progress, image_size=image_size)


def _build(builder, model_id: str, source: WeightsSource, device: str, progress: bool, **options) -> LoadedSam2:
    """``builder(model_id, state_dict | seed=, device=, **options)`` with the weights of ``source``."""
    state, weights = _resolve_state(model_id, source, progress)
    if state is None:
        model = builder(model_id, seed=source.seed, device=device, **options)
    else:
        model = builder(model_id, state, device=device, **options)
    return LoadedSam2(model, model_id, weights)
