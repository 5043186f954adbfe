"""Tuning of the host process that both training loops share (no framework imported here).

preloaded_openblas() / without_openblas_preload(): MLX's Linux CPU wheel needs an OpenBLAS preloaded (LD_PRELOAD)
for fast matmuls, but the same preload inside a PyTorch process makes PyTorch's CPU kernels call it too and its
thread pool compete with PyTorch's: the comparison config's fp32 step measured 3.5x slower (930 vs 3,260 tok/s).

keep_freed_memory(): a training step allocates and frees the same large buffers every step -- logits, attention
scores, activations, gradients. glibc's malloc serves each block above its mmap threshold (at most 32 MiB) with
fresh pages from the kernel and hands it back with munmap when it is freed, so the next step page-faults and zeroes
all of it again. On the comparison config (PyTorch, bf16, 2 cores) that was ~37k minor page faults and ~0.1 s of
CPU time in the kernel per step; keeping freed memory in the heap made the step 7% faster with the same peak RSS.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

# mallopt() parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse: no mmap for large blocks, no trimming of the heap top.

    The process's resident size then stays at its high-water mark instead of dropping between steps -- a training
    process is at that mark every step anyway. Returns True when applied; False (doing nothing) off Linux or on a
    C library without mallopt (musl). macOS's allocator keeps its own caches and needs none of this.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


def preloaded_openblas() -> str | None:
    """The OpenBLAS library named in LD_PRELOAD, or None."""
    for lib in os.environ.get("LD_PRELOAD", "").replace(":", " ").split():
        if "openblas" in Path(lib).name:
            return lib
    return None


@contextlib.contextmanager
def without_openblas_preload():
    """LD_PRELOAD without its OpenBLAS entries while the block runs: child processes started inside it (e.g. a
    PyTorch worker next to an MLX one) do not inherit the preload. The variable is restored afterwards."""
    old = os.environ.get("LD_PRELOAD")
    if old is None or preloaded_openblas() is None:
        yield
        return
    kept = [lib for lib in old.replace(":", " ").split() if "openblas" not in Path(lib).name]
    if kept:
        os.environ["LD_PRELOAD"] = " ".join(kept)
    else:
        del os.environ["LD_PRELOAD"]
    try:
        yield
    finally:
        os.environ["LD_PRELOAD"] = old


# --- process memory (the CPU backends' peak-memory figure) ---------------------------------------------------
def peak_rss() -> tuple[int, str]:
    """(bytes, method): the process's peak resident set since start or the last reset_peak_rss(). Linux reads VmHWM
    from /proc/self/status (resettable); elsewhere getrusage's lifetime maximum (KiB on Linux, bytes on macOS)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "process peak RSS (VmHWM)"
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "process lifetime peak RSS (ru_maxrss)"


def reset_peak_rss() -> bool:
    """Start a new VmHWM peak (Linux >= 4.0: write 5 to /proc/self/clear_refs); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
