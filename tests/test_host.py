"""nano_core.host: freed large buffers are reused without page faults (Linux glibc); an OpenBLAS preload is found
and kept away from PyTorch processes."""
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, resource, sys
from nano_core.host import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = 64 << 20  # larger than glibc's biggest mmap threshold: served by mmap unless tuned
def touch_and_free():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
touch_and_free()  # the first touch always faults; the second is what a training step's reuse costs
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, count = out.split()
    return applied, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only (a no-op elsewhere)")
def test_reused_64mb_buffer_is_not_page_faulted_again_after_keep_freed_memory():
    _, default_faults = faults("default")
    applied, tuned_faults = faults("tuned")
    assert applied == "True"
    pages = (64 << 20) // 4096
    assert default_faults > pages // 2      # glibc's default: every page of the buffer faults again
    assert tuned_faults < pages // 20       # tuned: the heap keeps the memory, the second pass reuses it


def test_openblas_preload_is_found_and_kept_away_from_child_processes(monkeypatch):
    from nano_core.host import preloaded_openblas, without_openblas_preload
    preload = "/opt/x/libfoo.so:/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
    monkeypatch.setenv("LD_PRELOAD", preload)
    assert preloaded_openblas() == "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
    probe = [sys.executable, "-c", "import os; print(os.environ.get('LD_PRELOAD'))"]
    with without_openblas_preload():
        # a process started here (a PyTorch worker of benchmarks/compare.py) keeps only the other preload
        child = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
        assert child == "/opt/x/libfoo.so"
    assert os.environ["LD_PRELOAD"] == preload  # restored for what comes after (the MLX workers)

    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libopenblas.so.0")
    with without_openblas_preload():
        assert "LD_PRELOAD" not in os.environ
    assert os.environ["LD_PRELOAD"] == "/usr/lib/libopenblas.so.0"

    monkeypatch.delenv("LD_PRELOAD")
    assert preloaded_openblas() is None
    with without_openblas_preload():
        assert "LD_PRELOAD" not in os.environ


def test_torch_training_warns_about_an_openblas_preload(monkeypatch):
    from nano_torch.train import blas_notice
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert blas_notice() is None
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libopenblas.so.0")
    assert "LD_PRELOAD=/usr/lib/libopenblas.so.0" in blas_notice() and "nano_mlx" in blas_notice()
