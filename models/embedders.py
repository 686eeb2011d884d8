"""The embedder seam: a protocol for image-and-text embedders, a registry of embedder families, and the
identity string that names what made a vector.

An embedder maps image crops and texts into one space of L2-normalised vectors (cosine similarity is
their dot product). A family builds its embedders from an architecture name, a preprocessing tag and a
state dict (or seeded random weights); :data:`EMBEDDERS` maps a family name to the module and class that
implement it, imported on first use, in the style of :data:`models.registry.FAMILIES`. open_clip
(:class:`models.embedder.OpenClipFamily`) is the one family shipped; another is one module under
``models/`` and one entry here.

**Identity.** Vectors of two embedders are not comparable, even at the same dimension. Every vector the
service stores or searches with is labelled by :func:`embedder_identity`::

    <family>:<model_name>:<pretrained tag>@<weights id>
    open_clip:ViT-B-32:laion2b_s34b_b79k@sha256:<hex of the checkpoint file>
    open_clip:ViT-B-32:laion2b_s34b_b79k@random:seed0

It holds what changes the vectors: the family (which code), the architecture, the pretrained tag (it
selects the image preprocessing: mean, std, interpolation, resize mode) and the weights, as the SHA-256 of
the checkpoint file or ``random:seed<N>`` (random weights of another seed are another embedder). It does
not hold the device or the batch size: they change a vector by float rounding only.

Pure: no file or network I/O, no Ray, no Qdrant.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TextImageEmbedder(Protocol):
    """Image crops and texts to L2-normalised vectors in one space (e.g. :class:`models.embedder.ClipEmbedder`)."""

    @property
    def dim(self) -> int:
        """Embedding dimension D (512 for CLIP ViT-B-32)."""
        ...

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed N (H, W, 3) uint8 RGB images (sizes may differ) in one pass.

        Returns:
            (N, D) float32, rows of unit L2 norm; (0, D) for no images.

        Raises:
            ValueError: an image that is not a non-empty (H, W, 3) uint8 array.
        """
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed N non-blank strings in one pass.

        Returns:
            (N, D) float32, rows of unit L2 norm; (0, D) for no texts.

        Raises:
            ValueError: a bare string, or an item that is not a non-blank string.
        """
        ...


class EmbedderFamily(ABC):
    """A family of embedders behind the seam; subclasses live one per module under ``models/``.

    Attributes:
        name: the family's registry name (the first part of an identity), e.g. ``"open_clip"``.
    """

    name: ClassVar[str]

    @abstractmethod
    def check(self, model_name: str, pretrained: str) -> None:
        """Raise ``ValueError`` listing valid values when the family has no such architecture or tag."""

    @abstractmethod
    def build(
        self,
        model_name: str,
        state_dict: Mapping[str, Any] | None,
        *,
        seed: int | None,
        pretrained: str,
        device: str,
    ) -> TextImageEmbedder:
        """The embedder with the given weights, loaded strictly, or seeded random weights when ``state_dict``
        is None.

        Raises:
            ValueError: unknown architecture or tag, or neither ``state_dict`` nor ``seed``.
            RuntimeError: missing, unexpected or misshapen keys.
        """


#: Each embedder family: ``"module:Class"``, imported on first use.
EMBEDDERS: dict[str, str] = {
    "open_clip": "models.embedder:OpenClipFamily",
}

#: The family served when a config names none.
DEFAULT_EMBEDDER = "open_clip"

_families: dict[str, EmbedderFamily] = {}


def list_embedder_families() -> list[str]:
    """Names of the registered embedder families, e.g. ``["open_clip"]``."""
    return list(EMBEDDERS)


def get_embedder_family(name: str) -> EmbedderFamily:
    """The :class:`EmbedderFamily` named ``name`` (one instance per process, imported on first use).

    Raises:
        ValueError: unknown family; the message lists the valid ones.
    """
    from models.registry import registered_instance

    return registered_instance(EMBEDDERS, _families, name, "embedder family")


_WEIGHTS_ID = re.compile(r"sha256:[0-9a-f]{64}|random:seed-?[0-9]+")
_PART = re.compile(r"[^:@\s]*")


def weights_id(sha256: str | None = None, seed: int | None = None) -> str:
    """The weights part of an identity: ``"sha256:<hex>"`` of a checkpoint file, or ``"random:seed<N>"``.

    Raises:
        ValueError: both or neither given, or ``sha256`` not 64 lowercase hex digits.
    """
    if (sha256 is None) == (seed is None):
        raise ValueError("give exactly one of sha256 (a checkpoint file's digest) or seed (random weights)")
    out = f"random:seed{int(seed)}" if seed is not None else f"sha256:{sha256}"
    if not _WEIGHTS_ID.fullmatch(out):
        raise ValueError(f"sha256 must be 64 lowercase hex digits; got {sha256!r}")
    return out


def embedder_identity(family: str, model_name: str, pretrained: str, weights: str) -> str:
    """The identity of an embedder: ``"<family>:<model_name>:<pretrained>@<weights>"`` (see the module).

    Args:
        family: a registered family, e.g. ``"open_clip"``.
        model_name: the architecture, e.g. ``"ViT-B-32"`` (no ``:``, ``@`` or whitespace).
        pretrained: the preprocessing tag, e.g. ``"laion2b_s34b_b79k"``; ``""`` for none.
        weights: from :func:`weights_id`.

    Raises:
        ValueError: unknown family, a part holding ``:``, ``@`` or whitespace, or a malformed ``weights``.
    """
    if family not in EMBEDDERS:
        raise ValueError(f"unknown embedder family {family!r}; valid families: {', '.join(EMBEDDERS)}")
    for what, part in (("model_name", model_name), ("pretrained", pretrained)):
        if not isinstance(part, str) or not _PART.fullmatch(part) or (what == "model_name" and not part):
            raise ValueError(f"{what} must be a string without ':', '@' or whitespace; got {part!r}")
    if not isinstance(weights, str) or not _WEIGHTS_ID.fullmatch(weights):
        raise ValueError(f"weights must be 'sha256:<64 hex>' or 'random:seed<N>'; got {weights!r}")
    return f"{family}:{model_name}:{pretrained}@{weights}"


def parse_identity(identity: str) -> dict[str, str]:
    """The parts of an identity: ``{"family", "model_name", "pretrained", "weights"}``.

    Raises:
        ValueError: not of the form :func:`embedder_identity` makes.
    """
    head, sep, weights = identity.partition("@") if isinstance(identity, str) else ("", "", "")
    parts = head.split(":")
    if not sep or len(parts) != 3:
        raise ValueError(f"not an embedder identity '<family>:<model_name>:<pretrained>@<weights>': {identity!r}")
    out = {"family": parts[0], "model_name": parts[1], "pretrained": parts[2], "weights": weights}
    if embedder_identity(**out) != identity:
        raise ValueError(f"not a canonical embedder identity: {identity!r}")
    return out
