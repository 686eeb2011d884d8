"""Segmentation model weights, for every family in :mod:`models.registry`: the registry's published file,
a local checkpoint file, or seeded random weights.

The model side of :mod:`deployments.runtime.weights` (the shared source, cache dir, download and checks).
The family (:class:`models.segmenter.SegmenterFamily`) builds the model; this module only reads files:

* ``registry`` (default): the checkpoint named by the model registry is downloaded once into the cache
  dir with a progress bar, atomically, and its SHA-256 is checked against the registry before anything
  is loaded.
  Gated files (``ModelSpec.gated``, e.g. SAM 3 on the Hugging Face hub) are fetched with
  ``huggingface_hub`` and the token in ``HF_TOKEN``; where the registry holds no digest, the file is checked
  against the SHA-256 the hub publishes for it (its Git LFS object id), which is then kept beside the
  cached file (``<file>.sha256``) and checked on every later load.
* ``file``: a local file in the registry entry's format (``SAMGRAPH_SAM2_CHECKPOINT=/path/ckpt.pt`` or a
  model's ``checkpoint`` in the app config): a torch checkpoint (with the entry's ``checkpoint_key``, e.g.
  ``{"model": state_dict}`` for Meta's SAM 2 files), or a ``.safetensors`` file.
* ``random``: ``SAMGRAPH_WEIGHTS=random``, seeded by ``SAMGRAPH_SEED``.

Torch checkpoints are always loaded with ``torch.load(weights_only=True)``, and every model strictly (no
missing or unexpected keys).
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
from models.registry import family_of, get_model_spec
from models.segmenter import ModelSpec, SegmenterFamily

log = logging.getLogger("samgraph.weights")


def pull_checkpoint(spec: ModelSpec, directory: Path | None = None, progress: bool = True) -> Path:
    """Return the verified cached file of a registry checkpoint, downloading it if needed.

    Raises:
        ChecksumMismatch: a cached file or the download does not match the registry's SHA-256.
        WeightsError: the download failed, or the entry has no released weights (an architecture for
            tests and smoke runs); the message names the offline alternatives.
    """
    if not spec.url:
        raise WeightsError(
            f"{spec.name} has no released weights: serve it with SAMGRAPH_WEIGHTS=random (or weights: random) "
            "or give it a checkpoint file"
        )
    path = (directory or cache_dir()) / spec.filename
    if path.exists():
        expected = spec.sha256 or _recorded_sha256(path)
        if expected:
            verify_sha256(path, expected)
        return path
    log.info("downloading %s from %s to %s", spec.name, spec.url, path)
    try:
        if spec.gated:
            return download_gated(spec, path, progress)
        return download(spec.url, path, spec.sha256, progress=progress)
    except ChecksumMismatch:
        raise
    except WeightsError as e:
        raise WeightsError(
            f"{e}. Without network, either give the model a checkpoint file (its `checkpoint` in the app "
            f"config; SAMGRAPH_SAM2_CHECKPOINT for the first model), or put the file in {path.parent} as "
            f"{spec.filename} "
            "(`samgraph models pull` fetches it where there is network), or set SAMGRAPH_WEIGHTS=random "
            "for an offline smoke run with meaningless masks."
        ) from e


def download_gated(spec: ModelSpec, path: Path, progress: bool = True) -> Path:
    """Fetch a gated hub file (``https://huggingface.co/<repo>/resolve/<revision>/<file>``) with
    ``huggingface_hub`` and the token in ``HF_TOKEN``, check its SHA-256, and move it to ``path``.

    The digest checked is the registry's; where the registry has none (``facebook/sam3`` publishes none
    outside the hub), it is the SHA-256 the hub publishes for the file at that revision: the object id of
    its Git LFS pointer (``HfApi.get_paths_info(...)[0].lfs.sha256``), which ``huggingface_hub`` itself does
    not check on download. The hub is ``$HF_ENDPOINT`` when set (a mirror), else huggingface.co. The digest
    checked is written beside the file (``<file>.sha256``) so that later loads of the cached file check it.

    Raises:
        WeightsError: no token, no access, no network, or the hub publishes no SHA-256 for the file and
            the registry has none; the message says which.
        ChecksumMismatch: the file has another digest than the registry's or the hub's, or the registry
            and the hub disagree (nothing is kept).
    """
    import shutil
    import tempfile

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise WeightsError(f"{spec.url} is gated: accept its licence on the hub, then set HF_TOKEN")
    parts = spec.url.split("huggingface.co/", 1)[-1].split("/")
    if len(parts) < 5 or parts[2] != "resolve":
        raise WeightsError(f"{spec.url} is not a hub file URL (https://huggingface.co/<repo>/resolve/<rev>/<file>)")
    repo, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
    from huggingface_hub import HfApi

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".hub-") as tmp:
        try:
            api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
            published = hub_sha256(api, repo, filename, revision)
            got = api.hf_hub_download(repo, filename, revision=revision, local_dir=tmp)
        except WeightsError:
            raise
        except Exception as e:  # GatedRepoError, HTTP errors, no network
            raise WeightsError(f"could not download {spec.url}: {e}") from e
        if spec.sha256 and published != spec.sha256.lower():
            raise ChecksumMismatch(
                f"the hub publishes SHA-256 {published} for {spec.url}, the registry expects {spec.sha256.lower()}:"
                " the hub's file changed; pin the registry's revision or update its digest"
            )
        digest = verify_sha256(got, published)
        shutil.move(got, path)
    _recorded_sha256_path(path).write_text(f"{digest}  {spec.url}\n")
    log.info("%s: SHA-256 %s verified against the hub's published digest", spec.name, digest)
    return path


def hub_sha256(api, repo: str, filename: str, revision: str) -> str:
    """The SHA-256 the Hugging Face hub publishes for a Git LFS file: its pointer's object id.

    Args:
        api: a ``huggingface_hub.HfApi`` (with the token of a gated repository).
        repo: ``"<owner>/<name>"``; filename: the path in the repository; revision: branch, tag or commit.

    Returns:
        lowercase hex SHA-256 of the file's content.

    Raises:
        WeightsError: the path is not in the repository at that revision, or it is not stored in Git LFS
            (the hub then publishes only a git blob id, not a SHA-256 of the content).
    """
    infos = [i for i in api.get_paths_info(repo, [filename], revision=revision) if i.path == filename]
    if not infos:
        raise WeightsError(f"{repo} has no file {filename} at revision {revision}")
    lfs = getattr(infos[0], "lfs", None)
    if lfs is None:
        raise WeightsError(f"{repo}/{filename} is not a Git LFS file: the hub publishes no SHA-256 of its content")
    return lfs.sha256.lower()


def _recorded_sha256_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded_sha256(path: Path) -> str | None:
    """The digest verified when ``path`` was downloaded (``<file>.sha256``), if any."""
    record = _recorded_sha256_path(path)
    return record.read_text().split()[0] if record.is_file() else None


def preflight(model_id: str, source: WeightsSource) -> None:
    """Fail fast, before any replica starts, when the chosen weights cannot be had (see
    :meth:`WeightsSource.preflight`; ``registry`` downloads and verifies the checkpoint now).

    Raises:
        ValueError: unknown ``model_id``.
        WeightsError, ChecksumMismatch: as :func:`pull_checkpoint`; a missing checkpoint file.
    """
    spec = get_model_spec(model_id)
    if source.kind == "file":  # a file, or a directory holding the registry's file name
        if not weights_file(source.checkpoint, spec).is_file():
            name = spec.url.rsplit("/", 1)[-1]
            inside = f" (a directory must hold {name})" if Path(source.checkpoint).is_dir() else ""
            raise WeightsError(
                f"{model_id}: checkpoint file {source.checkpoint} does not exist{inside} (the model's "
                f"`checkpoint` in the app config, or {source.checkpoint_env} for a SAM 2 model)"
            )
        return
    source.preflight(lambda: pull_checkpoint(spec))


def weights_file(path: str | os.PathLike, spec: ModelSpec) -> Path:
    """The weights file a configured checkpoint names: ``path`` itself, or for a directory the file in it
    named as the registry URL's last part (``model.safetensors`` for ``facebook/sam3``)."""
    path = Path(path)
    if path.is_dir() and spec.url:
        return path / spec.url.rsplit("/", 1)[-1]
    return path


