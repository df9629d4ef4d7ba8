"""Memory housekeeping between the points of a call, and what a record says of memory: the allocator's cache
emptied and the freed heap given back after each point; the peak device memory of a point (or the process's
resident memory on CPU)."""

from __future__ import annotations

import ctypes
import gc
import sys

import psutil
import torch

_GIB = 1024**3


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _trim_heap()


def _trim_heap() -> None:
    """Give the freed heap back to the system (glibc's malloc_trim). glibc keeps what a point freed; the
    next point, with other tensor sizes, cannot always reuse it, and the resident memory of a block then
    grows. Measured on the demo (benchmarks/block_memory.py): 2.36 GiB resident between points without,
    1.07 GiB with. A no-op off Linux and where the C library has no malloc_trim (musl)."""
    if sys.platform != "linux":
        return
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the symbols already loaded: libc's
    if malloc_trim is not None:
        malloc_trim(0)


def measure_memory(device: torch.device | None) -> dict[str, float]:
    """Peak device memory of this point (GPU), or the process's resident memory (CPU)."""
    rss = psutil.Process().memory_info().rss / _GIB
    memory = {"process_rss_gib": rss}
    if device is not None and device.type == "cuda":
        memory["peak_gib"] = torch.cuda.max_memory_allocated(device) / _GIB
    else:
        import resource

        # ru_maxrss is the high-water mark of the whole process (kB on Linux), not of this point.
        memory["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB
    return memory
