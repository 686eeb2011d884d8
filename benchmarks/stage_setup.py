"""The stages that benchmarks/stage_scaling.py measures, and their settings: which deployment each is,
the config's options for it, ``--set`` / ``--batch`` / ``--replicas`` parsing and the sweep points."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

APP_NAME = "samgraph"
# keys of --set Deployment.key=value: deployment options, user_config keys, and the stage's torch threads
DEPLOYMENT_KEYS = ("num_replicas", "max_ongoing_requests", "num_cpus")
USER_CONFIG_KEYS = ("max_batch_size", "batch_wait_timeout_s")
ARG_KEYS = ("torch_threads",)


@dataclass
class Stage:
    """One measured stage: its deployment, the unit of its throughput and its default sweep.

    Attributes:
        key: short name (``--stages``).
        deployment: the Serve deployment name in the config (``--set`` prefix).
        unit: what ``items_per_call`` counts.
        batches: default max_batch_size sweep (None: the config's value); empty: not batched.
        replicas: default num_replicas sweep.
        items_per_call: items one call carries (K for fader and embedder).
        threads_of: the AppArgs field whose torch_threads the stage runs with (None: no torch).
        min_calls: least calls per sweep point (None: ``--min-calls``).
        warmup: one call per replica before the measured loop.
    """

    key: str
    deployment: str
    unit: str
    batches: list[int | None]
    replicas: list[int]
    items_per_call: int = 1
    threads_of: str | None = None
    min_calls: int | None = None
    warmup: bool = True


STAGES = {
    s.key: s
    for s in (
        Stage("encoder", "ImageEncoder", "images", [1, 2], [1, 2], threads_of="encoder"),
        Stage("decoder", "MaskDecoder", "decodes", [1, 4, None], [1, 2], threads_of="decoder"),
        # ~45 s per image on 2 cores (16x16 grid): one call at a time, one replica, no separate warm-up
        Stage("amg", "MaskDecoder", "images", [], [1], threads_of="decoder", min_calls=1, warmup=False),
        Stage("fader", "Fader", "crops", [1, 4, None], [1, 2]),
        Stage("embedder", "Embedder", "crops", [1, 8, None], [1, 2], threads_of="clip"),
        Stage("retriever", "Retriever", "jobs", [1, 8, None], [1]),
    )
}
UNITS = {s.key: s.unit for s in STAGES.values()}


def parse_value(text: str):
    """``"2"`` -> 2, ``"0.01"`` -> 0.01, else the YAML scalar."""
    return yaml.safe_load(text)


def parse_sets(items: list[str]) -> dict[str, dict]:
    """``["Embedder.num_replicas=2", ...]`` -> ``{"Embedder": {"num_replicas": 2}}``.

    Raises:
        SystemExit: malformed item or unknown key.
    """
    out: dict[str, dict] = {}
    allowed = DEPLOYMENT_KEYS + USER_CONFIG_KEYS + ARG_KEYS
    for item in items:
        name, sep, value = item.partition("=")
        dep, dot, key = name.partition(".")
        if not sep or not dot or key not in allowed:
            sys.exit(f"--set {item!r}: expected Deployment.key=value with key one of {', '.join(allowed)}")
        out.setdefault(dep, {})[key] = parse_value(value)
    return out


def parse_grid(items: list[str], what: str) -> dict[str, list[int]]:
    """``["Embedder=1,8,32"]`` -> ``{"embedder": [1, 8, 32]}`` (stage key or deployment name)."""
    out = {}
    for item in items:
        name, sep, values = item.partition("=")
        key = stage_key(name)
        if not sep or key is None:
            sys.exit(f"--{what} {item!r}: expected Stage=v1,v2 with Stage one of {', '.join(STAGES)}")
        out[key] = [int(v) for v in values.split(",") if v]
    return out


def stage_key(name: str) -> str | None:
    """The stage key of a stage key or a deployment name (MaskDecoder: ``decoder``); None if neither."""
    if name in STAGES:
        return name
    return next((s.key for s in STAGES.values() if s.deployment == name and s.key != "amg"), None)


def load_config(path: Path) -> tuple[dict, dict[str, dict]]:
    """(app args, deployment entries by name) of the samgraph app in a Serve config."""
    config = yaml.safe_load(path.read_text())
    app = next(a for a in config["applications"] if a["name"] == APP_NAME)
    return app.get("args") or {}, {d["name"]: d for d in app.get("deployments", [])}


def deployment_settings(entry: dict, overrides: dict) -> dict:
    """Flat settings of one deployment: num_replicas, max_ongoing_requests, num_cpus, user_config keys,
    torch_threads (None: the app args'), from its config entry and then ``overrides``.

    An ``autoscaling_config`` with min_replicas == max_replicas counts as that many replicas.

    Raises:
        ValueError: an autoscaling range (min != max) without a num_replicas override.
    """
    replicas = entry.get("num_replicas")
    auto = entry.get("autoscaling_config")
    if replicas is None and auto is not None:
        if auto.get("min_replicas") != auto.get("max_replicas") and "num_replicas" not in overrides:
            raise ValueError(f"{entry['name']}: autoscaling {auto}; give --set {entry['name']}.num_replicas=N")
        replicas = auto.get("max_replicas")
    user = entry.get("user_config") or {}
    settings = {
        "num_replicas": replicas or 1,
        "max_ongoing_requests": entry.get("max_ongoing_requests"),
        "num_cpus": (entry.get("ray_actor_options") or {}).get("num_cpus"),
        "max_batch_size": user.get("max_batch_size"),
        "batch_wait_timeout_s": user.get("batch_wait_timeout_s"),
        "torch_threads": None,
    }
    settings.update(overrides)
    return settings


def deployment_options(settings: dict) -> dict:
    """``Deployment.options(**...)`` of flat settings."""
    opts: dict = {"num_replicas": int(settings["num_replicas"])}
    if settings["max_ongoing_requests"] is not None:
        opts["max_ongoing_requests"] = int(settings["max_ongoing_requests"])
    if settings["num_cpus"] is not None:
        opts["ray_actor_options"] = {"num_cpus": float(settings["num_cpus"])}
    user = {k: settings[k] for k in USER_CONFIG_KEYS if settings[k] is not None}
    if user:
        opts["user_config"] = user
    return opts



def auto_concurrency(stage: Stage, settings: dict) -> int:
    """Enough calls in flight to fill every replica's batch twice; AMG (not batched): one per replica."""
    replicas = int(settings["num_replicas"])
    if stage.key == "amg":
        return replicas
    batch = settings["max_batch_size"] or 1
    calls_per_batch = math.ceil(batch / (stage.items_per_call if stage.key == "embedder" else 1))
    return 2 * replicas * calls_per_batch


def sweep_points(stage: Stage, base: dict, batches: list[int] | None, replicas: list[int] | None) -> list[dict]:
    """Settings of each sweep point: ``base`` with max_batch_size and num_replicas set (config value where None)."""
    bs = batches if batches is not None else stage.batches
    bs = [b if b is not None else base["max_batch_size"] for b in bs] or [None]
    bs = list(dict.fromkeys(bs))  # a config value equal to a listed one runs once
    rs = replicas if replicas is not None else stage.replicas
    return [{**base, "max_batch_size": b, "num_replicas": r} for r in rs for b in bs]


def setting_label(stage: Stage, s: dict) -> str:
    """``"b{max_batch_size} r{num_replicas}"`` of a sweep point (``b-`` for AMG, which is not batched)."""
    b = "-" if stage.key == "amg" else s["max_batch_size"]
    return f"b{b} r{s['num_replicas']}"
