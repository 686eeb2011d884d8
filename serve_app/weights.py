"""Where SAM 2 weights come from: registry download, a local checkpoint file, or seeded random weights.

All file and network I/O for weights lives here (``models/`` only ever sees a state dict).

Sources, chosen by the app config or the environment (the config wins where it sets a value):

* ``registry`` (default): the checkpoint named by the model registry is downloaded once into the cache
  dir (``SAMGRAPH_CACHE_DIR``, default ``~/.cache/samgraph``) with a progress bar, atomically (temp file
  + rename), and its SHA-256 is checked against the registry before anything is loaded.
* ``file``: ``SAMGRAPH_SAM2_CHECKPOINT=/path/ckpt.pt``, a file holding ``{"model": state_dict}`` as
  Meta's checkpoints do. Its SHA-256 is computed, logged and reported as the weights id.
* ``random``: ``SAMGRAPH_WEIGHTS=random``, seeded by ``SAMGRAPH_SEED`` (default 0). Masks are then
  meaningless; the service says so in ``/readyz`` and in every response. Never a silent fallback.

Checkpoints are always loaded with ``torch.load(weights_only=True)`` and strictly (no missing or
unexpected keys).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.registry import Sam2Checkpoint, get_sam2_checkpoint

log = logging.getLogger("samgraph.weights")

WeightsKind = Literal["registry", "file", "random"]
_CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """Weights could not be obtained or do not verify; the message says what to do."""


class ChecksumMismatch(WeightsError):
    """A file's SHA-256 differs from the expected one; the file is not loaded."""


def cache_dir() -> Path:
    """The weights cache dir: ``$SAMGRAPH_CACHE_DIR`` or ``~/.cache/samgraph``."""
    return Path(os.environ.get("SAMGRAPH_CACHE_DIR") or Path.home() / ".cache" / "samgraph")


@dataclass(frozen=True)
class WeightsSource:
    """A resolved choice of weights.

    Attributes:
        kind: ``registry``, ``file`` or ``random``.
        checkpoint: path of the checkpoint file for ``file``.
        seed: seed of the random initialisation for ``random``.
    """

    kind: WeightsKind = "registry"
    checkpoint: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("registry", "file", "random"):
            raise ValueError(f"weights must be one of registry, file, random; got {self.kind!r}")
        if self.kind == "file" and not self.checkpoint:
            raise ValueError("weights 'file' needs a checkpoint path (SAMGRAPH_SAM2_CHECKPOINT)")

    @classmethod
    def resolve(
        cls, weights: str | None = None, checkpoint: str | None = None, seed: int | None = None
    ) -> WeightsSource:
        """Combine explicit settings with ``SAMGRAPH_WEIGHTS``, ``SAMGRAPH_SAM2_CHECKPOINT``, ``SAMGRAPH_SEED``.

        A checkpoint path (given or from the environment) selects ``file`` unless ``weights`` says
        otherwise.

        Raises:
            ValueError: an unknown ``weights`` value or a seed that is not an integer.
        """
        checkpoint = checkpoint or os.environ.get("SAMGRAPH_SAM2_CHECKPOINT") or None
        weights = weights or os.environ.get("SAMGRAPH_WEIGHTS") or ("file" if checkpoint else "registry")
        if seed is None:
            raw = os.environ.get("SAMGRAPH_SEED", "0")
            try:
                seed = int(raw)
            except ValueError:
                raise ValueError(f"SAMGRAPH_SEED must be an integer, got {raw!r}") from None
        return cls(kind=weights, checkpoint=checkpoint, seed=seed)  # type: ignore[arg-type]


def sha256_file(path: str | os.PathLike) -> str:
    """Lowercase hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> str:
    """Check a file against an expected SHA-256 and return the digest.

    Raises:
        ChecksumMismatch: the digests differ.
    """
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumMismatch(
            f"SHA-256 of {path} is {actual}, expected {expected.lower()}: the file is corrupt or not the "
            "published checkpoint; delete it and download again"
        )
    return actual


def download(url: str, dest: str | os.PathLike, sha256: str | None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying the SHA-256 before the file appears.

    The bytes go to a temp file in ``dest``'s folder, are hashed while streaming, and the temp file is
    renamed over ``dest`` only when the digest matches. ``file://`` URLs work too (offline mirrors).

    Raises:
        ChecksumMismatch: the downloaded bytes have another digest (nothing is written).
        WeightsError: the download failed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = _progress(total, dest.name) if progress else None
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        if sha256 is not None and h.hexdigest() != sha256.lower():
            raise ChecksumMismatch(
                f"SHA-256 of the download from {url} is {h.hexdigest()}, expected {sha256.lower()}; "
                "nothing was saved"
            )
        os.replace(tmp, dest)
    except ChecksumMismatch:
        raise
    except OSError as e:
        raise WeightsError(f"could not download {url}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _progress(total: int | None, name: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name)


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
    """Fail fast, before any replica starts, when the chosen weights cannot be had.

    ``registry``: the checkpoint is downloaded (and verified) now if it is not cached, so replicas on
    this node find it and do not race to download it. ``file``: the file must exist. ``random``: nothing.

    Raises:
        ValueError: unknown ``model_id``.
        WeightsError, ChecksumMismatch: as :func:`pull_checkpoint`; a missing checkpoint file.
    """
    spec = get_sam2_checkpoint(model_id)
    if source.kind == "registry":
        pull_checkpoint(spec)
    elif source.kind == "file" and not Path(source.checkpoint).is_file():
        raise WeightsError(f"checkpoint file {source.checkpoint} (SAMGRAPH_SAM2_CHECKPOINT) does not exist")


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


def load_sam2_video(model_id: str, source: WeightsSource, device: str = "cpu", progress: bool = True) -> LoadedSam2:
    """sam2's ``SAM2VideoPredictor`` for ``model_id`` with weights from ``source``: the same file, the same
    SHA-256 check and the same seeded random weights as :func:`load_sam2` gives the image stages.

    Raises:
        ValueError: unknown ``model_id``.
        WeightsError, ChecksumMismatch: as :func:`pull_checkpoint` and :func:`load_state_dict`.
        RuntimeError: the checkpoint does not fit the architecture (missing/unexpected keys).
    """
    from models.sam2_video import build_sam2_video_model

    return _build(build_sam2_video_model, model_id, source, device, progress)


def _build(builder, model_id: str, source: WeightsSource, device: str, progress: bool) -> LoadedSam2:
    """``builder(model_id, state_dict | seed=, device=)`` with the weights of ``source``."""
    state, weights = _resolve_state(model_id, source, progress)
    model = builder(model_id, seed=source.seed, device=device) if state is None else builder(model_id, state, device=device)
    return LoadedSam2(model, model_id, weights)
