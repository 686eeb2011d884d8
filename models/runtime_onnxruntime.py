"""ONNX Runtime (``onnxruntime``), CPU execution provider, fp32: the ``onnxruntime`` runtime of
:mod:`models.runtime`.

Measured on the project's 2-core machines, SAM 2.1 tiny's image encoder: 1.17x-1.55x eager torch fp32 with
features within 1e-5 (``benchmarks/runtime_encoders.py``). ONNX Runtime has no bf16 or fp16 kernels worth
using on CPU, so those precisions fall back to fp32 (:func:`models.runtime.resolve`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.runtime import PRECISIONS, Graph, Runtime, RuntimeSettings


class OnnxRuntimeGraph(Graph):
    """An ``onnxruntime.InferenceSession`` (thread-safe ``run``).

    Args:
        session: the loaded session.
    """

    def __init__(self, session) -> None:
        self.session = session
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :meth:`models.runtime.Graph.run`."""
        outs = self.session.run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return dict(zip(self.output_names, outs))


def session_options(threads: int | None):
    """``onnxruntime.SessionOptions``: all graph optimisations, ``threads`` intra-op threads, one inter-op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its shape-merge warnings on SAM 2's Hiera are harmless
    return options


class OnnxRuntime(Runtime):
    """ONNX Runtime on CPU."""

    name = "onnxruntime"

    def available(self, device: str) -> tuple[bool, str]:
        """``onnxruntime`` importable; CPU only (a GPU runs the ``tensorrt`` runtime)."""
        if device != "cpu":
            return False, "the onnxruntime runtime runs on CPU; use tensorrt on a GPU"
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            return False, f"onnxruntime is not importable ({e}); pip install onnxruntime"
        return True, ""

    def precisions(self, device: str, cpu_flags: frozenset[str]) -> dict[str, str]:
        """fp32 only."""
        return {p: "" if p == "fp32" else "ONNX Runtime's CPU provider runs fp32 only" for p in PRECISIONS}

    def load(self, onnx_path: str, settings: RuntimeSettings) -> Graph:
        """An :class:`OnnxRuntimeGraph` of ``onnx_path`` on the CPU provider with ``settings.threads``.

        Raises:
            RuntimeError: ONNX Runtime could not load the file (its message included).
        """
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(
                onnx_path, session_options(settings.threads), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise RuntimeError(f"onnxruntime could not load {onnx_path}: {type(e).__name__}: {e}") from e
        return OnnxRuntimeGraph(session)
