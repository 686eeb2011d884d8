"""serve_app.assemble: text prompts rank the automatic masks by CLIP similarity, each score on its own mask.

The crops' embeddings are the rows of a random orthonormal matrix Q and a text's embedding is
``sum_i s_i q_i``, so the cosine similarity of crop i and the text is exactly ``s_i``. Every mask has its
own area, box and RLE, so a score paired with another mask, or a ranking of another text, shows.
"""

from __future__ import annotations

import numpy as np
import pytest

from deployments.contracts import DecodeResult, EmbedResult, GenerateResult
from models.amg import AutoMask
from models.masks import decode_rle, encode_rle
from serve_app.assemble import rank_by_text
from serve_app.ingress.routes.segment import merge_segment_results
from serve_app.ingress.schemas import SegmentRequest

H, W = 16, 20
N, D = 5, 8


def _masks() -> tuple[AutoMask, ...]:
    """N masks; mask i is the square [i, i + i + 1) x [0, i + 1): area (i + 1)^2, all distinct."""
    out = []
    for i in range(N):
        m = np.zeros((H, W), bool)
        m[0 : i + 1, i : 2 * i + 1] = True
        out.append(
            AutoMask(
                rle=encode_rle(m),
                area_px=int(m.sum()),
                bbox_xyxy=[i, 0, 2 * i + 1, i + 1],
                predicted_iou=0.5 + i / 100,
                stability_score=0.9 - i / 100,
                point_xy=[float(i), 0.0],
            )
        )
    return tuple(out)


@pytest.fixture
def crops() -> np.ndarray:
    """(N, D) float32, orthonormal rows."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))
    return q[:N].astype(np.float32)


def _text(crops: np.ndarray, sims: list[float]) -> np.ndarray:
    """(D,) float32 unit vector whose cosine similarity with crop i is sims[i] (sum of squares <= 1)."""
    v = np.asarray(sims) @ crops.astype(np.float64)
    rest = 1.0 - float(np.dot(sims, sims))
    assert rest >= 0
    # the remaining norm goes to a direction orthogonal to every crop
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))
    return (v + np.sqrt(rest) * q[N]).astype(np.float32)


def _index_of(record: dict, masks: tuple[AutoMask, ...]) -> int:
    (i,) = [i for i, m in enumerate(masks) if m.area_px == record["area_px"]]
    assert record["bbox_xyxy"] == masks[i].bbox_xyxy
    assert record["predicted_iou"] == masks[i].predicted_iou and record["stability_score"] == masks[i].stability_score
    if "rle" in record:
        assert np.array_equal(decode_rle(record["rle"]), decode_rle(masks[i].rle))
    return i


def test_text_embedding_has_the_similarities_built_in(crops):
    sims = [0.1, -0.3, 0.6, 0.2, 0.0]
    t = _text(crops, sims)
    assert np.linalg.norm(t) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(crops @ t, sims, atol=1e-6)


def test_rank_by_text_pairs_each_score_with_its_mask(crops):
    masks = _masks()
    sims = [0.1, -0.3, 0.6, 0.2, 0.0]
    out = rank_by_text(masks, crops, _text(crops, sims), max_masks=N, mask_format="rle")
    ranked = [_index_of(r, masks) for r in out]
    assert ranked == [2, 3, 0, 4, 1]  # best first
    for r, i in zip(out, ranked):
        assert r["text_score"] == pytest.approx(sims[i], abs=1e-6)


def test_rank_by_text_keeps_the_best_max_masks_and_the_format(crops):
    masks = _masks()
    sims = [0.05, 0.7, -0.2, 0.4, 0.3]
    out = rank_by_text(masks, crops, _text(crops, sims), max_masks=2, mask_format="none")
    assert [_index_of(r, masks) for r in out] == [1, 3]
    assert all("rle" not in r and "png" not in r for r in out)
    png = rank_by_text(masks, crops, _text(crops, sims), max_masks=1, mask_format="png")
    assert set(png[0]) >= {"png", "text_score"} and png[0]["area_px"] == masks[1].area_px


def test_rank_by_text_ties_keep_the_masks_order(crops):
    masks = _masks()
    out = rank_by_text(masks, crops, _text(crops, [0.3, 0.5, 0.3, 0.5, 0.3]), max_masks=N, mask_format="none")
    assert [_index_of(r, masks) for r in out] == [1, 3, 0, 2, 4]


def test_rank_by_text_refuses_mismatched_lengths_and_answers_nothing_without_masks(crops):
    with pytest.raises(ValueError, match="5 masks but 4 crop embeddings"):
        rank_by_text(_masks(), crops[:4], crops[0], max_masks=3, mask_format="rle")
    assert rank_by_text((), np.zeros((0, D), np.float32), crops[0], max_masks=3, mask_format="rle") == []


def test_merge_answers_each_prompt_in_the_request_order(crops):
    """Texts and geometric prompts interleaved: each text gets its own ranking, each box its decoder result."""
    masks = _masks()
    sims_a = [0.6, 0.1, 0.0, -0.2, 0.3]
    sims_b = [0.0, 0.2, 0.1, 0.7, -0.5]
    req = SegmentRequest.model_validate(
        {
            "image_id": "0" * 64,
            "max_masks": 2,
            "prompts": [{"text": "a"}, {"box_xyxy": [0, 0, 4, 4]}, {"text": "b"}, {"points": [[3, 3, 1]]}],
        }
    )
    geo = [{"masks": [{"marker": "box"}]}, {"masks": [{"marker": "point"}]}]
    decoded = DecodeResult("sam2-tiny", "random", geo, {"decode_masks": 1.0, "postprocess": 2.0, "batch_size": 1})
    generated = GenerateResult(masks, "sam2-tiny", "random", {"amg": 3.0})
    embedded = EmbedResult(crops, "pretrained", {"fade": 4.0, "embed": 5.0})
    timing: dict = {}
    body = merge_segment_results(
        req, decoded, None, (generated, embedded, np.stack([_text(crops, sims_a), _text(crops, sims_b)])), timing
    )
    a, box, b, point = body["results"]
    assert a["text_method"] == b["text_method"] == "clip_rank"
    assert box == geo[0] and point == geo[1]
    assert [_index_of(r, masks) for r in a["masks"]] == [0, 4]
    assert [r["text_score"] for r in a["masks"]] == pytest.approx([0.6, 0.3], abs=1e-6)
    assert [_index_of(r, masks) for r in b["masks"]] == [3, 1]
    assert [r["text_score"] for r in b["masks"]] == pytest.approx([0.7, 0.2], abs=1e-6)
    assert body["embedder_weights"] == "pretrained" and body["weights"] == "random"
    assert timing == {"decode_masks": 1.0, "postprocess": 2.0, "amg": 3.0, "fade": 4.0, "embed": 5.0}


def test_merge_with_texts_only(crops):
    masks = _masks()
    req = SegmentRequest.model_validate(
        {"image_id": "0" * 64, "max_masks": 3, "prompts": [{"text": "b"}, {"text": "a"}]}
    )
    generated = GenerateResult(masks, "sam2-tiny", "random", {"amg": 3.0})
    embedded = EmbedResult(crops, "random", {"fade": 4.0, "embed": 5.0})
    texts = np.stack([_text(crops, [0.0, 0.0, 0.0, 0.0, 0.9]), _text(crops, [0.9, 0.0, 0.0, 0.0, 0.0])])
    body = merge_segment_results(req, None, None, (generated, embedded, texts), {})
    assert [_index_of(r["masks"][0], masks) for r in body["results"]] == [4, 0]
