"""Where CLIP weights come from: open_clip's pretrained download, a local checkpoint file, or seeded random weights.

The CLIP side of :mod:`deployments.runtime.weights`: all file and network I/O for CLIP weights lives here
(``models.embedder`` only ever sees a state dict).

Sources, chosen by the app config or the environment (the config wins where it sets a value):

* ``pretrained`` (default; ``registry`` means the same): the weights open_clip publishes for
  (``model_name``, ``pretrained`` tag), fetched once by open_clip's own downloader
  (``open_clip.pretrained.download_pretrained``: the Hugging Face Hub, or a URL for tags without a hub
  repo) into ``<cache dir>/open_clip`` (``SAMGRAPH_CACHE_DIR``, default ``~/.cache/samgraph``). A file
  already in that cache is used without touching the network. The Hub checks its downloads against
  their ETag (the SHA-256 of the file); the file's SHA-256 is computed again and reported.
* ``file``: ``SAMGRAPH_CLIP_CHECKPOINT=/path``, an open_clip checkpoint: ``.safetensors``, or a torch
  file holding a state dict, bare or under ``"state_dict"``, possibly with ``"module."`` prefixes (as
  open_clip's training saves them). Its SHA-256 is computed, logged and reported as the weights id.
* ``random``: ``SAMGRAPH_WEIGHTS=random``, seeded by ``SAMGRAPH_SEED`` (default 0). Embeddings are then
  meaningless; the service says so. Never a silent fallback.

Checkpoints are always loaded with ``torch.load(weights_only=True)`` (or safetensors) and strictly (no
missing or unexpected keys).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from deployments.runtime.weights import WeightsError, WeightsSource, cache_dir, sha256_file

if TYPE_CHECKING:  # models.embedder imports torch: only on use
    from models.embedder import ClipEmbedder, ClipSpec

log = logging.getLogger("samgraph.weights")

CLIP_WEIGHTS_KINDS = ("pretrained", "file", "random")
_OFFLINE_HELP = (
    "Without network, either set SAMGRAPH_CLIP_CHECKPOINT=/path/to/checkpoint (an open_clip checkpoint: "
    ".safetensors, or a torch file holding a state dict), or run once where there is network so that "
    "the weights are cached in {directory}, or set SAMGRAPH_WEIGHTS=random for an offline smoke run with "
    "meaningless embeddings."
)


def clip_cache_dir() -> Path:
    """Where open_clip's downloads are cached: ``<cache dir>/open_clip``
    (see :func:`deployments.runtime.weights.cache_dir`)."""
    return cache_dir() / "open_clip"


@dataclass(frozen=True)
class ClipWeightsSource(WeightsSource):
    """A resolved choice of CLIP weights: :class:`deployments.runtime.weights.WeightsSource` with CLIP's
    names.

    Attributes:
        kind: ``pretrained`` (``registry`` is accepted and stored as ``pretrained``), ``file`` or ``random``.
        checkpoint: path of the checkpoint file for ``file`` (``SAMGRAPH_CLIP_CHECKPOINT``).
        seed: seed of the random initialisation for ``random``.
    """

    kind: str = "pretrained"

    what: ClassVar[str] = "CLIP"
    kinds: ClassVar[tuple[str, ...]] = CLIP_WEIGHTS_KINDS
    aliases: ClassVar[dict[str, str]] = {"registry": "pretrained"}  # the SAM 2 name of the download source
    checkpoint_env: ClassVar[str] = "SAMGRAPH_CLIP_CHECKPOINT"


def _pretrained_cfg(spec: ClipSpec) -> dict:
    import open_clip

    if not spec.pretrained:
        raise ValueError(
            f"CLIP {spec.model_name} has no pretrained tag to download; name one "
            f"({', '.join(open_clip.list_pretrained_tags_by_model(spec.model_name)) or 'none published'}) "
            "or use SAMGRAPH_CLIP_CHECKPOINT / SAMGRAPH_WEIGHTS=random"
        )
    return open_clip.pretrained.get_pretrained_cfg(spec.model_name, spec.pretrained)


def _cached_hub_file(cfg: Mapping, directory: Path) -> Path | None:
    """The file open_clip's Hub download would return, if it is in ``directory`` already (no network).

    Looks for the same names in the same order as ``open_clip.pretrained.download_pretrained``: the
    safetensors variant first, then the named file (default ``open_clip_pytorch_model.bin``).
    """
    import open_clip

    hub = cfg.get("hf_hub")
    if not hub or "file" in cfg or not open_clip.pretrained.has_hf_hub():
        return None
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    for name in names:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=str(directory))
        if isinstance(hit, str):
            return Path(hit)
    return None


def pull_pretrained(spec: ClipSpec, directory: Path | None = None) -> Path:
    """Return the cached file of open_clip's published weights for ``spec``, downloading it if needed.

    Uses open_clip's own downloader (``open_clip.pretrained.download_pretrained`` with
    ``cache_dir=directory``), so the files and cache layout are exactly open_clip's. Offline, an already
    cached Hub file is found without any network request.

    Args:
        spec: architecture and pretrained tag.
        directory: cache dir; default :func:`clip_cache_dir`.

    Returns:
        Path of the checkpoint file (a ``.safetensors`` or torch file).

    Raises:
        ValueError: ``spec`` has no pretrained tag.
        WeightsError: the download failed; the message names the offline alternatives.
    """
    import open_clip

    cfg = _pretrained_cfg(spec)
    directory = directory or clip_cache_dir()
    cached = _cached_hub_file(cfg, directory)
    if cached is not None:
        return cached
    log.info("downloading CLIP %s via open_clip into %s", spec.model_id, directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = open_clip.pretrained.download_pretrained(cfg, cache_dir=str(directory))
        if not path:
            raise FileNotFoundError(f"open_clip has no download for {spec.model_id}")
    except Exception as e:  # FileNotFoundError from the Hub, URLError, RuntimeError on a bad checksum
        raise WeightsError(
            f"could not download CLIP weights {spec.model_id}: {e}. {_OFFLINE_HELP.format(directory=directory)}"
        ) from e
    return Path(path)


def read_clip_checkpoint(path: str | os.PathLike) -> tuple[dict, str]:
    """Load the state dict of an open_clip checkpoint file, as open_clip's ``load_state_dict`` reads it.

    ``.safetensors`` files are read with ``safetensors.torch.load_file``, others with
    ``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` wrapper and ``"module."`` prefixes
    (from DDP training) are removed. Unlike ``open_clip.factory.load_state_dict`` there is no retry
    without ``weights_only``.

    Args:
        path: checkpoint file.

    Returns:
        (state_dict, SHA-256 hex of the file).

    Raises:
        WeightsError: the file is missing or unreadable, or holds no state dict of tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"CLIP checkpoint file {path} does not exist")
    digest = sha256_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            ckpt = load_file(str(path), device="cpu")
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, disallowed globals, bad safetensors header
        raise WeightsError(f"cannot load CLIP checkpoint {path} with weights_only=True: {e}") from e
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not (isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())):
        raise WeightsError(
            f"CLIP checkpoint {path} must hold a state dict of tensors, bare or under 'state_dict' "
            "(as open_clip saves them)"
        )
    if next(iter(ckpt)).startswith("module."):
        ckpt = {k.removeprefix("module."): v for k, v in ckpt.items()}
    return ckpt, digest


@dataclass(frozen=True)
class LoadedEmbedder:
    """A built embedder and the identity of its weights.

    Attributes:
        embedder: a :class:`models.embedders.TextImageEmbedder` (for open_clip a
            :class:`models.embedder.ClipEmbedder`).
        model_id: ``"<model_name>/<pretrained tag>"``, e.g. ``"ViT-B-32/laion2b_s34b_b79k"``.
        weights: ``"sha256:<hex>"`` of the checkpoint file, or ``"random"`` (seeded, meaningless embeddings).
        identity: what made its vectors, :func:`models.embedders.embedder_identity`, e.g.
            ``"open_clip:ViT-B-32:laion2b_s34b_b79k@sha256:<hex>"`` or ``"...@random:seed0"``.
    """

    embedder: ClipEmbedder
    model_id: str
    weights: str
    identity: str = ""


#: The open_clip name of :class:`LoadedEmbedder`.
LoadedClip = LoadedEmbedder


def _pull(family: str, model_name: str, pretrained: str) -> Path:
    """The published weights of an embedder, downloaded once into the cache (the ``pretrained`` source).

    Raises:
        ValueError: the family publishes no weights this module can fetch, or no tag.
        WeightsError: as :func:`pull_pretrained`.
    """
    if family == "open_clip":
        from models.embedder import ClipSpec

        return pull_pretrained(ClipSpec(model_name, pretrained))
    raise ValueError(
        f"embedder family {family!r} has no download source here; use a checkpoint file or random weights"
    )


def load_embedder(
    family: str, model_name: str, pretrained: str, source: ClipWeightsSource, device: str = "cpu"
) -> LoadedEmbedder:
    """Build the embedder ``model_name`` of the registered ``family`` with weights from ``source``.

    The family comes from :func:`models.embedders.get_embedder_family`; the image preprocessing is that
    of ``pretrained`` whatever the source.

    Args:
        family: an embedder family of :data:`models.embedders.EMBEDDERS`, e.g. ``"open_clip"``.
        model_name: its architecture, e.g. ``"ViT-B-32"``.
        pretrained: its preprocessing (and download) tag, e.g. ``"laion2b_s34b_b79k"``; ``""``: none.
        source: where the weights come from.
        device: torch device.

    Raises:
        ValueError: unknown family, architecture or tag (listing the valid ones); ``pretrained`` source
            without a tag.
        WeightsError: as :func:`pull_pretrained` and :func:`read_clip_checkpoint`.
        RuntimeError: the checkpoint does not fit the architecture (missing/unexpected keys, shapes).
    """
    from models.embedders import embedder_identity, get_embedder_family, weights_id

    kind = get_embedder_family(family)
    kind.check(model_name, pretrained)
    model_id = f"{model_name}/{pretrained}" if pretrained else model_name
    if source.kind == "random":
        log.warning("embedder %s with RANDOM weights (seed %d): embeddings are meaningless", model_id, source.seed)
        embedder = kind.build(model_name, None, seed=source.seed, pretrained=pretrained, device=device)
        identity = embedder_identity(family, model_name, pretrained, weights_id(seed=source.seed))
        return LoadedEmbedder(embedder, model_id, "random", identity)
    if source.kind == "file":
        state, digest = read_clip_checkpoint(source.checkpoint)
        log.info("embedder %s from %s (sha256 %s)", model_id, source.checkpoint, digest)
    else:
        path = _pull(family, model_name, pretrained)
        state, digest = read_clip_checkpoint(path)
        log.info("embedder %s from download %s (sha256 %s)", model_id, path, digest)
    embedder = kind.build(model_name, state, seed=None, pretrained=pretrained, device=device)
    identity = embedder_identity(family, model_name, pretrained, weights_id(sha256=digest))
    return LoadedEmbedder(embedder, model_id, f"sha256:{digest}", identity)


def load_clip(spec: ClipSpec, source: ClipWeightsSource, device: str = "cpu") -> LoadedEmbedder:
    """Build the CLIP of ``spec`` with weights from ``source``: :func:`load_embedder` of the ``open_clip``
    family.

    Raises:
        As :func:`load_embedder`.
    """
    return load_embedder("open_clip", spec.model_name, spec.pretrained, source, device)


def preflight_clip(spec: ClipSpec, source: ClipWeightsSource) -> None:
    """Fail fast, before any replica starts, when the chosen CLIP weights cannot be had (see
    :meth:`WeightsSource.preflight`; ``pretrained`` downloads the weights now if they are not cached).

    Raises:
        ValueError: ``pretrained`` source for a spec without a tag.
        WeightsError: as :func:`pull_pretrained`; a missing checkpoint file.
    """
    source.preflight(lambda: pull_pretrained(spec))


def preflight_embedder(family: str, model_name: str, pretrained: str, source: ClipWeightsSource) -> None:
    """:func:`preflight_clip` by family, for the embedder that :func:`load_embedder` builds from the same
    arguments (what the app builder and ``samgraph serve`` check before any replica starts); the download
    kind fetches through the family's source (:func:`_pull`).

    Raises:
        ValueError: unknown family, architecture or tag (listing the valid ones); ``pretrained`` source
            without a tag.
        WeightsError: as :func:`pull_pretrained`; a missing checkpoint file.
    """
    from models.embedders import get_embedder_family

    get_embedder_family(family).check(model_name, pretrained)
    source.preflight(lambda: _pull(family, model_name, pretrained))
