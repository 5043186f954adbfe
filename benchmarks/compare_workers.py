"""benchmarks/compare.py's workers: each backend runs in its own process and is driven over a pipe.

Why a process per backend: two frameworks in one process fight over the cores between their turns -- their idle
thread pools (OpenMP, OpenBLAS, MLX) keep spinning -- and PyTorch's CPU step measured slower next to MLX than alone
(docs/benchmarks.md). Workers are spawned (a fresh interpreter: nothing of the other framework is loaded there), and
PyTorch workers start without an OpenBLAS LD_PRELOAD (meant for MLX, it slows PyTorch's CPU kernels; see
nano_core/host.py).

A worker builds `nano_<framework>.backend.Backend(device, dtype, attn_impl="auto", compile=None)` -- None is the
training CLI's default (compiled on MLX, eager on PyTorch) -- and times the step `make_train_step` returns: the one
the training CLIs run. Steps are timed inside the worker; only batches, learning rates, timings and loss values
cross the pipe.

Protocol: the parent sends (method, args); the worker answers (True, result) or (False, "backend: Error: message");
None ends it. The methods are those of class Session below.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import time

import numpy as np

from nano_core.config import ModelConfig
from nano_core.host import build_config_summary, keep_freed_memory, loaded_blas, without_openblas_preload

ALL_BACKENDS = ("mlx-gpu", "mlx-cpu", "torch-cuda", "torch-mps", "torch-cpu")


# ----------------------------------------------------------------------------- framework-specific, in the worker
def torch_runtime() -> dict:
    """TF32 off (parity needs true fp32 matmuls); what runs: version, BLAS, threads, the TF32 flag in force."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return {"version": torch.__version__, "blas": build_config_summary(torch.__config__.show()),
            "threads": torch.get_num_threads(), "tf32": bool(torch.backends.cuda.matmul.allow_tf32)}


def mlx_runtime() -> dict:
    """TF32 off: MLX reads MLX_ENABLE_TF32 when it loads (its default is on), so this runs before any mlx import."""
    os.environ["MLX_ENABLE_TF32"] = "0"
    import mlx.core as mx

    return {"version": mx.__version__, "blas": loaded_blas(), "threads": None, "tf32": os.environ["MLX_ENABLE_TF32"]}


def torch_attention(backend, model, x_np: np.ndarray):
    """(forward, forward+backward) of model.h[0].attn, under the backend's autocast, synchronised."""
    import torch

    from nano_torch.backend import autocast

    attn, x = model.h[0].attn, torch.from_numpy(x_np).to(backend.torch_device)

    def fwd():
        with torch.no_grad(), autocast(backend.device, backend.dtype):
            attn(x, None, None, 0)
        backend.sync()

    def fwd_bwd():
        with autocast(backend.device, backend.dtype):
            y = attn(x, None, None, 0)
        y.float().sum().backward()
        attn.zero_grad(set_to_none=True)
        backend.sync()

    return fwd, fwd_bwd


