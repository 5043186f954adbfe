"""Tuning of the host process that both training loops share (no framework imported here).

use_openblas_for_mlx(): MLX's Linux CPU wheel (mlx-cpu) multiplies on the reference BLAS it bundles, many times
slower than OpenBLAS (figures: docs/benchmarks.md, "Host tuning"). LD_PRELOAD of an installed OpenBLAS puts it in
front, but the loader reads LD_PRELOAD only when a process starts, so the nano_mlx entry points call this first thing
under `if __name__ == "__main__":` and it runs the same command again, once, with the preload set (os.execv: same
pid, same stdin/stdout). The re-run process says so in one line, takes the entry back out of LD_PRELOAD (what it
starts -- git, a PyTorch worker -- does not inherit it) and carries on. NANO_OPENBLAS=0 keeps MLX's own BLAS.

preloaded_openblas() / without_openblas_preload(): the same preload inside a PyTorch process makes PyTorch's CPU
kernels call it too and its thread pool compete with PyTorch's, which slows the CPU step several-fold
(docs/benchmarks.md). nano_torch never preloads; these keep a preload away from PyTorch child processes.

keep_freed_memory(): a training step allocates and frees the same large buffers every step -- logits, attention
scores, activations, gradients. glibc's malloc serves each block above its mmap threshold (at most 32 MiB) with
fresh pages from the kernel and hands it back with munmap when it is freed, so the next step page-faults and zeroes
all of it again, in kernel time on every step; keeping freed memory in the heap removes that at the same peak RSS
(what it saves: docs/benchmarks.md).

peak_rss() / reset_peak_rss(): the process's peak resident memory, the CPU backends' peak-memory figure.

Machine probes for the benchmark reports (benchmarks/compare.py, step_speed.py): cpu_brand(), gpu_cores(),
loaded_blas() (the BLAS /proc/self/maps shows loaded in this process), build_config_summary() (of a build description a
framework hands in as text), numpy_blas(), machine(). Framework-specific facts (versions, thread counts) are read
by the caller in the framework's own process and passed as plain values; this module imports no framework.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import importlib.metadata
import os
import platform
import re
import subprocess
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


# --- OpenBLAS for MLX's CPU backend on Linux ----------------------------------------------------------------------
OPENBLAS_GLOBS = ("/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0", "/usr/lib/*-linux-gnu/libopenblas.so.0",
                  "/usr/lib64/libopenblas.so.0", "/usr/lib/libopenblas.so.0")  # Debian/Ubuntu, Fedora, Arch
OPENBLAS_ENV = "NANO_OPENBLAS"  # set by nano to the library it preloaded; 0 (or anything else) turns the re-run off


def installed_openblas() -> str | None:
    """The first OpenBLAS found where distributions install it (apt-get install libopenblas0-pthread), or None."""
    found = [p for g in OPENBLAS_GLOBS for p in sorted(glob.glob(g))]
    return found[0] if found else None


def mlx_bundles_reference_blas() -> bool:
    """True when the installed MLX is the Linux CPU wheel, which carries the reference BLAS (mlx_cpu.libs/libblas-*):
    read from the wheel's file list, without importing mlx."""
    try:
        files = importlib.metadata.distribution("mlx-cpu").files or []
    except importlib.metadata.PackageNotFoundError:
        return False
    return any(Path(str(f)).name.startswith("libblas") for f in files)


def mlx_would_use_cuda(argv: list[str]) -> bool:
    """MLX runs on a GPU on Linux only with its CUDA build (an mlx_cuda* distribution) and an NVIDIA device present,
    and not when the command asks for --device cpu."""
    if "cpu" in [a.partition("=")[2] for a in argv if a.startswith("--device=")] or \
            any(a == "--device" and b == "cpu" for a, b in zip(argv, argv[1:])):
        return False
    cuda_mlx = any(glob.glob(os.path.join(d or ".", "mlx_cuda*.dist-info")) for d in sys.path)
    return cuda_mlx and (os.path.exists("/dev/nvidia0") or bool(glob.glob("/proc/driver/nvidia/gpus/*")))


