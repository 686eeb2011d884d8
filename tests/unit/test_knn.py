"""models/knn.py: similarity-weighted vote, row normalisation and the exact numpy k-NN reference."""

from __future__ import annotations

import numpy as np
import pytest

from models.knn import Neighbor, brute_force_knn, normalize_rows, vote


def nb(label: str, score: float, i: int = 0) -> Neighbor:
    return Neighbor(id=f"id{i}-{label}-{score}", label=label, score=score)


def test_vote_weighted_sum():
    label, conf = vote([nb("a", 0.9), nb("a", 0.5), nb("b", 0.8)])
    assert label == "a"
    assert conf == pytest.approx(1.4 / 2.2)


def test_vote_sum_beats_single_best():
    # b has the best single neighbour but a has the larger summed similarity
    assert vote([nb("b", 0.95), nb("a", 0.6), nb("a", 0.5)]) == ("a", pytest.approx(1.1 / 2.05))


def test_vote_order_does_not_matter():
    ns = [nb("a", 0.9), nb("b", 0.8), nb("a", 0.5), nb("c", 0.1)]
    assert vote(ns) == vote(ns[::-1])


def test_vote_single_label_confidence_one():
    assert vote([nb("cat", 0.3), nb("cat", 0.2)]) == ("cat", 1.0)


def test_vote_empty_is_none():
    assert vote([]) == (None, 0.0)


def test_vote_min_score_filters():
    ns = [nb("a", 0.9), nb("b", 0.4), nb("b", 0.35), nb("b", 0.3)]
    assert vote(ns, min_score=0.0) == ("b", pytest.approx(1.05 / 1.95))
    assert vote(ns, min_score=0.5) == ("a", 1.0)  # the b neighbours no longer vote
    assert vote(ns, min_score=0.95) == (None, 0.0)


def test_vote_min_score_is_inclusive():
    assert vote([nb("a", 0.5)], min_score=0.5) == ("a", 1.0)


def test_vote_negative_scores_count_zero():
    # with a negative min_score the dissimilar neighbours are kept but weigh nothing
    assert vote([nb("a", 0.5), nb("b", -0.9), nb("b", -0.8)], min_score=-1.0) == ("a", 1.0)
    assert vote([nb("a", -0.2), nb("b", -0.1)], min_score=-1.0) == (None, 0.0)
    assert vote([nb("a", 0.0)]) == (None, 0.0)


def test_vote_tie_goes_to_higher_best_score():
    # equal sums 0.75 (exact in binary); b's best single score 0.75 > a's 0.5
    label, conf = vote([nb("a", 0.5), nb("a", 0.25), nb("b", 0.75)])
    assert (label, conf) == ("b", 0.5)


def test_vote_full_tie_is_alphabetical():
    assert vote([nb("zebra", 0.5), nb("apple", 0.5), nb("mango", 0.5)]) == ("apple", pytest.approx(1 / 3))


def test_vote_rejects_non_finite():
    with pytest.raises(ValueError, match="non-finite"):
        vote([nb("a", float("nan"))])
    with pytest.raises(ValueError, match="min_score"):
        vote([nb("a", 0.5)], min_score=float("nan"))


def test_neighbor_is_frozen():
    n = nb("a", 0.5)
    with pytest.raises(AttributeError):
        n.score = 1.0  # type: ignore[misc]


def test_normalize_rows():
    out = normalize_rows(np.array([[3.0, 4.0], [0.0, -2.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]], atol=1e-7)


def test_normalize_rows_rejects_zero_and_bad_shapes():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        normalize_rows(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="2-D"):
        normalize_rows(np.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        normalize_rows(np.array([[np.inf, 1.0]]))


def test_brute_force_knn_exact():
    vectors = np.array([[1, 0], [0, 1], [-1, 0], [1, 1]], dtype=np.float32)
    queries = np.array([[2, 0], [0, -5]], dtype=np.float32)
    idx, scores = brute_force_knn(queries, vectors, top_k=3)
    assert idx.dtype == np.int64 and scores.dtype == np.float32
    assert idx.shape == scores.shape == (2, 3)
    s = np.float32(np.sqrt(0.5))
    # query 0 = +x: [1,0] -> 1, [1,1] -> 0.707, [0,1] -> 0 (ties with nothing: [-1,0] is -1)
    np.testing.assert_array_equal(idx[0], [0, 3, 1])
    np.testing.assert_allclose(scores[0], [1.0, s, 0.0], atol=1e-6)
    # query 1 = -y: [0,1] is -1; [1,0] and [-1,0] tie at 0 -> lower index first
    np.testing.assert_array_equal(idx[1], [0, 2, 3])
    np.testing.assert_allclose(scores[1], [0.0, 0.0, -s], atol=1e-6)


def test_brute_force_knn_k_capped_and_validated():
    vectors = np.eye(3, dtype=np.float32)
    idx, scores = brute_force_knn(vectors, vectors, top_k=10)
    assert idx.shape == (3, 3)
    np.testing.assert_array_equal(idx[:, 0], [0, 1, 2])
    np.testing.assert_allclose(scores[:, 0], 1.0)
    with pytest.raises(ValueError, match="top_k"):
        brute_force_knn(vectors, vectors, top_k=0)
    with pytest.raises(ValueError, match="-d"):
        brute_force_knn(np.ones((1, 2), np.float32), vectors, top_k=1)
