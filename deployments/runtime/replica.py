"""Shared set-up of the model-serving deployments: device, thread count, model weights, speed-ups."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch

from deployments.runtime.model_weights import LoadedModel, load_model
from deployments.runtime.weights import WeightsSource
from models.accel import AccelSettings

log = logging.getLogger("samgraph.deployments")


def pick_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible to this replica, else ``"cpu"``; other values as given.

    Raises:
        ValueError: ``"cuda"`` was asked for and no GPU is visible.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no GPU is visible to this replica")
    return device


def set_torch_threads(torch_threads: int | None) -> int:
    """Set torch's intra-op threads for this replica and return the count in force.

    Ray sets ``OMP_NUM_THREADS`` from an actor's integer ``num_cpus`` (1 for a fractional one), so the
    count comes from config; ``None`` keeps torch's default.

    Raises:
        ValueError: ``torch_threads`` is not a positive integer.
    """
    if torch_threads is not None:
        if torch_threads < 1:
            raise ValueError("torch_threads must be greater than 0")
        torch.set_num_threads(torch_threads)
    return torch.get_num_threads()


def load_stage_model(model_id: str, weights: dict, device: str, torch_threads: int | None) -> tuple[LoadedModel, str]:
    """Threads, device and the model's weights for one replica (any family of :mod:`models.registry`);
    returns (loaded model with its family, device)."""
    threads = set_torch_threads(torch_threads)
    device = pick_device(device)
    loaded = load_model(model_id, WeightsSource(**weights), device=device, progress=False)
    log.info("%s on %s, %d torch threads, weights %s (pid %d)", model_id, device, threads, loaded.weights, os.getpid())
    return loaded, device


def accel_settings(accel: dict | None) -> AccelSettings:
    """:class:`models.accel.AccelSettings` from a stage's ``accel`` dict (None: fp32 eager).

    Raises:
        ValueError: a bad precision or compile mode.
    """
    return AccelSettings(**(accel or {}))


def fallback_logger(stage: str) -> Callable[[str], None]:
    """The ``on_fallback`` of a stage's model: one warning line per speed-up given up."""
    return lambda message: log.warning("%s falls back: %s", stage, message)


def warm_up(stage: str, model, settings: AccelSettings) -> dict:
    """Warm a stage's model up when compilation was asked for (``torch.compile`` is lazy), so that the
    first request does not pay for it and any fallback happens (and is logged) at start-up; then log
    what is in force. Returns ``model.accel_state()``."""
    if settings.compile or settings.tensorrt:
        t0 = time.perf_counter()
        model.warm_up()
        log.info("%s: warm-up (compilation) took %.1f s", stage, time.perf_counter() - t0)
    state = model.accel_state()
    if not settings.is_default:
        log.info("%s: precision %s, compiler %s", stage, state["precision"], state["compiler"])
    return state
