"""serve_app.ingress.readiness: ``/readyz`` from the stages' answers, without Ray."""

from __future__ import annotations

import pytest

from serve_app.ingress.readiness import RANDOM_WEIGHTS_WARNING, readiness

ACCEL = {"precision": "fp32", "compiler": "eager"}
TORCH = {"runtime": "torch", "precision": "fp32", "requested": {"runtime": "torch", "precision": "fp32"}, "fallbacks": [], "cpu_flags": ["avx2"], "export": None}


def _answers(weights: str = "sha256:ab", clip_weights: str = "sha256:cd", video: str | None = None) -> list:
    sam2 = {"model_id": "sam2.1_hiera_tiny", "weights": weights, "device": "cpu", "accel": ACCEL, "runtime": TORCH}
    answers = [
        sam2,
        {**sam2, "device": "cuda"},
        {"model_id": "ViT-B-32/laion2b_s34b_b79k", "weights": clip_weights, "device": "cpu", "dim": 512, "identity": "open_clip:x"},
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
    assert body["embedder"] == {"model_id": "ViT-B-32/laion2b_s34b_b79k", "weights": "sha256:cd", "dim": 512, "id": "open_clip:x"}
    assert body["retriever"] == {"backend": "local"} and body["accel"]["decoder"] == ACCEL
    assert body["runtime"] == {"encoder": TORCH, "decoder": TORCH} == body["models"][0]["runtime"]
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
    reason = f"{answers[1]['model_id']}: encoder and decoder weights differ"
    assert readiness(answers) == (503, {"status": "not_ready", "reason": reason})
    assert readiness(_answers(video="random")) == (503, {"status": "not_ready", "reason": "the video segmenter's weights differ from its model's encoder"})


def test_too_few_answers_is_a_programming_error():
    with pytest.raises(ValueError, match="encoder"):
        readiness(_answers()[:4])


STAGES = ["encoder", "decoder", "embedder", "retriever", "fader", "video"]


@pytest.mark.parametrize("stage", range(len(STAGES)), ids=STAGES)
def test_any_stage_that_raises_makes_it_not_ready(stage):
    """Every stage counts, the video segmenter too: one raising stage is a 503 naming its error, and the
    body says nothing about the model (a half-up app does not look ready)."""
    answers = _answers(video="sha256:ab")
    answers[stage] = RuntimeError(f"{STAGES[stage]} replica died")
    status, body = readiness(answers)
    assert status == 503
    assert body == {"status": "not_ready", "reason": f"RuntimeError: {STAGES[stage]} replica died"}


def test_the_readiness_timeout_is_not_ready():
    """What the ingress passes when ``wait_for`` times out: the same TimeoutError for every stage."""
    err = TimeoutError()
    status, body = readiness([err] * 6)
    assert (status, body) == (503, {"status": "not_ready", "reason": "TimeoutError: "})


def test_the_first_failure_is_the_reason_and_it_is_bounded():
    answers = _answers()
    answers[1] = ValueError("x" * 1000)
    answers[2] = TimeoutError("embedder not up")
    status, body = readiness(answers)
    assert status == 503 and body["reason"].startswith("ValueError: xxx") and len(body["reason"]) == 300


def test_same_weights_of_another_model_are_not_ready():
    answers = _answers()
    answers[1] = {**answers[1], "model_id": "sam2.1_hiera_large"}
    reason = "sam2.1_hiera_large: encoder and decoder weights differ"
    assert readiness(answers) == (503, {"status": "not_ready", "reason": reason})
    answers = _answers(video="sha256:ab")
    answers[5] = {**answers[5], "model_id": "sam2.1_hiera_small"}
    assert readiness(answers) == (503, {"status": "not_ready", "reason": "the video segmenter's weights differ from its model's encoder"})



def test_every_served_model_is_listed_and_each_pair_must_agree():
    """Two served models: both are listed (the default first) with their family and capabilities, and the
    second model's encoder and decoder must run the same weights too."""
    other_enc = {"model_id": "mobile_sam", "weights": "sha256:cd", "device": "cpu", "accel": ACCEL, "runtime": TORCH}
    other_dec = {**other_enc, "family": "mobile_sam", "capabilities": {"points": True, "concept_prompts": False}}
    status, body = readiness(_answers(), [(other_enc, other_dec)])
    assert status == 200
    assert [(m["model_id"], m["default"]) for m in body["models"]] == [(body["model_id"], True), ("mobile_sam", False)]
    assert body["models"][1]["family"] == "mobile_sam" and body["models"][1]["capabilities"]["points"]
    status, body = readiness(_answers(), [(other_enc, {**other_dec, "weights": "random"})])
    assert (status, body["reason"]) == (503, "mobile_sam: encoder and decoder weights differ")


def test_each_model_says_its_runtime_per_stage_and_an_unverified_export_is_a_warning():
    """The runtime in force, the one asked for, the fallbacks and the CPU flags come through per stage; a
    user's export without a manifest is served with a warning, a verified one without."""
    export = {"verified": True, "weights": "sha256:cd", "opset": 17, "files": {"encoder.onnx": {"sha256": "ee", "size_bytes": 3}}}
    fell_back = "mobile_sam decoder: bf16 requested on openvino but this CPU has no AVX-512 BF16 or AMX; running fp32"
    onnx = {**TORCH, "runtime": "onnxruntime", "requested": {"runtime": "onnxruntime", "precision": "fp32"}, "export": export}
    ov = {**TORCH, "runtime": "openvino", "requested": {"runtime": "openvino", "precision": "bf16"}, "fallbacks": [fell_back], "export": export}
    other_enc = {"model_id": "mobile_sam", "weights": "sha256:cd", "device": "cpu", "accel": ACCEL, "runtime": onnx}
    other_dec = {**other_enc, "runtime": ov}
    status, body = readiness(_answers(), [(other_enc, other_dec)])
    assert status == 200 and "warnings" not in body
    sam2, mobile = body["models"]
    assert {k: v["runtime"] for k, v in sam2["runtime"].items()} == {"encoder": "torch", "decoder": "torch"}
    assert mobile["runtime"]["encoder"]["runtime"] == "onnxruntime" and mobile["runtime"]["encoder"]["export"] == export
    assert mobile["runtime"]["decoder"]["requested"] == {"runtime": "openvino", "precision": "bf16"}
    assert (mobile["runtime"]["decoder"]["precision"], mobile["runtime"]["decoder"]["fallbacks"]) == ("fp32", [fell_back])
    unverified = {**export, "verified": False}
    status, body = readiness(_answers(), [(other_enc, {**other_dec, "runtime": {**ov, "export": unverified}})])
    assert status == 200
    assert body["warnings"] == ["mobile_sam decoder: ONNX export without a manifest (digests computed, not verified)"]
