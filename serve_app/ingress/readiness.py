"""``GET /readyz`` as a pure function of what the stages answered: tested without Ray."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

RANDOM_WEIGHTS_WARNING = "random weights: masks and labels are meaningless (SAMGRAPH_WEIGHTS=random)"

#: The stages asked, in the order of :func:`readiness`'s ``answers`` (``video`` only when deployed).
READINESS_STAGES = ("encoder", "decoder", "embedder", "retriever", "fader", "video")


def readiness(answers: Sequence[Mapping | BaseException]) -> tuple[int, dict]:
    """The status code and body of ``/readyz``.

    Args:
        answers: one per stage in :data:`READINESS_STAGES` order (the video segmenter's last, left out
            when the app has none): the stage's ``info()`` dict (the fader's ``stats()``), or the
            exception its call raised (a timeout: a replica is not up yet).

    Returns:
        ``(200, {"status": "ready", "model_id", "weights", "device", "devices", "embedder", "retriever",
        "accel", ["warnings"]})`` when every stage answered and the encoder, decoder (and video
        segmenter) run the same model and weights; else ``(503, {"status": "not_ready", "reason"})``.

    Raises:
        ValueError: fewer answers than the five image stages.
    """
    if len(answers) < 5:
        raise ValueError(
            f"readiness needs an answer from each of {', '.join(READINESS_STAGES[:5])}; got {len(answers)}"
        )
    failed = next((a for a in answers if isinstance(a, BaseException)), None)
    if failed is not None:
        return 503, {"status": "not_ready", "reason": f"{type(failed).__name__}: {failed}"[:300]}
    enc, dec, emb, ret, _fader, *vid = answers
    weights = (enc["model_id"], enc["weights"])
    if weights != (dec["model_id"], dec["weights"]):
        return 503, {"status": "not_ready", "reason": "encoder and decoder weights differ"}
    if vid and weights != (vid[0]["model_id"], vid[0]["weights"]):
        return 503, {"status": "not_ready", "reason": "encoder and video segmenter weights differ"}
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
    }
    if "random" in (enc["weights"], emb["weights"]):
        body["warnings"] = [RANDOM_WEIGHTS_WARNING]
    return 200, body
