"""``reconfigure(user_config)`` of the SAM 2 and retrieval stages, on the plain classes without Ray: the
new ``max_batch_size`` / ``batch_wait_timeout_s`` reach the ``@serve.batch`` method, a key left out
keeps its value, and a bad value raises ``ValueError`` naming the key and changes nothing.

(The Fader and Embedder have the same test in test_fader.py and test_embedder.py.)
"""

from __future__ import annotations

import pytest

from deployments.decoder import MaskDecoder
from deployments.encoder import ImageEncoder
from deployments.retriever import Retriever
from tests.conftest import MODEL_ID

RANDOM = {"kind": "random", "checkpoint": None, "seed": 0}


def _settings(method) -> tuple[int, float]:
    return method._get_max_batch_size(), method._get_batch_wait_timeout_s()


def _check_reconfigure(replica, method, defaults: tuple[int, float]) -> None:
    # @serve.batch keeps its settings on the class-level wrapper (one per replica process): restore them
    assert _settings(method) == defaults
    try:
        replica.reconfigure({"max_batch_size": 5, "batch_wait_timeout_s": 0.03})
        assert _settings(method) == (5, 0.03)
        replica.reconfigure({"max_batch_size": 7})  # a key left out keeps its value
        assert _settings(method) == (7, 0.03)
        replica.reconfigure({"batch_wait_timeout_s": 0})
        assert _settings(method) == (7, 0.0)
        replica.reconfigure({})
        assert _settings(method) == (7, 0.0)
        bad = [
            ({"max_batch_size": 0}, "max_batch_size"),
            ({"max_batch_size": 2.5}, "max_batch_size"),
            ({"max_batch_size": True}, "max_batch_size"),
            ({"max_batch_size": 3, "batch_wait_timeout_s": -0.1}, "batch_wait_timeout_s"),
            ({"max_batch_size": 3, "batch_wait_timeout_s": float("inf")}, "batch_wait_timeout_s"),
            ({"batch_wait_timeout_s": "0.1"}, "batch_wait_timeout_s"),
            ({"max_batch_size": 3, "batch_size": 4}, "batch_size"),
        ]
        for config, key in bad:
            with pytest.raises(ValueError, match=key):
                replica.reconfigure(config)
            assert _settings(method) == (7, 0.0), config  # refused whole: not even the good key applied
    finally:
        method.set_max_batch_size(defaults[0])
        method.set_batch_wait_timeout_s(defaults[1])


def test_image_encoder_reconfigure():
    replica = ImageEncoder.func_or_class(MODEL_ID, RANDOM, device="cpu")
    _check_reconfigure(replica, replica.encode, (1, 0.0))


def test_mask_decoder_reconfigure():
    replica = MaskDecoder.func_or_class(MODEL_ID, RANDOM, device="cpu")
    _check_reconfigure(replica, replica.decode, (8, 0.002))


def test_retriever_reconfigure(tmp_path):
    replica = Retriever.func_or_class(path=str(tmp_path / "qdrant"))
    _check_reconfigure(replica, replica.search, (32, 0.002))
