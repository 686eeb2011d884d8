"""Batch settings from ``user_config``, in a module without torch: the Fader and Retriever replicas
import only this, so they do not load torch (about 0.5 GB of resident memory per replica)."""

from __future__ import annotations


def check_batch_config(user_config: dict) -> tuple[int, float]:
    """Validate ``{"max_batch_size": int >= 1, "batch_wait_timeout_s": float >= 0}`` from ``user_config``.

    Raises:
        ValueError: a bad value or an unknown key.
    """
    unknown = set(user_config) - {"max_batch_size", "batch_wait_timeout_s"}
    if unknown:
        raise ValueError(f"unknown user_config keys {sorted(unknown)}; allowed: max_batch_size, batch_wait_timeout_s")
    size = user_config.get("max_batch_size", 1)
    wait = user_config.get("batch_wait_timeout_s", 0.0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"max_batch_size must be an integer greater than 0; got {size!r}")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait < float("inf"):
        raise ValueError(f"batch_wait_timeout_s must be a finite number >= 0; got {wait!r}")
    return size, float(wait)
