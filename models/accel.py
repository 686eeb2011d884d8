"""Optional speed-ups of a model's forward pass: bf16 autocast, ``torch.compile``, torch-tensorrt.

:func:`accelerate` wraps a callable (a module or a bound ``forward``) so that it runs under
``torch.autocast(device_type, dtype=torch.bfloat16)`` when bf16 is in force, through a compiled version
when compilation is in force, and falls back where a speed-up cannot be had, so the service keeps working:

* bf16 on a device without bf16 support -> fp32;
* ``tensorrt`` without an importable ``torch_tensorrt`` or without CUDA -> ``torch.compile`` if that was
  asked for too, else eager;
* ``torch.compile`` raising when the wrapper is built (unknown backend) -> eager;
* a compiled call raising (no C compiler, an op the backend cannot handle, a TensorRT build failure) ->
  the call is re-run eagerly; when the eager run succeeds the wrapper stays eager from then on (when it
  fails too, the input was at fault: its error is raised and the compiled version kept).

Each fallback is reported once through ``on_fallback(message)``; the caller logs it (this module does
no I/O). :meth:`AcceleratedCall.state` says what is in force. ``torch.compile`` is lazy: the first call
(per input shape) compiles, so callers warm up with a dummy input at start-up.

Pure torch: ``torch_tensorrt`` is imported only when asked for.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from models.settings import bounded, check_bounds

PRECISIONS = ("fp32", "bf16")
#: ``torch.compile`` modes (None: torch's default).
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: The dynamo backend torch-tensorrt registers when imported.
TENSORRT_BACKEND = "torch_tensorrt"


@dataclass(frozen=True)
class AccelSettings:
    """What to speed a forward pass up with (what is actually in force may be less; see :func:`accelerate`).

    Attributes:
        precision: ``"fp32"``, or ``"bf16"`` for ``torch.autocast(device_type, dtype=torch.bfloat16)``
            around the call (weights stay fp32; outputs may be bf16).
        compile: ``torch.compile`` the call.
        compile_mode: ``torch.compile``'s ``mode`` (one of :data:`COMPILE_MODES`).
        compile_backend: ``torch.compile``'s ``backend``: a registered name (``"inductor"``, torch's
            default, needs a C compiler on CPU and Triton on GPU) or a backend callable.
        tensorrt: compile with torch-tensorrt's ``torch.compile`` backend (CUDA and the ``tensorrt`` extra
            needed); takes precedence over ``compile``.
    """

    precision: str = bounded("fp32", choices=PRECISIONS)
    compile: bool = False
    compile_mode: str | None = bounded(None, choices=COMPILE_MODES)
    compile_backend: str | Callable = bounded("inductor", min_length=1)
    tensorrt: bool = False

    def __post_init__(self) -> None:
        check_bounds(self)
        if not self.compile_backend:
            raise ValueError("compile_backend must be a non-empty backend name, e.g. 'inductor'")

    @property
    def is_default(self) -> bool:
        """True when nothing is asked for beyond plain fp32 eager execution."""
        return self.precision == "fp32" and not self.compile and not self.tensorrt


def bf16_support(device: str | torch.device) -> tuple[bool, str]:
    """Whether bf16 autocast runs on ``device``, and why not.

    CPU autocast supports bf16 everywhere (fast only with AVX512-BF16 or AMX); CUDA needs compute
    capability 8.0+ (``torch.cuda.is_bf16_supported``). Other device types are not tried.

    Returns:
        (supported, reason when not supported else "").
    """
    device = torch.device(device)
    if device.type == "cpu":
        return True, ""
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, ""
        return False, f"{device} has no bf16 support (torch.cuda.is_bf16_supported() is False)"
    return False, f"bf16 autocast is not supported here on device type {device.type!r}"


def tensorrt_support(device: str | torch.device) -> tuple[bool, str]:
    """Whether torch-tensorrt can compile for ``device``: ``torch_tensorrt`` importable and a CUDA device.

    Importing ``torch_tensorrt`` registers its ``torch.compile`` backend.

    Returns:
        (supported, reason when not supported else "").
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False, f"TensorRT needs a CUDA device; this stage runs on {device}"
    try:
        import torch_tensorrt  # noqa: F401  (registers the "torch_tensorrt" dynamo backend)
    except Exception as e:  # ImportError, or a broken install (missing libnvinfer)
        return False, (
            f"torch_tensorrt is not importable ({type(e).__name__}: {e}); "
            "install the extra: pip install -e '.[tensorrt]'"
        )
    return True, ""


