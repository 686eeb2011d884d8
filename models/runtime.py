"""Runtimes: ways to run a family's exported encoder and decoder graphs (ONNX), behind one protocol.

A family (:mod:`models.segmenter`) runs its networks in eager PyTorch (runtime ``"torch"``, with the
speed-ups of :mod:`models.accel`) or exports them to ONNX (``SegmenterFamily.export_onnx``) and runs the
graphs through one of the runtimes here. :data:`RUNTIMES` maps each name to the module and class that
implement it (imported on first use, like ``models.registry.FAMILIES``); adding one is one module and one
entry:

* ``onnxruntime`` (:mod:`models.runtime_onnxruntime`): ONNX Runtime's CPU execution provider, fp32;
* ``openvino`` (:mod:`models.runtime_openvino`): OpenVINO on CPU (or an Intel GPU), fp32, or bf16 where the
  CPU has it natively;
* ``tensorrt`` (:mod:`models.runtime_tensorrt`): ONNX Runtime's TensorRT execution provider on an NVIDIA GPU
  (``onnxruntime-gpu`` with TensorRT), fp16 or fp32, engines cached.

Choosing what runs (:func:`resolve`) falls back rather than fails, so the service keeps answering: a
runtime that is not installed (or has no device here) falls back to ``torch``, a precision the hardware
or runtime lacks falls back to fp32; each fallback is one message through ``on_fallback`` (the caller logs
it). bf16 counts as native on a CPU only with AVX-512 BF16 or AMX (the ``avx512_bf16`` / ``amx_bf16``
flags of ``/proc/cpuinfo``): elsewhere it is emulated and slower than fp32 (measured 4x slower on an
AVX2-only machine). The flags are passed in: this module reads no files.

Pure numpy plus the runtimes' own libraries, imported only when a runtime is used. The runtime library
reads the exported graph from the path it is given (and keeps its compiled artefacts in ``cache_dir``);
this module opens no file itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from models.settings import bounded, check_bounds

#: Runtime name -> ``"module:Class"`` of its :class:`Runtime` (``torch`` runs the family's eager modules).
RUNTIMES: dict[str, str] = {
    "torch": "models.runtime:TorchRuntime",
    "onnxruntime": "models.runtime_onnxruntime:OnnxRuntime",
    "openvino": "models.runtime_openvino:OpenVinoRuntime",
    "tensorrt": "models.runtime_tensorrt:TensorRtRuntime",
}
PRECISIONS = ("fp32", "bf16", "fp16")
#: CPU flags (``/proc/cpuinfo``) with which bf16 matrix products run natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: CPU flags with which fp16 matrix products run natively.
NATIVE_FP16_FLAGS = ("avx512_fp16", "amx_fp16")


@dataclass(frozen=True)
class RuntimeSettings:
    """How to run a stage's network.

    Attributes:
        runtime: a key of :data:`RUNTIMES`.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (what is in force may be less: :func:`resolve`).
        device: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``.
        threads: intra-op threads of the runtime (None: the runtime's default).
        cache_dir: a directory where the runtime may keep compiled artefacts (OpenVINO's compiled blobs,
            TensorRT engines) across starts; None: none kept.
    """

    runtime: str = bounded("torch", choices=tuple(RUNTIMES))
    precision: str = bounded("fp32", choices=PRECISIONS)
    device: str = bounded("cpu", min_length=1)
    threads: int | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        check_bounds(self)
        t = self.threads
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
            raise ValueError(f"threads must be an integer >= 1 or None; got {self.threads!r}")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}")

    @property
    def on_gpu(self) -> bool:
        """True for a CUDA device."""
        return self.device.startswith("cuda")


class Graph(ABC):
    """One exported network, loaded in a runtime: named numpy arrays in, named numpy arrays out.

    Implementations are safe to call from several threads (each call uses its own inference request or
    the runtime's thread-safe session).

    Attributes:
        input_names: the graph's inputs, in order.
        output_names: the graph's outputs, in order.
        settings: the (resolved) settings it was loaded with (:func:`load_graph` sets them), or None.
    """

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    #: What it was loaded with (set by :func:`load_graph`; what a stage's ``accel_state`` reports).
    settings: RuntimeSettings | None = None

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph.

        Args:
            feeds: every input by name (dtypes and shapes as the export declares them).

        Returns:
            Every output by name, as arrays this call owns.
        """


class Runtime(ABC):
    """A way to run exported graphs.

    Attributes:
        name: the runtime's key in :data:`RUNTIMES`.
        runs_onnx: False for ``torch`` (the family's eager modules run instead of a graph).
    """

    name: str
    runs_onnx: bool = True

    @abstractmethod
    def available(self, device: str) -> tuple[bool, str]:
        """Whether this runtime can run on ``device`` here (library importable, device present), and why
        not (an install hint) when it cannot."""

    @abstractmethod
    def precisions(self, device: str, cpu_flags: frozenset[str]) -> dict[str, str]:
        """The precisions this runtime runs natively on ``device``, each with "" or, for one it cannot,
        why: ``{"fp32": "", "bf16": "no AVX-512 BF16 or AMX", ...}`` (every key of :data:`PRECISIONS`)."""

    def load(self, onnx_path: str, settings: RuntimeSettings) -> Graph:
        """The graph at ``onnx_path`` (an ``.onnx`` file, read by the runtime library) ready to run with
        ``settings`` (already resolved: :func:`resolve`).

        Raises:
            RuntimeError: the runtime cannot load or compile the graph.
        """
        raise NotImplementedError(f"runtime {self.name!r} runs no exported graphs")


class TorchRuntime(Runtime):
    """Eager PyTorch: the family's own modules run (with :mod:`models.accel`'s autocast / compile)."""

    name = "torch"
    runs_onnx = False

    def available(self, device: str) -> tuple[bool, str]:
        """Always on CPU; CUDA when torch sees a GPU."""
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                return False, "torch sees no CUDA device"
        return True, ""

    def precisions(self, device: str, cpu_flags: frozenset[str]) -> dict[str, str]:
        """fp32 always; bf16 natively on CPUs with :data:`NATIVE_BF16_FLAGS` and on GPUs; no fp16 on CPU."""
        if device.startswith("cuda"):
            return {"fp32": "", "bf16": "", "fp16": ""}
        return {
            "fp32": "",
            "bf16": "" if native_bf16(cpu_flags) else "this CPU has no AVX-512 BF16 or AMX (bf16 would be emulated)",
            "fp16": "fp16 autocast is not used on CPU",
        }


def native_bf16(cpu_flags: Iterable[str]) -> bool:
    """True when the CPU runs bf16 natively (any of :data:`NATIVE_BF16_FLAGS` in its flags)."""
    flags = set(cpu_flags)
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def native_fp16(cpu_flags: Iterable[str]) -> bool:
    """True when the CPU runs fp16 natively (any of :data:`NATIVE_FP16_FLAGS` in its flags)."""
    flags = set(cpu_flags)
    return any(f in flags for f in NATIVE_FP16_FLAGS)


_INSTANCES: dict[str, Runtime] = {}


def get_runtime(name: str) -> Runtime:
    """The :class:`Runtime` named ``name`` (its module imported on first use).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    from models.registry import registered_instance

    return registered_instance(RUNTIMES, _INSTANCES, name, "runtime")


def resolve(
    settings: RuntimeSettings,
    cpu_flags: Iterable[str],
    supported: Iterable[str] = tuple(RUNTIMES),
    on_fallback: Callable[[str], None] | None = None,
    what: str = "stage",
) -> RuntimeSettings:
    """What will run of what ``settings`` ask for, falling back where it cannot.

    In order: a runtime the family cannot export to (not in ``supported``), or one not available here,
    falls back to ``torch``; a precision the (resulting) runtime does not run natively on this device falls
    back to ``fp32``. Each fallback calls ``on_fallback`` once with a one-line message naming ``what``.

    Args:
        settings: what is asked for.
        cpu_flags: the CPU's flags (``/proc/cpuinfo``), e.g. ``{"avx2", "avx512_bf16"}``.
        supported: the runtimes the family's graphs can run on.
        on_fallback: receives each fallback message.
        what: the stage's name in the messages, e.g. ``"sam2.1_hiera_tiny encoder"``.

    Returns:
        The settings in force (same device, threads and cache_dir).
    """
    say = on_fallback or (lambda message: None)
    flags = frozenset(cpu_flags)
    resolved = settings
    if settings.runtime not in set(supported):
        say(f"{what}: runtime {settings.runtime!r} is not available for this model family; running torch")
        resolved = replace(resolved, runtime="torch")
    else:
        ok, why = get_runtime(settings.runtime).available(settings.device)
        if not ok:
            say(f"{what}: runtime {settings.runtime!r} is not available ({why}); running torch")
            resolved = replace(resolved, runtime="torch")
    if resolved.precision != "fp32":
        why = get_runtime(resolved.runtime).precisions(resolved.device, flags).get(resolved.precision, "unknown")
        if why:
            say(f"{what}: {resolved.precision} requested on {resolved.runtime} but {why}; running fp32")
            resolved = replace(resolved, precision="fp32")
    return resolved


def load_graph(onnx_path: str, settings: RuntimeSettings) -> Graph:
    """:meth:`Runtime.load` of ``settings.runtime`` (settings already resolved by :func:`resolve`), with
    :attr:`Graph.settings` set to ``settings``.

    Raises:
        ValueError: ``settings.runtime`` is ``torch`` (no graph to load) or unknown.
        RuntimeError: the runtime could not load the graph.
    """
    runtime = get_runtime(settings.runtime)
    if not runtime.runs_onnx:
        raise ValueError(f"runtime {settings.runtime!r} runs the family's own modules, not an exported graph")
    graph = runtime.load(onnx_path, settings)
    graph.settings = settings
    return graph


def check_graph_io(graph: Graph, inputs: Iterable[str], outputs: Iterable[str], what: str, how: str) -> None:
    """Refuse a graph that lacks an input or output a stage feeds or reads.

    Args:
        graph: the loaded graph.
        inputs, outputs: the names the stage needs.
        what: the stage, e.g. ``"SAM 2 decoder"``.
        how: how to make a graph that fits, e.g. ``"Sam2Family.export_onnx"``.

    Raises:
        ValueError: naming the missing names, those needed, and ``how``.
    """
    inputs, outputs = list(inputs), list(outputs)
    missing = [n for n in inputs if n not in graph.input_names] + [n for n in outputs if n not in graph.output_names]
    if missing:
        raise ValueError(
            f"the {what} graph lacks {', '.join(missing)}; samgraph's {what} needs inputs {', '.join(inputs)} "
            f"and outputs {', '.join(outputs)} (export it with {how})"
        )


def graph_state(graph: Graph) -> dict:
    """``accel_state`` of a stage run by ``graph``: the keys of :meth:`models.accel.AcceleratedCall.state`
    (``compiler`` is the runtime's name) plus ``runtime``; the runtime and precision come from the graph's
    ``settings`` (set by :func:`load_graph`), else the graph's class name and fp32."""
    settings = graph.settings
    runtime = settings.runtime if settings is not None else type(graph).__name__
    precision = settings.precision if settings is not None else "fp32"
    return {
        "runtime": runtime,
        "precision": precision,
        "compiler": runtime,
        "requested": {"runtime": runtime, "precision": precision},
        "fallbacks": [],
    }
