"""Processes and their memory, for the benchmarks: resident and peak resident sets, process trees,
and the processes of a local Ray cluster (its raylet, the GCS address, Serve replicas by title).

Built on psutil. psutil (7.2) gives no peak resident set on Linux: ``memory_info()`` has rss, vms,
shared, text, lib, data and dirty, ``memory_full_info()`` adds uss, pss and swap, and only Windows has
a peak (``peak_wset``). :func:`peak_rss_bytes` therefore reads the one field psutil lacks, ``VmHWM``,
from ``/proc/<pid>/status`` (Linux only); everything else here goes through psutil.
"""

from __future__ import annotations

import re
from pathlib import Path

import psutil

MIB = 2**20


def rss_bytes(pid: int) -> int:
    """Resident set of ``pid`` now, in bytes (psutil ``memory_info().rss``).

    Raises:
        psutil.NoSuchProcess: ``pid`` has exited.
    """
    return psutil.Process(pid).memory_info().rss


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set (``VmHWM``, the high-water mark) of ``pid`` since it started, in bytes.

    Read from ``/proc/<pid>/status``: psutil exposes no peak resident set on Linux (see the module
    docstring). Linux only.

    Raises:
        psutil.NoSuchProcess: ``pid`` has exited (or the kernel shows no ``VmHWM`` for it).
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as e:
        raise psutil.NoSuchProcess(pid) from e
    match = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.MULTILINE)
    if match is None:
        raise psutil.NoSuchProcess(pid, msg="no VmHWM in /proc/<pid>/status")
    return int(match.group(1)) * 1024


def memory_mib(pid: int) -> dict:
    """``{"pid", "peak_mib" (VmHWM), "rss_mib"}`` of ``pid``, in MiB.

    Raises:
        psutil.NoSuchProcess: ``pid`` has exited.
    """
    return {"pid": pid, "peak_mib": peak_rss_bytes(pid) / MIB, "rss_mib": rss_bytes(pid) / MIB}


def tree_rss_bytes(root: int) -> int:
    """Sum of the resident sets of ``root`` and all its descendants, in bytes (0 once ``root`` is gone).

    Pages shared between processes (Ray's object store, say) count once per process that maps them,
    so the sum is an upper bound on the tree's memory.
    """
    try:
        procs = [psutil.Process(root)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def title(proc: psutil.Process) -> str:
    """The process's command line as one string ('' once it has exited or is hidden from us)."""
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def _replica_title(app: str, deployment: str) -> re.Pattern:
    # Ray titles a replica's worker ``ray::ServeReplica:{app}:{deployment}``, with the running method
    # appended after a dot.
    return re.compile(rf"ServeReplica:{re.escape(app)}:{re.escape(deployment)}(\.|\s|$)")


def titled(pattern: re.Pattern, among: list[psutil.Process] | None = None) -> list[int]:
    """Sorted pids of the processes (``among``, default all) whose command line matches ``pattern``."""
    procs = among if among is not None else psutil.process_iter()
    return sorted(p.pid for p in procs if pattern.search(title(p)))


def replica_memory(app: str, deployment: str) -> list[dict]:
    """:func:`memory_mib` of every live process titled as a replica of ``deployment`` in ``app``."""
    out = []
    for pid in titled(_replica_title(app, deployment)):
        try:
            out.append(memory_mib(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def _raylet(serve_pid: int) -> psutil.Process:
    for child in psutil.Process(serve_pid).children():
        if title(child).split(" ", 1)[0].endswith("/raylet"):
            return child
    raise RuntimeError(f"no raylet under `serve run` pid {serve_pid}")


def gcs_address(serve_pid: int) -> str:
    """``ip:port`` of the GCS of the local cluster a `serve run` started (read off its raylet's
    command line), for ``ray.init(address=...)``.

    Raises:
        RuntimeError: no raylet under ``serve_pid``, or it has no ``--gcs-address``.
    """
    for arg in _raylet(serve_pid).cmdline():
        if arg.startswith("--gcs-address="):
            return arg.split("=", 1)[1]
    raise RuntimeError("the raylet has no --gcs-address")


def replica_pids(serve_pid: int, deployment: str, app: str = "samgraph") -> list[int]:
    """PIDs of the live worker processes of ``deployment``'s replicas in the local cluster that the
    `serve run` process ``serve_pid`` started (children of its raylet, found by their title)."""
    return titled(_replica_title(app, deployment), _raylet(serve_pid).children())
