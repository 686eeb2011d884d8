"""TensorRT through ONNX Runtime's TensorRT execution provider (``onnxruntime-gpu`` built with TensorRT):
the ``tensorrt`` runtime of :mod:`models.runtime`.

Chosen over torch-tensorrt because it builds engines from the same ONNX export the CPU runtimes load (one
export, one parity test) and it is released for each CUDA/TensorRT pair independently of the torch build;
torch-tensorrt must match the installed torch exactly. Engines are built on first use per input shape and
kept in ``cache_dir`` (``trt_engine_cache_path``); nodes TensorRT cannot take run on the CUDA provider.
Never run in CI (no GPU there): ``benchmarks/gpu_check.sh`` runs its parity tests on a GPU machine.
"""

from __future__ import annotations

from models.runtime import PRECISIONS, Graph, Runtime, RuntimeSettings
from models.runtime_onnxruntime import OnnxRuntimeGraph, session_options


class TensorRtRuntime(Runtime):
    """TensorRT (ONNX Runtime's TensorRT provider, CUDA provider behind it)."""

    name = "tensorrt"

    def available(self, device: str) -> tuple[bool, str]:
        """A CUDA device, and ONNX Runtime with the TensorRT provider."""
        if not device.startswith("cuda"):
            return False, f"TensorRT needs a CUDA device; this stage runs on {device}"
        import torch

        if not torch.cuda.is_available():
            return False, "TensorRT needs a CUDA device; none is visible here"
        try:
            import onnxruntime as ort
        except ImportError as e:
            return False, f"onnxruntime is not importable ({e}); pip install -e '.[tensorrt]'"
        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            return False, (
                "this onnxruntime has no TensorrtExecutionProvider (install onnxruntime-gpu and TensorRT: "
                "pip install -e '.[tensorrt]')"
            )
        return True, ""

    def precisions(self, device: str, cpu_flags: frozenset[str]) -> dict[str, str]:
        """fp32 and fp16; no bf16 (TensorRT's bf16 needs strongly typed networks)."""
        return {p: "" if p != "bf16" else "the TensorRT provider builds fp32 or fp16 engines" for p in PRECISIONS}

    def load(self, onnx_path: str, settings: RuntimeSettings) -> Graph:
        """A session on the TensorRT provider (fp16 engines when ``settings.precision`` is fp16), the CUDA
        provider for what TensorRT cannot take; engines cached in ``settings.cache_dir``.

        Raises:
            RuntimeError: the session could not be created.
        """
        import onnxruntime as ort

        device_id = int(settings.device.split(":")[1]) if ":" in settings.device else 0
        trt = {"device_id": device_id, "trt_fp16_enable": settings.precision == "fp16"}
        if settings.cache_dir is not None:
            trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=settings.cache_dir)
        providers = [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", {"device_id": device_id})]
        try:
            session = ort.InferenceSession(onnx_path, session_options(settings.threads), providers=providers)
        except Exception as e:
            raise RuntimeError(f"TensorRT could not load {onnx_path}: {type(e).__name__}: {e}") from e
        return OnnxRuntimeGraph(session)
