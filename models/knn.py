"""k-nearest-neighbour pieces of few-shot detection: row normalisation, exact cosine k-NN and label voting.

Pure numpy, no I/O. The vector store (``deployments.runtime.vectorstore``) returns :class:`Neighbor` lists; this module
turns them into a label with :func:`vote` and gives the exact reference search the store is tested against
(:func:`brute_force_knn`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.settings import bounded, check_bounds


@dataclass(frozen=True)
class LabelSettings:
    """How automatic masks are labelled by their nearest examples: ``/v1/predict``'s defaults and limits,
    and ``samgraph batch --predict``'s (both build their fields from these).

    Attributes:
        top_k: neighbours looked up per mask (1..100).
        min_score: cosine similarity below which a neighbour does not vote (-1..1; see :func:`vote`).
        max_instances: automatic masks labelled per image, best first (1..256).
    """

    top_k: int = bounded(5, ge=1, le=100)
    min_score: float = bounded(0.0, ge=-1, le=1)
    max_instances: int = bounded(20, ge=1, le=256)

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class Neighbor:
    """One stored example returned by a k-NN search.

    Attributes:
        id: the example's id in the store (a UUID string).
        label: the example's class label.
        score: cosine similarity between the query and the example, float in [-1, 1] (1: same direction).
    """

    id: str
    label: str
    score: float


def vote(neighbors: Sequence[Neighbor], min_score: float = 0.0) -> tuple[str | None, float]:
    """Similarity-weighted k-NN label vote.

    The rule is distance-weighted k-NN (Dudani, "The Distance-Weighted k-Nearest-Neighbor Rule", IEEE SMC
    1976) with the cosine similarity itself as the weight, as used by few-shot retrieval classifiers
    (e.g. SimpleShot, Wang et al. 2019; kNN heads over CLIP/DINO features):

    1. Neighbours with ``score < min_score`` are ignored; if none remain the result is ``(None, 0.0)``.
    2. Each remaining neighbour adds ``max(score, 0)`` to its label's sum (a dissimilar example adds nothing,
       it never votes against its label).
    3. The winner is the label with the largest sum (sums are exactly rounded, ``math.fsum``, so they do not
       depend on the neighbours' order); ties (exactly equal sums) go to the label with the
       higher single best score, then to the alphabetically first label.
    4. ``confidence = winner's sum / sum over all remaining neighbours``, in [0, 1]. If that total is 0
       (every remaining score <= 0) the result is ``(None, 0.0)``.

    Example: neighbours ``a: 0.9, a: 0.5, b: 0.8`` give ``("a", 1.4 / 2.2)``.

    Args:
        neighbors: the k neighbours of one query, in any order; scores are cosine similarities.
        min_score: float, cosine similarity below which a neighbour is not counted.

    Returns:
        ``(label, confidence)``: the winning label (None when nobody votes) and its share of the vote,
        float in [0, 1].

    Raises:
        ValueError: ``min_score`` or a neighbour's score is not a finite number.
    """
    if not math.isfinite(min_score):
        raise ValueError(f"min_score must be a finite number; got {min_score!r}")
    weights: dict[str, list[float]] = {}
    best: dict[str, float] = {}
    for n in neighbors:
        if not math.isfinite(n.score):
            raise ValueError(f"neighbour {n.id!r} has a non-finite score {n.score!r}")
        if n.score < min_score:
            continue
        weights.setdefault(n.label, []).append(max(n.score, 0.0))
        best[n.label] = max(best.get(n.label, -math.inf), n.score)
    # fsum is exactly rounded, so sums (and ties between them) do not depend on the neighbours' order
    sums = {label: math.fsum(w) for label, w in weights.items()}
    total = math.fsum(w for ws in weights.values() for w in ws)
    if not sums or total <= 0.0:
        return None, 0.0
    # max sum, then max best score, then min label: sort key ascending on (-sum, -best, label)
    winner = min(sums, key=lambda label: (-sums[label], -best[label], label))
    return winner, sums[winner] / total


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of a matrix.

    Args:
        x: (N, D) float array, finite.

    Returns:
        (N, D) float32, each row of unit L2 norm.

    Raises:
        ValueError: ``x`` is not 2-D, holds non-finite values, or has an all-zero row (no direction).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (N, D) array; got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError("array holds non-finite values (nan or inf)")
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0.0)
    if zero.size:
        raise ValueError(f"rows {zero[:10].tolist()} are all zero and have no direction")
    return (x / norms).astype(np.float32)


def brute_force_knn(queries: np.ndarray, vectors: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN by a full matrix product (the numpy reference for the vector store).

    Rows are L2-normalised first; scores are computed in float64 and returned as float32. Equal scores are
    ordered by the lower index first.

    Args:
        queries: (M, D) float32 query vectors, no zero rows.
        vectors: (N, D) float32 stored vectors, no zero rows.
        top_k: int >= 1; ``k = min(top_k, N)`` neighbours are returned per query.

    Returns:
        ``(indices, scores)``: (M, k) int64 row indices into ``vectors`` and (M, k) float32 cosine
        similarities in [-1, 1], each row sorted by descending score.

    Raises:
        ValueError: bad shapes, mismatched dimensions, zero rows, or ``top_k < 1``.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1; got {top_k!r}")
    q = normalize_rows(queries).astype(np.float64)
    v = normalize_rows(vectors).astype(np.float64)
    if q.shape[1] != v.shape[1]:
        raise ValueError(f"queries are {q.shape[1]}-d but vectors are {v.shape[1]}-d")
    k = min(int(top_k), v.shape[0])
    scores = q @ v.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)
    return order, np.take_along_axis(scores, order, axis=1).astype(np.float32)