def mlx_attention(backend, model, x_np: np.ndarray):
    """(forward, forward+backward) of model.h[0].attn on weights and input cast to the compute dtype (MLX has no
    autocast), op by op like PyTorch's eager module; mx.eval synchronises."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map

    from nano_mlx.backend import COMPUTE_DTYPES

    cast = COMPUTE_DTYPES[backend.dtype]
    attn = model.h[0].attn
    attn.update(tree_map(lambda p: p.astype(cast), attn.parameters()))
    x = mx.array(x_np).astype(cast)
    mx.eval(x, attn.parameters())
    grad_fn = nn.value_and_grad(attn, lambda x: attn(x, None, None, 0).astype(mx.float32).sum())
    return (lambda: mx.eval(attn(x, None, None, 0))), (lambda: mx.eval(grad_fn(x)))


RUNTIME = {"torch": torch_runtime, "mlx": mlx_runtime}
ATTENTION = {"torch": torch_attention, "mlx": mlx_attention}


# ----------------------------------------------------------------------------- the worker
class Session:
    """Worker side: the backend, its model, optimizer and train step; the methods the parent may call."""

    def __init__(self, framework: str, device: str, dtype: str, cfg: ModelConfig, weights: dict, hp):
        self.framework = framework
        self.runtime = RUNTIME[framework]()  # before the backend module imports the framework
        keep_freed_memory()  # as the training loops do
        self.backend = b = importlib.import_module(f"nano_{framework}.backend").Backend(
            device=device, dtype=dtype, attn_impl="auto", compile=None)
        self.model = b.build_model(cfg, weights)
        self.optimizer = b.build_optimizer(self.model, hp.lr, (hp.beta1, hp.beta2), hp.eps, hp.weight_decay)
        self.train_step = b.make_train_step(self.model, self.optimizer, 1, hp.grad_clip, hp.seed)
        self.attention_fns = None

    def info(self) -> dict:
        b = self.backend
        step = (f"nano_{self.framework}.backend.Backend.make_train_step ({'compiled' if b.compile else 'eager'}, "
                f"{b.attn_impl} attention)")
        return {"framework": self.framework, "device": b.device, "dtype": b.dtype, "step": step,
                "runtime": self.runtime, "notices": b.notices()}

    def step(self, batch: np.ndarray, lr: float, index: int) -> tuple[float, float]:
        """(seconds, loss): the clock stops once the device has finished the step; the loss is read after."""
        t0 = time.perf_counter()
        loss = self.train_step(batch, lr, index)
        self.backend.sync()
        dt = time.perf_counter() - t0
        return dt, self.backend.loss_value(loss)

    def evaluate(self, data_dir, batch_size: int, seq_len: int, steps: int, token_bytes) -> dict:
        from nano_core.trainer import evaluate

        return evaluate(self.backend, self.model, data_dir, batch_size, seq_len, steps, token_bytes)

    def peak_flops(self) -> tuple[float, str]:
        return self.backend.measure_peak_flops()

    def reset_peak_memory(self) -> None:
        self.backend.reset_peak_memory()

    def peak_memory(self) -> tuple[int, str]:
        return self.backend.peak_memory()

    def attention_setup(self, cfg: ModelConfig, weights: dict, x: np.ndarray) -> None:
        """A one-layer model of `cfg`; its first Attention module is what attention_time runs."""
        model = self.backend.build_model(cfg, weights)
        self.attention_fns = ATTENTION[self.framework](self.backend, model, x)

    def attention_time(self, which: int) -> float:
        """Seconds of one call: 0 = forward, 1 = forward + backward."""
        fn = self.attention_fns[which]
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def serve(conn, name: str, dtype: str, cfg: ModelConfig, weights: dict, hp) -> None:
    """The worker process: build the Session, then answer (method, args) until None arrives."""
    try:
        session = Session(*name.split("-"), dtype, cfg, weights, hp)
        conn.send((True, None))
    except Exception as e:  # noqa: BLE001 -- reported by the parent, in one line
        conn.send((False, f"{name}: {type(e).__name__}: {e}"))
        return
    while (msg := conn.recv()) is not None:
        method, args = msg
        try:
            conn.send((True, getattr(Session, method)(session, *args)))
        except Exception as e:  # noqa: BLE001
            conn.send((False, f"{name}: {type(e).__name__}: {e}"))


# ----------------------------------------------------------------------------- the parent's end
class Worker:
    """A backend in its own process: call(method, *args) runs Session.method there and returns its result."""

    def __init__(self, name: str, dtype: str, cfg: ModelConfig, weights: dict, hp):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, name, dtype, cfg, weights, hp), daemon=True)
        # the OpenBLAS preload is for MLX; inside PyTorch it slows the CPU step (nano_core/host.py)
        with without_openblas_preload() if name.startswith("torch") else contextlib.nullcontext():
            self.proc.start()
        child.close()
        self._answer()  # the Session is built (or its error raised here)

    def _answer(self):
        try:
            ok, result = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the {self.name} worker process died (exit code {self.proc.exitcode})") from None
        if not ok:
            raise RuntimeError(result)
        return result

    def call(self, method: str, *args):
        self.conn.send((method, args))
        return self._answer()

    def close(self) -> None:
        if self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(timeout=30)


# ----------------------------------------------------------------------------- which backends
def available_backends() -> list[str]:
    """Backends that can run here, in ALL_BACKENDS order: the framework is installed and its Backend accepts the
    device (it raises ValueError for one it cannot use)."""
    found = []
    for name in ALL_BACKENDS:
        framework, device = name.split("-")
        if importlib.util.find_spec(framework) is None:
            continue
        try:
            importlib.import_module(f"nano_{framework}.backend").Backend(device=device)
        except ValueError:
            continue
        found.append(name)
    return found


def resolve_backends(spec: str | None) -> list[str]:
    """--backends as a list (default: all available); a one-line ValueError for a name that cannot run here."""
    avail = available_backends()
    if spec is None:
        if not avail:
            raise ValueError("neither mlx nor torch is importable; pip install -e '.[mlx,torch]'")
        return avail
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in ALL_BACKENDS:
            raise ValueError(f"unknown backend {n!r}; choose from {', '.join(ALL_BACKENDS)} "
                             f"(available here: {', '.join(avail) or 'none'})")
        if n not in avail:
            raise ValueError(f"backend {n!r} is not available on this machine; available: {', '.join(avail) or 'none'}")
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"--backends {spec!r} must list distinct backends, e.g. mlx-cpu,torch-cpu")
    return names
