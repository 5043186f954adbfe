"""nano_core.host: freed large buffers are reused without page faults (Linux glibc); an OpenBLAS preload is found
and kept away from PyTorch processes; the machine probes of the benchmark reports (no framework imported)."""
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


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc malloc tuning is Linux-only (a no-op elsewhere)")
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


def test_torch_backend_warns_about_an_openblas_preload(monkeypatch):
    from nano_torch.backend import Backend
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert Backend(device="cpu").notices() == []
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libopenblas.so.0")
    (notice,) = Backend(device="cpu").notices()
    assert "LD_PRELOAD=/usr/lib/libopenblas.so.0" in notice and "nano_mlx" in notice


OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
BLAS_PROBE = "import numpy; from nano_core.host import loaded_blas; print(loaded_blas())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_loaded_blas_sees_a_preloaded_openblas_but_not_numpys_own():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    plain = subprocess.run([sys.executable, "-c", BLAS_PROBE], capture_output=True, text=True, check=True, env=env)
    assert not plain.stdout.startswith("OpenBLAS")  # numpy's scipy_openblas is not a BLAS MLX can call
    if not os.path.exists(OPENBLAS):
        pytest.skip(f"no {OPENBLAS} here")
    preloaded = subprocess.run([sys.executable, "-c", BLAS_PROBE], capture_output=True, text=True, check=True,
                               env={**env, "LD_PRELOAD": OPENBLAS})
    assert preloaded.stdout.startswith("OpenBLAS (") and "libopenblas" in preloaded.stdout


def test_build_config_summary_keeps_the_blas_lines():
    from nano_core.host import build_config_summary
    text = """PyTorch built with:
  - GCC 11.2
  - Intel(R) oneAPI Math Kernel Library Version 2024.2
  - Intel(R) MKL-DNN v3.12.0
  - OpenMP 201511 (a.k.a. OpenMP 4.5)
  - CPU capability usage: AVX512
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl, TORCH_VERSION=2.13.0,
"""
    assert build_config_summary(text) == ("BLAS_INFO=mkl; LAPACK_INFO=mkl; Intel(R) oneAPI Math Kernel Library "
                                          "Version 2024.2; Intel(R) MKL-DNN v3.12.0; OpenMP 201511 (a.k.a. OpenMP "
                                          "4.5); CPU capability usage: AVX512")


def test_machine_describes_this_host(monkeypatch):
    from nano_core.host import machine
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    m = machine()
    assert set(m) == {"os", "python", "cpu", "gpu_cores", "cpu_count", "ld_preload", "omp_wait_policy"}
    assert m["cpu"] and m["cpu_count"] == os.cpu_count() and m["omp_wait_policy"] == "PASSIVE"
    probe = ("import sys, nano_core.host as h; h.machine(), h.numpy_blas(), h.loaded_blas(); "
             "print('torch' in sys.modules, 'mlx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