def _backend_name(backend: str | Callable) -> str:
    return backend if isinstance(backend, str) else getattr(backend, "__name__", repr(backend))


def _short(e: BaseException, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AcceleratedCall:
    """A callable running ``fn`` with the speed-ups in force; see the module docstring.

    Args:
        fn: the eager callable (a module or a bound method), e.g. ``model.forward_image``.
        device: where ``fn``'s parameters live (decides autocast's device type and what is supported).
        settings: what is asked for.
        on_fallback: called once with a one-line message for each speed-up given up.
        name: what ``fn`` is, for the messages (e.g. ``"image encoder"``).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        device: str | torch.device,
        settings: AccelSettings,
        on_fallback: Callable[[str], None] | None = None,
        name: str = "forward",
    ) -> None:
        self.settings = settings
        self.name = name
        self._eager = fn
        self._device_type = torch.device(device).type
        self._on_fallback = on_fallback or (lambda message: None)
        self.fallbacks: list[str] = []
        self.calls = 0
        self._lock = threading.Lock()

        self.precision = "fp32"
        if settings.precision == "bf16":
            ok, why = bf16_support(device)
            if ok:
                self.precision = "bf16"
            else:
                self._fall_back(f"bf16 requested but {why}; running fp32")

        # Compiled candidates, best first; the first one that builds is used.
        candidates: list[tuple[str, dict]] = []
        if settings.tensorrt:
            ok, why = tensorrt_support(device)
            if ok:
                candidates.append((TENSORRT_BACKEND, {"backend": TENSORRT_BACKEND, "dynamic": False}))
            else:
                then = f"torch.compile ({_backend_name(settings.compile_backend)})" if settings.compile else "eager"
                self._fall_back(f"TensorRT requested but {why}; using {then}")
        if settings.compile:
            kwargs: dict = {"backend": settings.compile_backend}
            if settings.compile_mode is not None:
                kwargs["mode"] = settings.compile_mode
            candidates.append((_backend_name(settings.compile_backend), kwargs))
        # (backend, compiled callable), best first: calls go to the first; when it fails it is dropped.
        self._chain: list[tuple[str, Callable[..., Any]]] = []
        for i, (backend, kwargs) in enumerate(candidates):
            try:
                self._chain.append((backend, torch.compile(fn, **kwargs)))
            except Exception as e:
                then = f"torch.compile ({candidates[i + 1][0]})" if i + 1 < len(candidates) else "eager"
                self._fall_back(f"torch.compile(backend={backend!r}) failed ({_short(e)}); using {then}")

    @property
    def compiler(self) -> str:
        """The backend calls go to now (``"eager"``: none)."""
        return self._chain[0][0] if self._chain else "eager"

    def _fall_back(self, message: str) -> None:
        message = f"{self.name}: {message}"
        self.fallbacks.append(message)
        self._on_fallback(message)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self._device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        with self._autocast():
            if not self._chain:
                return self._eager(*args, **kwargs)
            head = self._chain[0]
            try:
                return head[1](*args, **kwargs)
            except Exception as compiled_error:
                out = self._eager(*args, **kwargs)  # raises when the input itself is at fault
                with self._lock:  # concurrent failures of the same head drop it once
                    if self._chain and self._chain[0] is head:
                        self._chain.pop(0)
                        if self._chain:
                            then = f"torch.compile ({self.compiler}) from the next call"
                        else:
                            then = "eager from now on"
                        self._fall_back(f"compiled call ({head[0]}) failed ({_short(compiled_error)}); using {then}")
                return out

    def state(self) -> dict:
        """What is in force: ``{"precision": "fp32"|"bf16", "compiler": "eager"|backend name,
        "requested": AccelSettings fields, "fallbacks": [messages]}``."""
        s = self.settings
        return {
            "precision": self.precision,
            "compiler": self.compiler,
            "requested": {
                "precision": s.precision,
                "compile": s.compile,
                "compile_mode": s.compile_mode,
                "compile_backend": _backend_name(s.compile_backend),
                "tensorrt": s.tensorrt,
            },
            "fallbacks": list(self.fallbacks),
        }


def accelerate(
    fn: Callable[..., Any],
    device: str | torch.device,
    settings: AccelSettings | None = None,
    on_fallback: Callable[[str], None] | None = None,
    name: str = "forward",
) -> AcceleratedCall:
    """Wrap ``fn`` with the speed-ups of ``settings`` that work on ``device``; see :class:`AcceleratedCall`."""
    return AcceleratedCall(fn, device, settings or AccelSettings(), on_fallback, name)
