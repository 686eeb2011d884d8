"""serve_app.ingress.readiness: ``/readyz`` from the stages' answers, without Ray."""

from __future__ import annotations

import pytest

from serve_app.ingress.readiness import RANDOM_WEIGHTS_WARNING, readiness

ACCEL = {"precision": "fp32", "compiler": "eager"}


def _answers(weights: str = "sha256:ab", clip_weights: str = "sha256:cd", video: str | None = None) -> list:
    sam2 = {"model_id": "sam2.1_hiera_tiny", "weights": weights, "device": "cpu", "accel": ACCEL}
    answers = [
        sam2,
        {**sam2, "device": "cuda"},
        {"model_id": "ViT-B-32/laion2b_s34b_b79k", "weights": clip_weights, "device": "cpu", "dim": 512},
        {"backend": "local", "collections": []},
        {"jobs": 0},
    ]
    if video is not None:
        answers.append({"model_id": "sam2.1_hiera_tiny", "weights": video, "device": "cpu"})
    return answers


def test_ready_when_every_stage_answers_with_the_same_weights():
    status, body = readiness(_answers(video="sha256:ab"))
    assert status == 200
    assert body["status"] == "ready" and body["weights"] == "sha256:ab" and body["model_id"] == "sam2.1_hiera_tiny"
    assert body["devices"] == {"encoder": "cpu", "decoder": "cuda", "embedder": "cpu", "video": "cpu"}
    assert body["embedder"] == {"model_id": "ViT-B-32/laion2b_s34b_b79k", "weights": "sha256:cd", "dim": 512}
    assert body["retriever"] == {"backend": "local"} and body["accel"]["decoder"] == ACCEL
    assert "warnings" not in body


def test_no_video_segmenter_leaves_it_out():
    status, body = readiness(_answers())
    assert status == 200 and "video" not in body["devices"]


@pytest.mark.parametrize(("weights", "clip"), [("random", "sha256:cd"), ("sha256:ab", "random")])
def test_random_weights_are_reported(weights, clip):
    status, body = readiness(_answers(weights, clip))
    assert status == 200 and body["warnings"] == [RANDOM_WEIGHTS_WARNING]


def test_a_stage_that_failed_or_timed_out_is_not_ready():
    answers = _answers()
    answers[3] = TimeoutError("retriever not up")
    status, body = readiness(answers)
    assert status == 503 and body == {"status": "not_ready", "reason": "TimeoutError: retriever not up"}


def test_different_weights_are_not_ready():
    answers = _answers()
    answers[1] = {**answers[1], "weights": "sha256:other"}
    assert readiness(answers) == (503, {"status": "not_ready", "reason": "encoder and decoder weights differ"})
    assert readiness(_answers(video="random")) == (503, {"status": "not_ready", "reason": "encoder and video segmenter weights differ"})


def test_too_few_answers_is_a_programming_error():
    with pytest.raises(ValueError, match="encoder"):
        readiness(_answers()[:4])
