"""Fade strategies: how the context outside a mask is de-emphasised before the crop goes to CLIP.

Why fade instead of a hard crop: FGVP (Yang et al., "Fine-Grained Visual Prompting", NeurIPS 2023)
shows that keeping the context but de-emphasising it outside the mask beats hard crops (and plain
boxes) as the visual prompt for CLIP. Here the emphasis is a per-pixel factor in [0, 1] that depends
on the Euclidean distance from the pixel to the mask: 1 inside the mask, falling off outside it.

Conventions: ``image`` is (H, W, 3) float32 RGB in [0, 255]; ``mask`` is (H, W) bool, True inside the
object; ``distance_map`` is (H, W) float32, pixels to the nearest mask pixel
(:func:`models.fader.distance_to_mask`).

Strategies: :class:`GaussianFade`, :class:`LinearFade`, :class:`ExponentialFade` and
:class:`IdentityFade` (the hard-crop baseline), built by name with :func:`make_fade_strategy`; a
user-defined strategy plugs in through :func:`register_fade_strategy`. Their parameters' limits are
declared once, with :func:`models.settings.bounded` (the HTTP ``fade`` field is built from them).

Pure numpy: no file or network I/O.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from models.settings import bounded, check_bounds


@runtime_checkable
class FadeStrategy(Protocol):
    """How the context outside a mask is de-emphasised.

    ``name`` may be a plain attribute, a dataclass field or a property.

    ``apply`` may be handed a window of the image rather than the whole image: a window that holds
    the whole mask, with the distance map of that window (which equals the whole image's distance
    map cut to the window, since every mask pixel is inside it). A strategy whose output at a pixel
    depends only on that pixel's value, mask bit and distance (all the built-ins) gives exactly
    what it gives on the whole image. It must not modify its inputs.
    """

    @property
    def name(self) -> str:
        """Registry name of the strategy, e.g. ``"gaussian"``."""
        ...

    def apply(self, image: np.ndarray, mask: np.ndarray, distance_map: np.ndarray) -> np.ndarray:
        """Fade the context of ``image``.

        Args:
            image: (H, W, 3) float32 RGB in [0, 255].
            mask: (H, W) bool, True inside the object.
            distance_map: (H, W) float32, pixels to the nearest mask pixel (0 inside the mask).

        Returns:
            (H, W, 3) float32 in [0, 255]: the faded image.
        """
        ...


class _FactorFade:
    """A fade by a per-pixel factor: ``apply`` scales the image by ``self.factor(distance_map)``; the
    parameters are checked against their :func:`models.settings.bounded` rules."""

    def __post_init__(self) -> None:
        check_bounds(self)

    def factor(self, distance_map: np.ndarray) -> np.ndarray:
        """(H, W) float32 factor in [0, 1] for an (H, W) distance map in pixels."""
        raise NotImplementedError

    def apply(self, image: np.ndarray, mask: np.ndarray, distance_map: np.ndarray) -> np.ndarray:
        """See :meth:`FadeStrategy.apply`."""
        return _scale(image, self.factor(distance_map))


@dataclass(frozen=True)
class GaussianFade(_FactorFade):
    """Gaussian fall-off: ``factor = max(min_fade, exp(-(d / sigma_px) ** 2))``.

    Attributes:
        sigma_px: float > 0, pixels: distance at which the factor is 1/e.
        min_fade: float in [0, 1]: floor of the factor far from the mask.
    """

    name: str = field(default="gaussian", init=False)
    sigma_px: float = bounded(50.0, gt=0)
    min_fade: float = bounded(0.0, ge=0, le=1)

    def factor(self, distance_map: np.ndarray) -> np.ndarray:
        """(H, W) float32 factor in [min_fade, 1] for an (H, W) distance map in pixels."""
        d = np.asarray(distance_map, dtype=np.float32) / np.float32(self.sigma_px)
        return np.maximum(np.float32(self.min_fade), np.exp(-(d * d)))


@dataclass(frozen=True)
class LinearFade(_FactorFade):
    """Linear fall-off: ``factor = max(min_fade, 1 - d / max_distance_px)``.

    The factor reaches ``min_fade`` (0 by default) at ``d = max_distance_px * (1 - min_fade)`` and
    stays there beyond.

    Attributes:
        max_distance_px: float > 0, pixels: distance at which ``1 - d / max_distance_px`` reaches 0.
        min_fade: float in [0, 1]: floor of the factor.
    """

    name: str = field(default="linear", init=False)
    max_distance_px: float = bounded(100.0, gt=0)
    min_fade: float = bounded(0.0, ge=0, le=1)

    def factor(self, distance_map: np.ndarray) -> np.ndarray:
        """(H, W) float32 factor in [min_fade, 1] for an (H, W) distance map in pixels."""
        d = np.asarray(distance_map, dtype=np.float32) / np.float32(self.max_distance_px)
        return np.maximum(np.float32(self.min_fade), np.float32(1.0) - d)


@dataclass(frozen=True)
class ExponentialFade(_FactorFade):
    """Exponential fall-off, cut off at a distance.

    ``factor = max(min_fade, exp(-decay * d))`` for ``d < max_distance_px``, and ``min_fade`` for
    ``d >= max_distance_px``.

    Attributes:
        decay: float > 0, per pixel: the factor falls by ``e`` every ``1 / decay`` pixels.
        max_distance_px: float > 0, pixels: beyond this distance the factor is ``min_fade``.
        min_fade: float in [0, 1]: floor of the factor.
    """

    name: str = field(default="exponential", init=False)
    decay: float = bounded(0.05, gt=0)
    max_distance_px: float = bounded(200.0, gt=0)
    min_fade: float = bounded(0.0, ge=0, le=1)

    def factor(self, distance_map: np.ndarray) -> np.ndarray:
        """(H, W) float32 factor in [min_fade, 1] for an (H, W) distance map in pixels."""
        d = np.asarray(distance_map, dtype=np.float32)
        floor = np.float32(self.min_fade)
        decayed = np.maximum(floor, np.exp(np.float32(-self.decay) * d))
        return np.where(d < np.float32(self.max_distance_px), decayed, floor)


@dataclass(frozen=True)
class IdentityFade:
    """No fade (factor 1 everywhere): the hard-crop baseline."""

    name: str = field(default="identity", init=False)

    def factor(self, distance_map: np.ndarray) -> np.ndarray:
        """(H, W) float32 ones."""
        return np.ones(np.shape(distance_map), np.float32)

    def apply(self, image: np.ndarray, mask: np.ndarray, distance_map: np.ndarray) -> np.ndarray:
        """The image itself, unchanged (not a copy)."""
        return image


def _scale(image: np.ndarray, factor: np.ndarray) -> np.ndarray:
    return (image * factor[..., None]).astype(np.float32, copy=False)


_FADE_STRATEGIES: dict[str, Callable[..., FadeStrategy]] = {
    "gaussian": GaussianFade,
    "linear": LinearFade,
    "exponential": ExponentialFade,
    "identity": IdentityFade,
}


def register_fade_strategy(name: str, factory: Callable[..., FadeStrategy]) -> None:
    """Add a strategy to the registry, so that :func:`make_fade_strategy` builds it by name.

    Args:
        name: non-empty registry name, not yet taken.
        factory: called with the keyword parameters given to :func:`make_fade_strategy`; returns a
            :class:`FadeStrategy` (a frozen dataclass validated in ``__post_init__`` is the model).

    Raises:
        ValueError: ``name`` is empty or already registered, or ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"fade strategy name must be a non-empty string; got {name!r}")
    if name in _FADE_STRATEGIES:
        raise ValueError(f"fade strategy {name!r} is already registered; registered: {', '.join(_FADE_STRATEGIES)}")
    if not callable(factory):
        raise ValueError(f"factory for fade strategy {name!r} must be callable; got {factory!r}")
    _FADE_STRATEGIES[name] = factory


