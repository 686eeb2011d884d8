"""Where weights come from, for SAM 2 and CLIP alike: a download into the cache dir, a local file, or seeded
random weights.

All file and network I/O for weights lives in this package (``models/`` only ever sees a state dict):
this module holds what both model families share, :mod:`deployments.runtime.model_weights` and
:mod:`deployments.runtime.clip_weights` what differs (where the published file is and how it is read).

A :class:`WeightsSource` is one of three kinds, chosen by the app config or the environment (the config
wins where it sets a value):

* the family's **download** kind (``registry`` for SAM 2, ``pretrained`` for CLIP): the published file,
  fetched once into the cache dir (``SAMGRAPH_CACHE_DIR``, default ``~/.cache/samgraph``) and checked
  before anything is loaded;
* ``file``: a local checkpoint (``SAMGRAPH_SAM2_CHECKPOINT``, ``SAMGRAPH_CLIP_CHECKPOINT``); its SHA-256
  is computed, logged and reported as the weights id;
* ``random``: ``SAMGRAPH_WEIGHTS=random``, seeded by ``SAMGRAPH_SEED`` (default 0). Outputs are then
  meaningless; the service says so in ``/readyz`` and in every response. Never a silent fallback.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

log = logging.getLogger("samgraph.weights")

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
    """A resolved choice of SAM 2 weights (see :class:`deployments.runtime.clip_weights.ClipWeightsSource`
    for CLIP's, which shares everything but names).

    Attributes:
        kind: ``registry`` (download), ``file`` or ``random``.
        checkpoint: path of the checkpoint file for ``file``.
        seed: seed of the random initialisation for ``random``.

    Raises:
        ValueError: an unknown kind, ``file`` without a checkpoint, or a seed that is not an integer.
    """

    kind: str = "registry"
    checkpoint: str | None = None
    seed: int = 0

    #: The model family, as messages name it.
    what: ClassVar[str] = "SAM 2"
    #: The kind that downloads the published file; first of :attr:`kinds`.
    kinds: ClassVar[tuple[str, ...]] = ("registry", "file", "random")
    #: Other accepted names of a kind.
    aliases: ClassVar[dict[str, str]] = {}
    #: The environment variable naming a checkpoint file.
    checkpoint_env: ClassVar[str] = "SAMGRAPH_SAM2_CHECKPOINT"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", self.aliases.get(self.kind, self.kind))
        if self.kind not in self.kinds:
            names = ", ".join(f"{k} (or {a})" if (a := self._alias_of(k)) else k for k in self.kinds)
            raise ValueError(f"{self.what} weights must be one of {names}; got {self.kind!r}")
        if self.kind == "file" and not self.checkpoint:
            raise ValueError(f"{self.what} weights 'file' need a checkpoint path ({self.checkpoint_env})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer; got {self.seed!r}")

    @classmethod
    def _alias_of(cls, kind: str) -> str | None:
        return next((a for a, k in cls.aliases.items() if k == kind), None)

    @property
    def downloads(self) -> bool:
        """Whether this source fetches the published file (the family's first kind)."""
        return self.kind == self.kinds[0]

    def as_dict(self) -> dict:
        """``{"kind", "checkpoint", "seed"}``: the ``weights`` argument of the model deployments."""
        return {"kind": self.kind, "checkpoint": self.checkpoint, "seed": self.seed}

    @classmethod
    def resolve(
        cls,
        weights: str | None = None,
        checkpoint: str | None = None,
        seed: int | None = None,
        checkpoint_from_env: bool = True,
    ):
        """Combine explicit settings with ``SAMGRAPH_WEIGHTS``, the family's checkpoint variable and
        ``SAMGRAPH_SEED``; ``checkpoint_from_env=False`` ignores the checkpoint variable (it names a file
        of another family's model).

        A checkpoint path (given or from the environment) selects ``file`` unless ``weights`` (given or
        ``SAMGRAPH_WEIGHTS``) says otherwise; without either the default is the download kind.

        Raises:
            ValueError: an unknown ``weights`` value, ``file`` without a checkpoint, or a seed that is not
                an integer.
        """
        checkpoint = checkpoint or (os.environ.get(cls.checkpoint_env) if checkpoint_from_env else None) or None
        weights = weights or os.environ.get("SAMGRAPH_WEIGHTS") or ("file" if checkpoint else cls.kinds[0])
        if seed is None:
            raw = os.environ.get("SAMGRAPH_SEED", "0")
            try:
                seed = int(raw)
            except ValueError:
                raise ValueError(f"SAMGRAPH_SEED must be an integer, got {raw!r}") from None
        return cls(kind=weights, checkpoint=checkpoint, seed=seed)

    def preflight(self, fetch: Callable[[], object]) -> None:
        """Fail fast, before any replica starts, when these weights cannot be had.

        Download kind: ``fetch()`` runs now (it downloads and verifies what is not cached), so replicas
        on this node find the file and do not race to download it. ``file``: the file must exist.
        ``random``: nothing.

        Raises:
            WeightsError: a missing checkpoint file; whatever ``fetch`` raises.
        """
        if self.downloads:
            fetch()
        elif self.kind == "file" and not Path(self.checkpoint).is_file():
            raise WeightsError(f"{self.what} checkpoint file {self.checkpoint} ({self.checkpoint_env}) does not exist")


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

    ``torch.hub.download_url_to_file`` streams the bytes into a temp file in ``dest``'s folder, with a
    tqdm progress bar; the temp file is hashed and renamed over ``dest`` only when the digest matches.
    ``file://`` URLs work too (offline mirrors).

    Raises:
        ChecksumMismatch: the downloaded bytes have another digest (nothing is written).
        WeightsError: the download failed.
    """
    from torch.hub import download_url_to_file

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        try:
            download_url_to_file(url, tmp, progress=progress)
        except (OSError, ValueError, RuntimeError) as e:  # URLError, HTTPError, a bad URL
            raise WeightsError(f"could not download {url}: {e}") from e
        if sha256 is not None and (digest := sha256_file(tmp)) != sha256.lower():
            raise ChecksumMismatch(
                f"SHA-256 of the download from {url} is {digest}, expected {sha256.lower()}; nothing was saved"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
