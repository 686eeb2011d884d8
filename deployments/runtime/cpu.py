"""What this machine's CPU can do: its model name and flags, read from ``/proc/cpuinfo`` (Linux).

The flags decide which precision a stage runs (:func:`models.runtime.resolve`: bf16 is native only with
AVX-512 BF16 or AMX); ``/readyz`` and the benchmark results report the ones of
:data:`CPU_FLAGS_OF_INTEREST` that are present.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: The /proc/cpuinfo flags that decide CPU speed-ups (fused multiply-add, AVX2, AVX-512 with bf16/fp16/VNNI, AMX).
CPU_FLAGS_OF_INTEREST = (
    "fma",
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_fp16",
    "amx_int8",
)
CPUINFO = Path("/proc/cpuinfo")


def cpu_info(path: str | Path = CPUINFO) -> dict:
    """``{"model": str, "flags": frozenset[str]}`` of the CPU described by ``path`` (``/proc/cpuinfo``): its
    model name and every flag of its first processor; the platform's name and no flags where the file cannot
    be read (not Linux)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": frozenset()}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    return {"model": fields.get("model name", platform.machine()), "flags": frozenset(fields.get("flags", "").split())}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (:func:`cpu_info` of ``/proc/cpuinfo``; read once per process)."""
    return cpu_info()["flags"]


def flags_of_interest(flags: frozenset[str] | set[str]) -> list[str]:
    """The flags of :data:`CPU_FLAGS_OF_INTEREST` present in ``flags``, in that order (what ``/readyz`` shows)."""
    return [f for f in CPU_FLAGS_OF_INTEREST if f in flags]
