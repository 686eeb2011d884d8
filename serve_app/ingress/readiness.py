"""``GET /readyz`` as a pure function of what the stages answered: tested without Ray."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

RANDOM_WEIGHTS_WARNING = "random weights: masks and labels are meaningless (SAMGRAPH_WEIGHTS=random)"

#: The stages asked, in the order of :func:`readiness`'s ``answers`` (``video`` only when deployed).
READINESS_STAGES = ("encoder", "decoder", "embedder", "retriever", "fader", "video")


def model_entry(enc: Mapping, dec: Mapping, default: bool = False) -> dict:
    """One served model as ``/readyz`` and ``GET /v1/models`` show it, from its encoder's and decoder's
    ``info()``: ``model_id``, ``family``, ``weights``, ``default``, ``capabilities``, ``devices``, ``accel``
    (precision and compiler in force per stage) and ``runtime`` (per stage: the runtime and precision in
    force and asked for, the fallbacks, the CPU flags that decided, the ONNX export's digests; see
    :meth:`deployments.runtime.stage_runtime.StageRuntime.state`)."""
    return {
        "model_id": dec["model_id"],
        "family": dec.get("family"),
        "weights": dec["weights"],
        "default": default,
        "capabilities": dec.get("capabilities", {}),
        "devices": {"encoder": enc["device"], "decoder": dec["device"]},
        "accel": {
            k: {"precision": v["accel"]["precision"], "compiler": v["accel"]["compiler"]}
            for k, v in (("encoder", enc), ("decoder", dec))
        },
        "runtime": {"encoder": enc["runtime"], "decoder": dec["runtime"]},
    }


def unverified_exports(entry: Mapping) -> list[str]:
    """Warnings for the stages of a :func:`model_entry` that run a user's ONNX export without a manifest
    (its digests computed, not verified)."""
    return [
        f"{entry['model_id']} {stage}: ONNX export without a manifest (digests computed, not verified)"
        for stage, r in entry["runtime"].items()
        if r.get("export") is not None and not r["export"]["verified"]
    ]


def readiness(
    answers: Sequence[Mapping | BaseException],
    others: Sequence[tuple[Mapping | BaseException, Mapping | BaseException]] = (),
) -> tuple[int, dict]:
    """The status code and body of ``/readyz``.

    Args:
        answers: one per stage in :data:`READINESS_STAGES` order (the default model's encoder and decoder;
            the video segmenter's last, left out when the app has none): the stage's ``info()`` dict (the
            fader's ``stats()``), or the exception its call raised (a timeout: a replica is not up yet).
        others: (encoder, decoder) answers of every other served model, in the served order.

    Returns:
        ``(200, {"status": "ready", "model_id", "weights", "device", "devices", "embedder", "retriever",
        "accel", "runtime", "models", ["warnings"]})`` when every stage answered and each model's encoder and
        decoder (and the video segmenter and the model it tracks with) run the same model and weights;
        else ``(503, {"status": "not_ready", "reason"})``. ``models``: every served model
        (:func:`model_entry`), the default first.

    Raises:
        ValueError: fewer answers than the five image stages.
    """
    if len(answers) < 5:
        raise ValueError(
            f"readiness needs an answer from each of {', '.join(READINESS_STAGES[:5])}; got {len(answers)}"
        )
    every = [*answers, *(a for pair in others for a in pair)]
    failed = next((a for a in every if isinstance(a, BaseException)), None)
    if failed is not None:
        return 503, {"status": "not_ready", "reason": f"{type(failed).__name__}: {failed}"[:300]}
    enc, dec, emb, ret, _fader, *vid = answers
    pairs = [(enc, dec), *others]
    served = {}
    for e, d in pairs:
        if (e["model_id"], e["weights"]) != (d["model_id"], d["weights"]):
            return 503, {"status": "not_ready", "reason": f"{d['model_id']}: encoder and decoder weights differ"}
        served[d["model_id"]] = d["weights"]
    if vid and served.get(vid[0]["model_id"]) != vid[0]["weights"]:
        return 503, {"status": "not_ready", "reason": "the video segmenter's weights differ from its model's encoder"}
    body = {
        "status": "ready",
        "model_id": enc["model_id"],
        "weights": enc["weights"],
        "device": enc["device"],
        "devices": {
            "encoder": enc["device"],
            "decoder": dec["device"],
            "embedder": emb["device"],
            **({"video": vid[0]["device"]} if vid else {}),
        },
        "embedder": {"model_id": emb["model_id"], "weights": emb["weights"], "dim": emb["dim"], "id": emb["identity"]},
        "retriever": {"backend": ret["backend"]},
        # speed-ups in force (after any fallback), e.g. {"precision": "bf16", "compiler": "inductor"}
        "accel": {
            k: {"precision": v["accel"]["precision"], "compiler": v["accel"]["compiler"]}
            for k, v in (("encoder", enc), ("decoder", dec))
        },
        # the default model's runtime per stage (every model's: ``models[i].runtime``)
        "runtime": {"encoder": enc["runtime"], "decoder": dec["runtime"]},
        "models": [model_entry(e, d, default=i == 0) for i, (e, d) in enumerate(pairs)],
    }
    if vid:
        body["video_model_id"] = vid[0]["model_id"]
    warnings = [RANDOM_WEIGHTS_WARNING] if "random" in (emb["weights"], *served.values()) else []
    warnings += [w for m in body["models"] for w in unverified_exports(m)]
    if warnings:
        body["warnings"] = warnings
    return 200, body