def load_state_dict(
    path: str | os.PathLike, expected_sha256: str | None = None, spec: ModelSpec | None = None
) -> tuple[dict, str]:
    """Load the state dict in a weights file: ``torch.load(weights_only=True)`` or safetensors.

    Args:
        path: the weights file, in ``spec``'s format; or a directory holding it under the URL's file name
            (a local copy of a hub repository, e.g. ``facebook/sam3`` with its ``model.safetensors``).
        expected_sha256: if given, the file must have this digest.
        spec: the registry entry (its ``file_format`` and ``checkpoint_key``); None: a SAM 2 checkpoint
            holding ``{"model": state_dict}``.

    Returns:
        (state_dict, sha256 hex of the file).

    Raises:
        ChecksumMismatch: the digest differs from ``expected_sha256``.
        WeightsError: the file is missing, unreadable, or does not hold the entry's state dict.
    """
    import torch

    spec = spec or get_model_spec(_DEFAULT_SAM2, "sam2")
    path = weights_file(path, spec)
    if not path.is_file():
        raise WeightsError(f"checkpoint file {path} does not exist")
    digest = verify_sha256(path, expected_sha256) if expected_sha256 else sha256_file(path)
    try:
        if spec.file_format == "safetensors":
            from safetensors.torch import load_file

            ckpt = load_file(path, device="cpu")
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, disallowed globals
        raise WeightsError(f"cannot load {spec.file_format} weights {path} (weights_only): {e}") from e
    try:
        state = family_of(spec.name).state_dict_from(spec, ckpt)
    except ValueError as e:
        raise WeightsError(f"checkpoint {path}: {e}") from None
    return dict(state), digest