def list_fade_strategies() -> list[str]:
    """Registered strategy names, built-ins first, then in order of registration."""
    return list(_FADE_STRATEGIES)


def make_fade_strategy(name: str, /, **params: object) -> FadeStrategy:
    """Build a registered strategy.

    Args:
        name: registry name, e.g. ``"gaussian"`` (see :func:`list_fade_strategies`); positional-only,
            so that a strategy may take a parameter called ``name``.
        **params: the strategy's parameters, e.g. ``sigma_px=30.0``; the rest keep their defaults.

    Returns:
        The strategy.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones), a parameter the strategy does
            not take (named, with the allowed ones), or a parameter value it rejects.
    """
    try:
        factory = _FADE_STRATEGIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown fade strategy {name!r}; valid names: {', '.join(_FADE_STRATEGIES)}") from None
    allowed = _keyword_parameters(factory)
    if allowed is not None:
        unknown = [p for p in params if p not in allowed]
        if unknown:
            raise ValueError(
                f"unknown parameter(s) for {name!r}: {', '.join(unknown)}; allowed: {', '.join(allowed) or '(none)'}"
            )
    try:
        strategy = factory(**params)
    except TypeError as e:
        raise ValueError(f"invalid parameter(s) for fade strategy {name!r}: {e}") from None
    if not isinstance(strategy, FadeStrategy) or not isinstance(strategy.name, str):
        raise ValueError(f"factory of fade strategy {name!r} returned {strategy!r}, not a FadeStrategy")
    return strategy


def _keyword_parameters(factory: Callable[..., object]) -> list[str] | None:
    """Names ``factory`` takes by keyword, or None where it takes ``**kwargs`` (or has no signature)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = []
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    return names