def openblas_to_preload(argv: list[str]) -> str | None:
    """The OpenBLAS to restart this MLX command with, or None: only on Linux, when MLX would run on its CPU backend
    with the bundled reference BLAS, an OpenBLAS is installed, none is loaded or preloaded already, and nano has not
    re-run this command before (NANO_OPENBLAS unset)."""
    if not sys.platform.startswith("linux") or OPENBLAS_ENV in os.environ or preloaded_openblas() is not None:
        return None
    libs = mapped_libraries()
    if libs is None or any(Path(p).name.startswith("libopenblas") for p in libs):
        return None
    if not mlx_bundles_reference_blas() or mlx_would_use_cuda(argv):
        return None
    return installed_openblas()


def use_openblas_for_mlx() -> None:
    """First thing in an MLX entry point run as a program (never on import): restart the command once with an
    installed OpenBLAS in LD_PRELOAD when openblas_to_preload() names one; in the restarted process, print one line
    saying what was preloaded and take it back out of LD_PRELOAD for child processes. Nothing happens on macOS, on a
    GPU, without an OpenBLAS (the backend's notice then says how to install one) or with NANO_OPENBLAS=0."""
    done = os.environ.get(OPENBLAS_ENV)
    if done is not None:
        if Path(done).is_absolute():  # we are the restarted process
            del os.environ[OPENBLAS_ENV]
            rest = [lib for lib in os.environ.get("LD_PRELOAD", "").replace(":", " ").split() if lib != done]
            if rest:
                os.environ["LD_PRELOAD"] = " ".join(rest)
            else:
                os.environ.pop("LD_PRELOAD", None)
            if os.path.realpath(done) in (mapped_libraries() or ()):
                print(f"notice: MLX's CPU backend uses OpenBLAS ({done}), preloaded by nano (NANO_OPENBLAS=0 keeps "
                      "MLX's own reference BLAS)", file=sys.stderr, flush=True)
        return
    argv = list(getattr(sys, "orig_argv", None) or [])[1:]
    lib = openblas_to_preload(argv)
    if lib is None or not sys.executable or not argv:
        return
    old = os.environ.get("LD_PRELOAD")
    env = {**os.environ, OPENBLAS_ENV: lib, "LD_PRELOAD": f"{lib} {old}" if old else lib}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv], env)
    except OSError:
        return  # could not restart: run on the reference BLAS (the backend's notice says so)


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


# --- what the machine is (benchmark reports) ------------------------------------------------------------------
def cpu_brand() -> str:
    """The CPU / SoC model string: sysctl on macOS, /proc/cpuinfo on Linux, platform.processor() elsewhere."""
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


FRAMEWORK_HINTS = {
    "torch": ("PyTorch >= 2.5", "pip install 'torch>=2.5'",
              "PyTorch has no wheel >= 2.5 for Intel Macs: train on an Apple-silicon Mac (python -m nano_mlx.train) "
              "or on Linux"),
    "mlx": ("MLX", "pip install mlx (Apple silicon) or 'mlx[cpu]' (Linux)",
            "MLX has no wheel for Intel Macs or an x86 Python under Rosetta: use a native arm64 Python, or "
            "python -m nano_torch.train"),
}


def missing_framework(framework: str, error: ImportError, machine: str | None = None,
                      platform_name: str | None = None) -> None:
    """A backend package imported without its framework. Under `python -m nano_torch.X` (runpy imports the package
    while sys.argv[0] is still '-m'): one line and exit 2, the commands' contract for bad setups. Imported from
    Python: an ImportError that says the same."""
    what, install, intel = FRAMEWORK_HINTS[framework]
    intel_mac = (platform_name or sys.platform) == "darwin" and (machine or platform.machine()) == "x86_64"
    msg = f"{what} is not installed ({error}); {intel if intel_mac else install}"
    if sys.argv[:1] == ["-m"]:
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(msg) from error