_DEFAULT_SAM2 = "sam2.1_hiera_tiny"


@dataclass(frozen=True)
class LoadedModel:
    """A built model, its family and the identity of its weights.

    Attributes:
        model: the family's ``nn.Module``.
        model_id: registry name.
        weights: ``"sha256:<hex>"`` of the checkpoint file, or ``"random"`` (seeded, meaningless masks).
        family: its :class:`models.segmenter.SegmenterFamily`.
    """

    model: object
    model_id: str
    weights: str
    family: SegmenterFamily


def _resolve_state(model_id: str, source: WeightsSource, progress: bool) -> tuple[dict | None, str]:
    """(state dict, weights id) of ``source``; (None, ``"random"``) for random weights."""
    spec = get_model_spec(model_id)
    if source.kind == "random":
        log.warning("%s with RANDOM weights (seed %d): masks are meaningless", model_id, source.seed)
        return None, "random"
    if source.kind == "file":
        state, digest = load_state_dict(source.checkpoint, spec=spec)
        log.info("%s from %s (sha256 %s)", model_id, source.checkpoint, digest)
    else:
        path = pull_checkpoint(spec, progress=progress)
        state, digest = load_state_dict(path, spec.sha256, spec)
        log.info("%s from registry file %s (sha256 %s, verified)", model_id, path, digest)
    return state, f"sha256:{digest}"


def load_model(model_id: str, source: WeightsSource, device: str = "cpu", progress: bool = True) -> LoadedModel:
    """Build the registry model ``model_id`` (any family) with weights from ``source``.

    Raises:
        ValueError: unknown ``model_id``.
        WeightsError, ChecksumMismatch: as :func:`pull_checkpoint` and :func:`load_state_dict`.
        RuntimeError: the checkpoint does not fit the architecture (missing/unexpected keys).
    """
    family = family_of(model_id)
    spec = get_model_spec(model_id)

    def builder(name, state=None, *, seed=None, device="cpu"):
        return family.build(spec, state, seed=seed, device=device)

    return _build(builder, model_id, source, device, progress)


def load_sam2_video(
    model_id: str, source: WeightsSource, device: str = "cpu", progress: bool = True, image_size: int | None = None
) -> LoadedModel:
    """sam2's ``SAM2VideoPredictor`` for ``model_id`` with weights from ``source``: the same file, the same
    SHA-256 check and the same seeded random weights as :func:`load_model` gives the image stages.
    ``image_size``: the model's input side in pixels (None: the config's; see
    :func:`models.sam2_video.build_sam2_video_model`).

    Raises:
        ValueError: unknown ``model_id``.
        WeightsError, ChecksumMismatch: as :func:`pull_checkpoint` and :func:`load_state_dict`.
        RuntimeError: the checkpoint does not fit the architecture (missing/unexpected keys).
    """
    from models.sam2_video import build_sam2_video_model

    return _build(build_sam2_video_model, model_id, source, device, progress, image_size=image_size)


def _build(builder, model_id: str, source: WeightsSource, device: str, progress: bool, **options) -> LoadedModel:
    """``builder(model_id, state_dict | seed=, device=, **options)`` with the weights of ``source``."""
    state, weights = _resolve_state(model_id, source, progress)
    if state is None:
        model = builder(model_id, seed=source.seed, device=device, **options)
    else:
        model = builder(model_id, state, device=device, **options)
    return LoadedModel(model, model_id, weights, family_of(model_id))
