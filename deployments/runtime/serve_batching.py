"""Ray Serve's dynamic batching (``@serve.batch``) settings from a deployment's ``user_config``, in a module
without torch: the Fader and Retriever replicas import only this, so they do not load torch (about 0.5 GB
of resident memory per replica).

Not to be confused with the offline job (``samgraph batch``: :mod:`serve_app.offline`, whose Ray Data
stages are :mod:`deployments.offline_stages` and :mod:`deployments.offline_label_stages`)."""

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


def apply_batch_config(user_config: dict, *methods) -> tuple[int, float]:
    """Validate ``user_config`` (see :func:`check_batch_config`) and set it on ``@serve.batch`` methods.

    A key left out keeps the method's current value (at first, the decorator's), so a config may tune
    one knob alone.

    Args:
        user_config: the deployment's ``user_config``.
        methods: the replica's batched methods, e.g. ``self.decode``.

    Returns:
        (max_batch_size, batch_wait_timeout_s) as validated (defaults 1 and 0.0 for keys left out).

    Raises:
        ValueError: a bad value or an unknown key; nothing is changed then.
    """
    size, wait = check_batch_config(user_config)
    for method in methods:
        if "max_batch_size" in user_config:
            method.set_max_batch_size(size)
        if "batch_wait_timeout_s" in user_config:
            method.set_batch_wait_timeout_s(wait)
    return size, wait
