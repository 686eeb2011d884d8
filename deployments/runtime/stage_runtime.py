"""Which runtime a model stage (encoder or decoder) runs, and the stage built on it.

A stage asks for a runtime and a precision (``runtime: torch | onnxruntime | openvino | tensorrt``,
``precision: fp32 | bf16 | fp16`` in its config); :func:`models.runtime.resolve` decides what runs, given
this machine's CPU flags (:func:`deployments.runtime.cpu.cpu_flags`) and the family's runtimes, falling
back (runtime -> ``torch``, precision -> ``fp32``) with one log line per fallback. ``torch`` runs the
family's eager modules with :mod:`models.accel`'s speed-ups; the others run the family's ONNX export
(:mod:`deployments.runtime.exports`: the user's ``export_dir``, or samgraph's cache entry, exported on first
start). The service's replicas, the offline stages and the in-process API all build their stages here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from deployments.runtime.cpu import cpu_flags, flags_of_interest
from deployments.runtime.exports import (
    MANIFEST_FILE,
    Export,
    ExportError,
    ensure_export,
    export_dir_for,
    verify_export,
    weights_identity,
)
from deployments.runtime.model_weights import LoadedModel
from deployments.runtime.weights import cache_dir
from models.accel import PRECISIONS as TORCH_PRECISIONS
from models.accel import AccelSettings
from models.runtime import RuntimeSettings, load_graph, resolve
from models.segmenter import DECODER_FILE, ENCODER_FILE

log = logging.getLogger("samgraph.deployments")

#: The ONNX opset of the exports samgraph writes.
EXPORT_OPSET = 17
STAGES = ("encoder", "decoder")


@dataclass
class StageRuntime:
    """What a stage asked for and what runs.

    Attributes:
        asked: the settings asked for.
        in_force: what runs after :func:`models.runtime.resolve`'s fallbacks.
        fallbacks: one message per fallback, in order.
        cpu_flags: the flags of :data:`deployments.runtime.cpu.CPU_FLAGS_OF_INTEREST` this CPU has (what
            decided the precision).
        export: the ONNX export the stage runs (None for ``torch``).
    """

    asked: RuntimeSettings
    in_force: RuntimeSettings
    fallbacks: list[str] = field(default_factory=list)
    cpu_flags: list[str] = field(default_factory=list)
    export: Export | None = None

    def state(self) -> dict:
        """``{"runtime", "precision", "requested": {"runtime", "precision"}, "fallbacks", "cpu_flags",
        "export"}`` (``export``: :meth:`Export.describe`, or None for torch), as ``/readyz`` shows it."""
        return {
            "runtime": self.in_force.runtime,
            "precision": self.in_force.precision,
            "requested": {"runtime": self.asked.runtime, "precision": self.asked.precision},
            "fallbacks": list(self.fallbacks),
            "cpu_flags": list(self.cpu_flags),
            "export": self.export.describe() if self.export is not None else None,
        }


def asked_settings(
    runtime: Mapping | None, accel: Mapping | None, device: str, threads: int | None
) -> RuntimeSettings:
    """The :class:`models.runtime.RuntimeSettings` a stage asks for: ``runtime``'s ``runtime`` and
    ``precision`` (a stage config's :meth:`serve_app.config.ModelStageArgs.runtime_settings`); without it,
    ``torch`` at ``accel``'s precision (the deployments' arguments before runtimes existed).

    Raises:
        ValueError: an unknown runtime or precision, a bad device or thread count.
    """
    runtime = dict(runtime or {})
    precision = runtime.get("precision") or (accel or {}).get("precision") or "fp32"
    name = runtime.get("runtime") or "torch"
    return RuntimeSettings(runtime=name, precision=precision, device=device, threads=threads)


def choose_runtime(
    supported: tuple[str, ...],
    asked: RuntimeSettings,
    what: str,
    on_fallback: Callable[[str], None] | None = None,
    flags: frozenset[str] | None = None,
) -> StageRuntime:
    """:func:`models.runtime.resolve` of ``asked`` on this machine (or on ``flags``, a CPU's flags, in tests),
    each fallback passed to ``on_fallback`` once and kept.

    Torch runs what :mod:`models.accel` offers (fp32, bf16): an fp16 left on torch (a GPU runtime that fell
    back) falls back to fp32 too, with its own message.
    """
    flags = cpu_flags() if flags is None else frozenset(flags)
    fallbacks: list[str] = []

    def say(message: str) -> None:
        fallbacks.append(message)
        if on_fallback is not None:
            on_fallback(message)

    in_force = resolve(asked, flags, supported=supported, on_fallback=say, what=what)
    if in_force.runtime == "torch" and in_force.precision not in TORCH_PRECISIONS:
        say(f"{what}: {in_force.precision} requested on torch, which runs fp32 or bf16 autocast; running fp32")
        in_force = replace(in_force, precision="fp32")
    return StageRuntime(asked, in_force, fallbacks, flags_of_interest(flags))


def stage_export(loaded: LoadedModel, weights: Mapping, export_dir: str | None = None) -> Export:
    """The ONNX export a stage of ``loaded`` runs: the user's ``export_dir`` (verified against its manifest,
    or its digests computed when it has none), else samgraph's cache entry for the model and its weights,
    exported now when there is none (:func:`deployments.runtime.exports.ensure_export`).

    Args:
        loaded: the model (its family exports it).
        weights: the :class:`deployments.runtime.weights.WeightsSource` fields (``seed`` names random weights).
        export_dir: a user's export directory, or None.

    Raises:
        ExportError: an export that does not verify; ValueError: the family cannot be exported.
    """
    if export_dir is not None:
        export = verify_export(export_dir, require_manifest=False, model_id=loaded.model_id)
        how = "verified against its manifest" if export.verified else "no manifest: digests computed, not verified"
        log.info("%s: ONNX export %s (%s)", loaded.model_id, export.directory, how)
        return export
    return export_model(loaded, weights)[0]


def export_model(
    loaded: LoadedModel, weights: Mapping, directory: str | os.PathLike | None = None
) -> tuple[Export, bool]:
    """The ONNX export of ``loaded`` at ``directory`` (default: its cache entry, :func:`export_dir_for`),
    written now when there is none (:func:`deployments.runtime.exports.ensure_export`, opset
    :data:`EXPORT_OPSET`).

    Args:
        loaded: the model and its family.
        weights: the :class:`deployments.runtime.weights.WeightsSource` fields it was loaded with (``seed``
            names random weights).
        directory: where the export is (or is to be).

    Returns:
        (the verified export, True when this call wrote it).

    Raises:
        ExportError: the export there does not verify, or was made from other weights.
        ValueError: the family cannot be exported.
    """
    import torch

    weights_id = weights_identity(loaded.weights, weights.get("seed"))
    layout = loaded.family.export_layout
    if directory is None:
        directory = export_dir_for(loaded.model_id, weights_id, EXPORT_OPSET, layout=layout)
    directory = Path(directory)
    meta = {
        "model_id": loaded.model_id,
        "family": loaded.family.name,
        "weights": weights_id,
        "opset": EXPORT_OPSET,
        "layout": layout,
        "torch": torch.__version__,
    }
    t0 = time.perf_counter()
    make = lambda: loaded.family.export_onnx(loaded.model, opset=EXPORT_OPSET)  # noqa: E731
    export, written = ensure_export(directory, make, meta)
    if written:
        log.info("%s: exported to ONNX in %s (%.1f s)", loaded.model_id, directory, time.perf_counter() - t0)
    elif export.manifest.get("weights") != weights_id:
        raise ExportError(
            f"ONNX export {directory / MANIFEST_FILE}: made from weights {export.manifest.get('weights')}, "
            f"not {weights_id}; export to another directory"
        )
    return export, written


def build_stage(
    stage: str,
    loaded: LoadedModel,
    device: str,
    threads: int | None,
    accel: Mapping | None,
    runtime: Mapping | None,
    weights: Mapping,
    on_fallback: Callable[[str], None] | None = None,
    free_unused: bool = True,
    flags: frozenset[str] | None = None,
):
    """A model stage on the runtime it asks for (or the one it falls back to).

    Args:
        stage: ``"encoder"`` or ``"decoder"``.
        loaded: the model and its family.
        device: ``"cpu"`` or ``"cuda[:N]"`` (already picked).
        threads: intra-op threads of the runtime (None: its default).
        accel: :class:`models.accel.AccelSettings` fields (used when torch runs; its precision is the one in
            force).
        runtime: ``{"runtime", "precision", "export_dir"}`` (None: torch at ``accel``'s precision).
        weights: the :class:`deployments.runtime.weights.WeightsSource` fields the model was loaded with.
        on_fallback: receives each fallback message (the caller logs it).
        free_unused: a decoder frees the image encoder's weights (False when the model is shared with an
            encoder, as in the in-process API).
        flags: CPU flags to decide with (None: this machine's).

    Returns:
        (the family's encoder or decoder, its :class:`StageRuntime`, the :class:`AccelSettings` it runs with).

    A model that cannot be exported, or a graph the runtime cannot load, falls back to torch fp32 (one
    message); an export that does not verify does not.

    Raises:
        ValueError: unknown stage, runtime or precision.
        ExportError: an export that does not verify (a file missing, truncated or altered).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}; got {stage!r}")
    family = loaded.family
    asked = asked_settings(runtime, accel, device, threads)
    chosen = choose_runtime(family.runtimes, asked, f"{loaded.model_id} {stage}", on_fallback, flags)
    settings = chosen.in_force
    graph = None
    if settings.runtime != "torch":
        graph = _load_stage_graph(stage, loaded, weights, runtime, chosen, on_fallback)
        settings = chosen.in_force
    accel_in_force = AccelSettings()
    if settings.runtime == "torch":
        accel_in_force = AccelSettings(**{**(accel or {}), "precision": settings.precision})
    if stage == "encoder":
        part = family.encoder(loaded.model, accel_in_force, on_fallback, graph=graph)
    else:
        if free_unused:
            family.drop_image_encoder(loaded.model)  # a decoder never runs the trunk; free its weights
        part = family.decoder(loaded.model, accel=accel_in_force, on_fallback=on_fallback, graph=graph)
    log.info(
        "%s %s: runtime %s, precision %s (asked %s %s; CPU flags %s)",
        loaded.model_id,
        stage,
        settings.runtime,
        settings.precision,
        asked.runtime,
        asked.precision,
        ", ".join(chosen.cpu_flags) or "none of interest",
    )
    return part, chosen, accel_in_force


def _load_stage_graph(
    stage: str,
    loaded: LoadedModel,
    weights: Mapping,
    runtime: Mapping | None,
    chosen: StageRuntime,
    on_fallback: Callable[[str], None] | None,
):
    """The stage's graph in ``chosen.in_force``'s runtime (its export verified or written first); None, with
    ``chosen`` set back to torch fp32 and one fallback message, when the model cannot be exported or the
    runtime cannot load the graph (an op it lacks, a TensorRT build failure), so the service keeps
    answering. An export that does not verify is not a fallback: :class:`ExportError` is raised."""
    settings, what = chosen.in_force, f"{loaded.model_id} {stage}"
    try:
        chosen.export = stage_export(loaded, weights, (runtime or {}).get("export_dir"))
        compiled = cache_dir() / "compiled" / settings.runtime / chosen.export.digest[:16]
        compiled.mkdir(parents=True, exist_ok=True)
        settings = chosen.in_force = replace(settings, cache_dir=str(compiled))
        t0 = time.perf_counter()
        graph = load_graph(str(chosen.export.path(ENCODER_FILE if stage == "encoder" else DECODER_FILE)), settings)
    except ExportError:
        raise
    except Exception as e:  # the exporter's or the runtime's own error types
        message = f"{what}: {settings.runtime} could not run the ONNX graph ({type(e).__name__}: {e}"[:400]
        message += "); running torch fp32"
        chosen.fallbacks.append(message)
        if on_fallback is not None:
            on_fallback(message)
        chosen.in_force = replace(settings, runtime="torch", precision="fp32", cache_dir=None)
        chosen.export = None
        return None
    log.info("%s: %s graph loaded in %.1f s", what, settings.runtime, time.perf_counter() - t0)
    return graph


def accel_state(part, chosen: StageRuntime) -> dict:
    """The ``accel`` a stage reports: the torch speed-ups in force (:meth:`AcceleratedCall.state`), or for a
    graph runtime its precision, with the runtime's name as ``compiler``."""
    if chosen.in_force.runtime == "torch":
        return part.accel_state()
    return {
        "precision": chosen.in_force.precision,
        "compiler": chosen.in_force.runtime,
        "requested": {"runtime": chosen.asked.runtime, "precision": chosen.asked.precision},
        "fallbacks": [],
    }