def apple_generation(brand: str) -> int | None:
    """'Apple M3 Max' -> 3; None for anything that is not an Apple M-series chip."""
    m = re.search(r"\bApple M(\d+)\b", brand)
    return int(m.group(1)) if m else None


def apple_gpu_has_bf16(brand: str) -> bool:
    """Whether the Apple GPU computes bf16 in hardware. M1 and M2 GPUs have no bf16 path (Metal emulates it through
    fp32 conversions: slower than fp16 and no faster than fp32, as MLX's maintainers measured in mlx-examples #186);
    from M3 on the GPU has one. Unknown or non-Apple brands answer False, the safe side (fp32)."""
    generation = apple_generation(brand)
    return generation is not None and generation >= 3


def gpu_cores() -> int | None:
    """GPU core count on macOS (system_profiler); None elsewhere or when it cannot be read."""
    if sys.platform != "darwin":
        return None
    try:
        out = subprocess.run(["system_profiler", "SPDisplaysDataType"], capture_output=True, text=True,
                             timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"Total Number of Cores:\s*(\d+)", out)
    return int(m.group(1)) if m else None


def mapped_libraries() -> set[str] | None:
    """Paths of the shared libraries mapped into this process (Linux /proc/self/maps); None where it cannot be read."""
    try:
        with open("/proc/self/maps") as f:
            return {line.split()[-1] for line in f if ".so" in line}
    except OSError:
        return None


def loaded_blas() -> str:
    """The system BLAS this process has loaded, for a framework that links it (MLX's CPU backend): on Linux a plain
    libopenblas (an LD_PRELOAD puts it in front of the reference libblas; numpy's own scipy_openblas uses suffixed
    symbols nothing else binds to, so it does not count), else the reference libblas. Import the framework first."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    libs = mapped_libraries()
    if libs is None:
        return "unknown (no /proc/self/maps)"
    openblas = sorted(p for p in libs if Path(p).name.startswith("libopenblas"))
    if openblas:
        return f"OpenBLAS ({openblas[0]})"
    ref = sorted(p for p in libs if Path(p).name.startswith("libblas"))
    return f"reference BLAS ({Path(ref[0]).resolve()})" if ref else "unknown"


def build_config_summary(text: str) -> str:
    """The BLAS/LAPACK, MKL, oneDNN, CPU capability and OpenMP lines of a framework's build description (PyTorch:
    torch.__config__.show()), joined with '; '."""
    keep = [m.group(0) for m in re.finditer(r"(BLAS_INFO|LAPACK_INFO)=\w+", text)]
    keep += [line.strip(" -") for line in text.splitlines()
             if any(s in line for s in ("Math Kernel Library", "MKL-DNN", "oneDNN", "CPU capability", "OpenMP"))]
    return "; ".join(keep)


def numpy_blas() -> str:
    """The BLAS numpy was built with ("scipy-openblas 0.3.27"), or "unknown" (numpy < 1.26 has no dict config)."""
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 -- an old numpy: say so rather than fail a report
        return "unknown"


def machine() -> dict:
    """The machine and this process's settings, for a benchmark report: OS, Python, CPU model, macOS GPU cores,
    logical CPUs, LD_PRELOAD and OMP_WAIT_POLICY as found (None when unset)."""
    return {"os": platform.platform(), "python": platform.python_version(), "cpu": cpu_brand(),
            "gpu_cores": gpu_cores(), "cpu_count": os.cpu_count(), "ld_preload": os.environ.get("LD_PRELOAD"),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def framework_env(framework: str) -> dict:
    """The environment for a child process of one framework (benchmarks start one per backend): never an OpenBLAS
    preload for PyTorch (it slows its CPU kernels); for MLX the installed OpenBLAS preloaded, as the nano_mlx
    commands would do themselves."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if framework == "mlx" and (lib := installed_openblas()) is not None:
        env["LD_PRELOAD"] = lib
    return env
