"""OpenVINO on CPU (or an Intel GPU): the ``openvino`` runtime of :mod:`models.runtime`.

Measured on the project's 2-core machines, SAM 2.1 tiny's image encoder at fp32
(``INFERENCE_PRECISION_HINT=f32``): 1.6x-1.9x eager torch fp32, features within 1.2e-5; at bf16 (OpenVINO's
default on CPUs with AMX) 4.6x, features off by up to 0.6 (``benchmarks/runtime_encoders.py``).

Loading: OpenVINO's CPU plugin took about 80 s to compile SAM 2's encoder as ``torch.onnx.export`` writes it
(2 cores; the shape arithmetic of Hiera's window partitioning is left in the graph), and 0.3 s once ONNX
Runtime's basic graph optimisations (constant folding, redundant-node elimination: standard ONNX operators
in, standard ONNX operators out) have run over it, with the same features (within 4e-6). So :meth:`load`
first has ONNX Runtime write that optimised copy into a temporary directory, then reads it into OpenVINO;
the temporary copy is gone once the model is in memory. With ``cache_dir`` the compiled model is also kept
there (OpenVINO's ``CACHE_DIR``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.runtime import PRECISIONS, Graph, Runtime, RuntimeSettings, native_bf16, native_fp16

#: samgraph precision -> OpenVINO's ``INFERENCE_PRECISION_HINT``.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OpenVinoGraph(Graph):
    """An OpenVINO ``CompiledModel``; each :meth:`run` uses its own infer request (thread-safe).

    Args:
        compiled: the compiled model.
        names: the graph's (input names, output names) in order, the ONNX file's
            (:func:`onnx_io_names`); None: one name of each compiled input and output. Give them: after
            compilation a tensor may carry several names (those of the nodes fused with it, e.g.
            ``{"image_embeddings", "/neck/neck.3/Div_output_0"}``) and ``get_any_name`` may return any.

    Raises:
        ValueError: ``names`` do not name the compiled model's inputs and outputs.
    """

    def __init__(self, compiled, names: tuple[tuple[str, ...], tuple[str, ...]] | None = None) -> None:
        self.compiled = compiled
        ports = (compiled.inputs, compiled.outputs)
        if names is None:
            names = tuple(tuple(p.get_any_name() for p in group) for group in ports)  # type: ignore[assignment]
        for given, group in zip(names, ports):  # type: ignore[arg-type]
            if len(given) != len(group) or any(n not in p.get_names() for n, p in zip(given, group)):
                raise ValueError(f"names {names} do not name the inputs and outputs of the compiled model")
        self.input_names, self.output_names = (tuple(n) for n in names)  # type: ignore[misc]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :meth:`models.runtime.Graph.run`; outputs are copied out of the request's buffers."""
        request = self.compiled.create_infer_request()
        request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return {name: np.array(request.get_output_tensor(i).data) for i, name in enumerate(self.output_names)}


class OpenVinoRuntime(Runtime):
    """OpenVINO (ONNX Runtime, a dependency, prepares the graph: see the module docstring)."""

    name = "openvino"

    def available(self, device: str) -> tuple[bool, str]:
        """``openvino`` importable; CPU (NVIDIA GPUs run the ``tensorrt`` runtime)."""
        if device != "cpu":
            return False, "the openvino runtime runs on CPU here; use tensorrt on an NVIDIA GPU"
        try:
            import openvino  # noqa: F401
        except ImportError as e:
            return False, f"openvino is not importable ({e}); pip install openvino"
        return True, ""

    def precisions(self, device: str, cpu_flags: frozenset[str]) -> dict[str, str]:
        """fp32 always; bf16 with AVX-512 BF16 or AMX; fp16 with AVX-512 FP16 or AMX-FP16."""
        out = {p: "" for p in PRECISIONS}
        if not native_bf16(cpu_flags):
            out["bf16"] = "this CPU has no AVX-512 BF16 or AMX"
        if not native_fp16(cpu_flags):
            out["fp16"] = "this CPU has no AVX-512 FP16 or AMX-FP16"
        return out

    def load(self, onnx_path: str, settings: RuntimeSettings) -> Graph:
        """An :class:`OpenVinoGraph` of ``onnx_path`` compiled for the CPU with the precision hint of
        ``settings.precision``, ``settings.threads`` inference threads and the latency hint; the compiled
        model is cached in ``settings.cache_dir`` when given.

        Raises:
            RuntimeError: OpenVINO could not read or compile the file (its message included).
        """
        import tempfile

        import onnxruntime as ort
        import openvino as ov

        core = ov.Core()
        if settings.cache_dir is not None:
            core.set_property({"CACHE_DIR": settings.cache_dir})
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[settings.precision], "PERFORMANCE_HINT": "LATENCY"}
        if settings.threads is not None:
            config["INFERENCE_NUM_THREADS"] = settings.threads
        try:
            with tempfile.TemporaryDirectory(prefix="samgraph-openvino-") as tmp:
                options = ort.SessionOptions()
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                options.optimized_model_filepath = f"{tmp}/basic.onnx"
                options.log_severity_level = 3
                ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
                model = core.read_model(f"{tmp}/basic.onnx")
            compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # onnxruntime and openvino raise RuntimeError and their own types
            raise RuntimeError(f"openvino could not compile {onnx_path}: {type(e).__name__}: {e}") from e
        return OpenVinoGraph(compiled, onnx_io_names(onnx_path))


def onnx_io_names(onnx_path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of the ONNX graph at ``onnx_path``, in order, initializers left out
    (read by ``onnx``: a fraction of a second for SAM-sized graphs, far less than OpenVINO's conversion)."""
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return tuple(i.name for i in graph.input if i.name not in weights), tuple(o.name for o in graph.output)
