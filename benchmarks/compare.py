"""Cross-backend comparison: the same model, init and batches on MLX and PyTorch; speed, memory, MFU, loss parity.

    python benchmarks/compare.py                       # every backend/device found here, the comparison config
    python benchmarks/compare.py --quick --out /tmp/c  # seconds: a very small model, few steps (CI)
    python benchmarks/compare.py --backends mlx-gpu,torch-mps --dtype bf16 --preset small --steps 20
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 python benchmarks/compare.py  # Linux

What it does, in order:
1. data: --data DIR, else ../shared/data/fineweb_edu (beside the repository; the builtin text when absent) prepared
   once with nano_core.prepare into the nano cache;
2. one numpy init (nano_core.init) loaded into every backend, one list of training batches fed to all of them;
3. each backend runs its own real training step (nano_torch.train.train_step, eager; nano_mlx.train.make_train_step,
   mx.compile'd), with the attention kernel its training CLI's --attn-impl auto picks, and the same AdamW (bias correction, weight decay on >= 2-D weights), clipping and LR schedule;
   the first --warmup steps (compilation, allocator warm-up) are excluded from timing; then --repeats chunks of
   --steps steps, alternating the backend order every repeat so machine drift hits all of them. Every step is
   timed on its own, after a device synchronisation (mx.eval / torch.cuda|mps.synchronize);
4. loss parity against the first backend, step by step; val loss and bits per byte on val batches of shard 0;
5. MFU against a measured matmul peak (and the chip's known peak on Apple GPUs, benchmarks/chips.py), with the FLOPs
   per token from ModelConfig.estimate_flops checked against an independent count made here (count_flops);
6. attention alone (each backend's model.py Attention module), forward and forward+backward, across MHA/GQA/MQA
   and full vs sliding-window attention.
fp32 by default with TF32 off on both sides (MLX_ENABLE_TF32=0 is set before mlx is imported; torch allow_tf32 off).

Outputs in --out: report.json, report.md, loss.png, throughput.png, attention.png; a table on stdout.

report.json fields
  version                    format version of this file (1)
  created                    UTC time the run finished (ISO 8601)
  command                    the command line
  env                        the machine and software:
    .os .python .cpu           OS string, Python version, CPU / SoC model (sysctl on macOS, /proc/cpuinfo on Linux)
    .apple_chip .gpu_cores     recognised Apple chip ("M3 Max") and GPU core count, or null
    .cpu_count .torch_threads  logical CPUs; torch.get_num_threads()
    .versions                  {numpy, torch, mlx}: versions of what was imported (null if not installed)
    .blas                      {mlx, torch, numpy}: the BLAS each uses (MLX on Linux: "OpenBLAS (...)" when one is
                               loaded into the process, e.g. by LD_PRELOAD, or "reference BLAS (...)", from
                               /proc/self/maps; torch: summary of torch.__config__.show(); numpy: show_config)
    .ld_preload                the LD_PRELOAD environment variable, or null (an OpenBLAS in it reaches the MLX
                               workers only: PyTorch workers start without it, see nano_core/host.py)
    .omp_wait_policy           OMP_WAIT_POLICY in force (compare.py leaves it as it finds it)
    .mlx_enable_tf32 .torch_allow_tf32   the TF32 settings in force
    .notices                   hints printed during the run (e.g. the OpenBLAS LD_PRELOAD tip)
  config                     ModelConfig.to_dict() of the model compared
  run                        {batch_size, seq_len, dtype, warmup, steps, repeats, total_steps, lr, schedule,
                              warmup_steps, grad_clip, weight_decay, seed, eval_batches, data, data_source,
                              backends, quick}; total_steps = warmup + steps * repeats (every one in the loss curve)
  flops                      {per_token_estimate (ModelConfig.estimate_flops), per_token_independent (count_flops),
                              ratio (independent / estimate), convention (text), breakdown {matmul_fwd,
                              attention_fwd} per token}
  backends                   one entry per backend name ("mlx-cpu", "torch-cpu", ...):
    .framework .device .step   "mlx"|"torch", device, which training step was used (compiled or not, which attention)
    .tok_per_s                 B*T / median step time
    .tok_per_s_mean            all timed tokens / all timed seconds
    .ms_per_step               {median, p25, p75, iqr, min, max, n}: per-step wall time in milliseconds
    .repeat_tok_per_s          tokens/s of each repeat (chunk of --steps steps), in run order
    .peak_flops                {measured, measured_source, known, known_source}: FLOP/s (known: chip table, or null)
    .mfu                       {measured, known, independent_measured}: model FLOPs/s over the measured / known
                               peak (FLOPs from estimate_flops); independent_measured uses count_flops instead
    .peak_memory               {bytes, method}: method says what was measured (mx.get_peak_memory,
                               torch.cuda.max_memory_allocated, torch.mps.driver_allocated_memory, or the process
                               peak RSS on CPU, which includes everything else resident in this one process)
    .loss                      training loss at every step (warm-up steps included), floats
    .final_loss                the last of them
    .val                       {val_loss, val_ppl, val_bpb} after training, on the first eval_batches val batches
  parity                     {reference, tolerance, dtype, pairs: {backend: {max_rel_diff, final_rel_diff,
                              max_abs_diff, rel_diff (per step), val_loss_rel_diff, within_tolerance}}}
                              rel diff = |loss - loss_ref| / |loss_ref|
  attention                  {batch_size, seq_len, n_head, head_dim, reps, convention, rows: [{backend, n_kv_head,
                              kind (MHA|GQA|MQA), window (null = full causal), fwd_ms, fwd_bwd_ms, fwd_gflops_per_s}]}
  files                      names of the files written beside report.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

# TF32 off before mlx can be imported anywhere (parity needs true fp32 matmuls; MLX's default is on).
os.environ["MLX_ENABLE_TF32"] = "0"
# OMP_WAIT_POLICY is left as the user has it, as the training CLIs do: each backend runs in its own worker process
# (class Isolated), and libgomp's default short spin before sleeping measured ~12% faster PyTorch steps here than
# PASSIVE, which wakes the threads by futex for every parallel region.

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, benchmarks/ is sys.path[0], and benchmarks/tokenizer.py would shadow the `tokenizer` package:
# take it out and put the repository root first. chips.py is loaded from its path instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)]

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import importlib.util  # noqa: E402

_spec = importlib.util.spec_from_file_location("nano_bench_chips", HERE / "chips.py")
chips = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chips)
from nano_core.config import PRESETS, ModelConfig  # noqa: E402
from nano_core.data import ShardLoader, default_data_dir, load_manifest  # noqa: E402
from nano_core.host import keep_freed_memory, without_openblas_preload  # noqa: E402
from nano_core.init import init_weights  # noqa: E402
from nano_core.schedule import lr_at  # noqa: E402

SHARED_FINEWEB = ROOT.parent / "shared" / "data" / "fineweb_edu" / "sample-10BT-281docs.jsonl"
ALL_BACKENDS = ("mlx-gpu", "mlx-cpu", "torch-cuda", "torch-mps", "torch-cpu")
PARITY_TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}

# The DESIGN.md comparison config: GPT-2 classic (learned positions, LayerNorm, GELU, biases, tied head).
COMPARE_CONFIG = dict(n_layer=6, n_head=6, n_embd=384, seq_len=256, mlp="gelu", norm="layernorm", pos="learned",
                      bias=True, tie_embeddings=True)
QUICK_CONFIG = dict(n_layer=2, n_head=4, n_embd=64, seq_len=64, mlp="gelu", norm="layernorm", pos="learned",
                    bias=True, tie_embeddings=True)
DEFAULTS = {  # run sizes: the no-argument run (a few minutes on 2 cores) and --quick (seconds)
    "full": dict(batch_size=8, warmup=2, steps=8, repeats=3, eval_batches=4, attn_reps=5),
    "quick": dict(batch_size=4, warmup=1, steps=3, repeats=2, eval_batches=2, attn_reps=2),
}


# ----------------------------------------------------------------------------- independent FLOP count
def count_flops(weights: dict, cfg: ModelConfig, seq_len: int | None = None) -> dict:
    """Training FLOPs per token counted from the shapes of the weights actually loaded into the models.

    Written independently of ModelConfig.estimate_flops (which works from the config) to check it:
      * every 2-D weight used as a matmul costs 2*out*in FLOPs per token forward (one multiply-add per entry);
        the token/position embeddings are lookups (free), except that a tied wte is also the output head;
      * attention costs 2 matmuls (Q K^T and P V) x 2 FLOPs x T_eff keys x (n_head*head_dim) per token per layer,
        where n_head*head_dim is read from the query projection's shape; T_eff = T for full attention and
        min(window, T) for a sliding layer; causal masking is NOT discounted (the PaLM / nanoGPT convention that
        estimate_flops uses too);
      * backward = 2 x forward, so training = 3 x forward.
    """
    T = cfg.seq_len if seq_len is None else seq_len
    shapes = {k: tuple(np.shape(v)) for k, v in weights.items()}
    tied = "lm_head.weight" not in shapes
    matmul = 0
    for name, shape in shapes.items():
        if len(shape) != 2 or name == "wpe.weight":
            continue
        if name == "wte.weight":
            matmul += 2 * shape[0] * shape[1] if tied else 0  # the lookup is free; the tied head is a matmul
            continue
        matmul += 2 * shape[0] * shape[1]
    layers = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"h\.(\d+)\.attn\.wq\.weight$", k))})
    windows = cfg.layer_windows() if layers else []
    attention = 0
    for i in layers:
        width = shapes[f"h.{i}.attn.wq.weight"][0]
        t_eff = T if windows[i] is None else min(windows[i], T)
        attention += 2 * 2 * t_eff * width
    return {"matmul_fwd": matmul, "attention_fwd": attention, "total": 3 * (matmul + attention)}


FLOP_CONVENTION = ("training FLOPs/token = 3 x forward; forward = 2*out*in per matmul weight (tied embedding counted "
                   "once, as the head) + per layer 2*2*T_eff*n_head*head_dim for QK^T and PV; T_eff = T (full) or "
                   "min(window, T) (sliding); causal masking not discounted (PaLM/nanoGPT convention)")


# ----------------------------------------------------------------------------- environment
def blas_of_mlx() -> str:
    """Which BLAS the MLX CPU backend calls: what is mapped into this process (MLX must be imported first)."""
    if platform.system() == "Darwin":
        return "Accelerate (macOS)"
    try:
        libs = {ln.split()[-1] for ln in open("/proc/self/maps") if ".so" in ln}
    except OSError:
        return "unknown (no /proc/self/maps)"
    # numpy's scipy_openblas uses suffixed symbols MLX cannot bind to: only a plain libopenblas counts.
    openblas = sorted(p for p in libs if Path(p).name.startswith("libopenblas"))
    if openblas:
        return f"OpenBLAS ({openblas[0]})"
    ref = sorted(p for p in libs if Path(p).name.startswith("libblas"))
    if ref:
        return f"reference BLAS ({Path(ref[0]).resolve()})"
    return "unknown"


def blas_of_torch() -> str:
    import torch

    text = torch.__config__.show()
    keep = [m.group(0) for m in re.finditer(r"(BLAS_INFO|LAPACK_INFO)=\w+", text)]
    keep += [ln.strip(" -") for ln in text.splitlines()
             if any(s in ln for s in ("Math Kernel Library", "MKL-DNN", "oneDNN", "CPU capability", "OpenMP"))]
    return "; ".join(keep)


def blas_of_numpy() -> str:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 -- older numpy has no dict mode: say so instead of failing the benchmark
        return "unknown"


def environment(backends: list[str], notices: list[str]) -> dict:
    brand = chips.cpu_brand()
    frameworks = {b.split("-")[0] for b in backends}
    versions = {"numpy": np.__version__, "torch": None, "mlx": None}
    blas = {"numpy": blas_of_numpy(), "torch": None, "mlx": None}
    torch_threads, torch_tf32 = None, None
    if "torch" in frameworks:
        import torch

        versions["torch"] = torch.__version__
        blas["torch"] = blas_of_torch()
        torch_threads = torch.get_num_threads()
        torch_tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    if "mlx" in frameworks:
        import mlx.core as mx

        versions["mlx"] = mx.__version__
        blas["mlx"] = blas_of_mlx()
    return {"os": platform.platform(), "python": platform.python_version(), "cpu": brand,
            "apple_chip": chips.apple_chip(brand), "gpu_cores": chips.gpu_cores(), "cpu_count": os.cpu_count(),
            "torch_threads": torch_threads, "versions": versions, "blas": blas,
            "ld_preload": os.environ.get("LD_PRELOAD"), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "mlx_enable_tf32": os.environ.get("MLX_ENABLE_TF32"),
            "torch_allow_tf32": torch_tf32, "notices": notices}


# ----------------------------------------------------------------------------- memory probes
def _vmhwm() -> int | None:
    try:
        for ln in open("/proc/self/status"):
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_vmhwm() -> bool:
    """Reset the process peak RSS (Linux >= 4.0: write 5 to clear_refs), so a peak belongs to one backend's steps."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if platform.system() == "Darwin" else r * 1024  # bytes on macOS, KiB on Linux


class ProcessPeakRSS:
    """CPU memory: peak RSS of the backend's own worker process while its steps ran (VmHWM reset before each chunk
    when the kernel allows it, else the lifetime peak): the framework, the model, the optimizer and the batches."""

    def __init__(self):
        self.peak = 0
        self.resettable = _reset_vmhwm()
        self.method = ("peak RSS of the backend's worker process during its steps (VmHWM, reset per chunk)" if self.resettable else "process lifetime peak RSS (ru_maxrss)")

    def start(self):
        if self.resettable:
            _reset_vmhwm()

    def sample(self):
        pass

    def stop(self):
        self.peak = max(self.peak, (_vmhwm() if self.resettable else None) or _ru_maxrss())


# ----------------------------------------------------------------------------- backends
class TorchBackend:
    """PyTorch on cpu/cuda/mps with nano_torch's real training step (eager, as `nano_torch.train` runs by default)."""
    framework = "torch"

    def __init__(self, device: str, cfg: ModelConfig, weights: dict, dtype: str, hp):
        import torch

        import nano_torch.train as tt
        from nano_torch.model import GPT
        from nano_torch.optim import build_optimizer, set_lr

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        torch.manual_seed(hp.seed)
        self.torch, self.tt, self.set_lr = torch, tt, set_lr
        self.device_name, self.dtype, self.hp = device, dtype, hp
        self.device = torch.device(device)
        self.sync = tt.SYNC[device]
        self.ctx = tt.autocast(self.device, dtype)
        self.attn_impl = tt.pick_attn_impl("auto", self.device, dtype)  # what the training CLI would run
        self.model = GPT(cfg, attn_impl=self.attn_impl).to(self.device)
        self.model.load_numpy(weights)
        self.model.train()
        self.opt = build_optimizer(self.model, hp.lr, (hp.beta1, hp.beta2), hp.eps, hp.weight_decay)
        self.step_name = f"nano_torch.train.train_step (eager mode, {self.attn_impl} attention)"
        self.memory = {"cpu": lambda: ProcessPeakRSS(), "cuda": lambda: CudaPeak(torch),
                       "mps": lambda: MpsPeak(torch)}[device]()

    def step(self, batch: np.ndarray, lr: float) -> tuple[float, object]:
        t0 = time.perf_counter()
        self.set_lr(self.opt, lr)
        micro = self.tt.to_device(batch, self.device)
        loss = self.tt.train_step(self.model.loss, self.model, self.opt, micro, self.ctx, self.hp.grad_clip, None)
        self.sync()
        return time.perf_counter() - t0, loss

    def value(self, loss) -> float:
        return float(loss.item())

    def evaluate(self, data_dir, batch_size, seq_len, batches, token_bytes) -> dict:
        return self.tt.evaluate(self.model, data_dir, batch_size, seq_len, batches, self.device, self.ctx,
                                token_bytes)

    def peak_flops(self) -> tuple[float, str]:
        return self.tt.peak_flops(self.device_name, self.dtype)

    # -- attention alone
    def attention_fns(self, cfg: ModelConfig, weights: dict, x_np: np.ndarray):
        """(forward, forward+backward) closures over the Attention module of nano_torch/model.py."""
        from nano_torch.model import GPT

        torch = self.torch
        model = GPT(cfg, attn_impl=self.attn_impl).to(self.device)
        model.load_numpy(weights)
        attn = model.h[0].attn
        x = torch.from_numpy(x_np).to(self.device)

        def fwd():
            with torch.no_grad(), self.ctx:
                attn(x, None, None, 0)
            self.sync()

        def fwd_bwd():
            with self.ctx:
                y = attn(x, None, None, 0)
            y.float().sum().backward()
            attn.zero_grad(set_to_none=True)
            self.sync()

        return fwd, fwd_bwd


class CudaPeak:
    def __init__(self, torch):
        self.torch, self.peak, self.method = torch, 0, "torch.cuda.max_memory_allocated (reset per chunk)"

    def start(self):
        self.torch.cuda.reset_peak_memory_stats()

    def sample(self):
        pass

    def stop(self):
        self.peak = max(self.peak, self.torch.cuda.max_memory_allocated())


class MpsPeak:
    def __init__(self, torch):
        self.torch, self.peak = torch, 0
        self.method = "max of torch.mps.driver_allocated_memory() sampled after every step"

    def start(self):
        pass

    def sample(self):
        self.peak = max(self.peak, self.torch.mps.driver_allocated_memory())

    def stop(self):
        self.sample()


class MlxPeak:
    def __init__(self, mx):
        self.mx, self.peak = mx, 0
        self.method = "mx.get_peak_memory (MLX allocator, reset per chunk; includes other live MLX arrays)"

    def start(self):
        self.mx.reset_peak_memory()

    def sample(self):
        pass

    def stop(self):
        self.peak = max(self.peak, self.mx.get_peak_memory())


class MlxBackend:
    """MLX on gpu/cpu with nano_mlx's real training step, compiled (mx.compile over model, optimizer, RNG state)."""
    framework = "mlx"

    def __init__(self, device: str, cfg: ModelConfig, weights: dict, dtype: str, hp):
        import mlx.core as mx

        import nano_mlx.train as mt
        from nano_mlx.model import GPT
        from nano_mlx.optim import build_optimizer, set_lr

        self.mx, self.mt, self.set_lr = mx, mt, set_lr
        self.device_name, self.dtype, self.hp = device, dtype, hp
        self.device = {"gpu": mx.gpu, "cpu": mx.cpu}[device]
        with mx.stream(self.device):
            mx.random.seed(hp.seed)
            self.attn_impl = mt.pick_attn_impl("auto", self.device, dtype)  # what the training CLI would run
            self.model = GPT(cfg, attn_impl=self.attn_impl)
            self.model.load_numpy(weights)
            self.model.train()
            self.opt = build_optimizer(self.model, hp.lr, (hp.beta1, hp.beta2), hp.eps, hp.weight_decay)
            self.train_step = mt.make_train_step(self.model, self.opt, 1, hp.grad_clip, dtype, use_compile=True)
        self.step_name = f"nano_mlx.train.make_train_step (mx.compile, {self.attn_impl} attention)"
        self.memory = MlxPeak(mx)

    def step(self, batch: np.ndarray, lr: float) -> tuple[float, object]:
        mx = self.mx
        with mx.stream(self.device):
            t0 = time.perf_counter()
            self.set_lr(self.opt, lr)
            loss = self.train_step(self.mt.to_device(batch))
            mx.eval(loss, self.model.state, self.opt.state)  # the synchronisation: the step has run when this returns
            return time.perf_counter() - t0, loss

    def value(self, loss) -> float:
        return float(loss.item())

    def evaluate(self, data_dir, batch_size, seq_len, batches, token_bytes) -> dict:
        with self.mx.stream(self.device):
            return self.mt.evaluate(self.model, data_dir, batch_size, seq_len, batches, self.dtype, token_bytes)

    def peak_flops(self) -> tuple[float, str]:
        with self.mx.stream(self.device):
            return self.mt.peak_flops(self.device_name, self.dtype)

    def attention_fns(self, cfg: ModelConfig, weights: dict, x_np: np.ndarray):
        """(forward, forward+backward) closures over the Attention module of nano_mlx/model.py (eager, like torch)."""
        import mlx.nn as nn
        from mlx.utils import tree_map

        from nano_mlx.model import GPT

        mx = self.mx
        cast = self.mt.COMPUTE_DTYPES[self.dtype]
        with mx.stream(self.device):
            model = GPT(cfg, attn_impl=self.attn_impl)
            model.load_numpy(weights)
            attn = model.h[0].attn
            if cast != mx.float32:
                attn.update(tree_map(lambda p: p.astype(cast), attn.parameters()))
            x = mx.array(x_np).astype(cast)
            mx.eval(x, attn.parameters())
        grad_fn = nn.value_and_grad(attn, lambda x: attn(x, None, None, 0).astype(mx.float32).sum())

        def fwd():
            with mx.stream(self.device):
                mx.eval(attn(x, None, None, 0))

        def fwd_bwd():
            with mx.stream(self.device):
                mx.eval(grad_fn(x))

        return fwd, fwd_bwd


FRAMEWORKS = {"mlx": MlxBackend, "torch": TorchBackend}


# ----------------------------------------------------------------------------- one process per backend
def _serve(conn, framework: str, device: str, cfg: ModelConfig, weights: dict, dtype: str, hp):
    """Worker side: build the backend here, then answer (method, args) messages until None arrives."""
    keep_freed_memory()  # as the training loops do
    s = FRAMEWORKS[framework](device, cfg, weights, dtype, hp)
    attention = {}

    def step(batch, lr):
        dt, loss = s.step(batch, lr)
        return dt, s.value(loss)  # the clock was read inside step(); the value is read after it

    def attention_setup(acfg, aweights, x):
        attention["fns"] = s.attention_fns(acfg, aweights, x)

    def attention_time(which: int) -> float:
        fn = attention["fns"][which]
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    handlers = {
        "info": lambda: (s.framework, s.device_name, s.step_name),
        "step": step, "evaluate": s.evaluate, "peak_flops": s.peak_flops,
        "memory_start": s.memory.start, "memory_sample": s.memory.sample, "memory_stop": s.memory.stop,
        "memory_result": lambda: (int(s.memory.peak), s.memory.method),
        "attention_setup": attention_setup, "attention_time": attention_time,
    }
    while (msg := conn.recv()) is not None:
        name, args = msg
        try:
            conn.send((True, handlers[name](*args)))
        except Exception as e:  # report it in the parent, in one line
            conn.send((False, f"{framework}-{device}: {type(e).__name__}: {e}"))


class _RemoteMemory:
    def __init__(self, session):
        self.session = session

    def start(self):
        self.session.call("memory_start")

    def sample(self):
        self.session.call("memory_sample")

    def stop(self):
        self.session.call("memory_stop")

    @property
    def peak(self):
        return self.session.call("memory_result")[0]

    @property
    def method(self):
        return self.session.call("memory_result")[1]


class Isolated:
    """A backend in its own process, driven over a pipe with the same methods as the in-process classes.

    Why: two frameworks in one process fight over the cores between their turns - their idle thread pools
    (OpenMP, OpenBLAS, MLX) keep spinning - and PyTorch's CPU step measured ~1.7x slower next to MLX than alone.
    Steps are timed inside the worker; only batches, learning rates, timings and loss values cross the pipe."""

    def __init__(self, framework: str, device: str, cfg: ModelConfig, weights: dict, dtype: str, hp):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing of the other framework is loaded there
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, framework, device, cfg, weights, dtype, hp),
                                daemon=True)
        self.proc.start()
        child.close()
        self.framework, self.device_name, self.step_name = self.call("info")
        self.memory = _RemoteMemory(self)

    def call(self, name: str, *args):
        self.conn.send((name, args))
        try:
            ok, result = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the {self.framework}-{self.device_name} worker process died "
                               f"(exit code {self.proc.exitcode})") from None
        if not ok:
            raise RuntimeError(result)
        return result

    def step(self, batch: np.ndarray, lr: float) -> tuple[float, float]:
        return self.call("step", batch, lr)

    def value(self, loss: float) -> float:
        return loss

    def evaluate(self, *args) -> dict:
        return self.call("evaluate", *args)

    def peak_flops(self) -> tuple[float, str]:
        return self.call("peak_flops")

    def attention_fns(self, cfg: ModelConfig, weights: dict, x_np: np.ndarray):
        self.call("attention_setup", cfg, weights, x_np)
        return (lambda: self.call("attention_time", 0)), (lambda: self.call("attention_time", 1))

    def close(self):
        if self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(timeout=30)


def available_backends() -> list[str]:
    """Backends that can run here, in ALL_BACKENDS order (importing a framework is the only probe)."""
    found = []
    try:
        import mlx.core as mx

        gpu = mx.is_available(mx.gpu) if hasattr(mx, "is_available") else mx.metal.is_available()
        found += (["mlx-gpu"] if gpu else []) + ["mlx-cpu"]
    except ImportError:
        pass
    try:
        import torch

        found += ["torch-cuda"] if torch.cuda.is_available() else []
        found += ["torch-mps"] if torch.backends.mps.is_available() else []
        found += ["torch-cpu"]
    except ImportError:
        pass
    return [b for b in ALL_BACKENDS if b in found]


def resolve_backends(spec: str | None) -> list[str]:
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


# ----------------------------------------------------------------------------- data and config
def resolve_data(data: str | None, log) -> tuple[Path, str]:
    """(shard dir, what it is): --data as given, else the shared FineWeb-Edu sample (or builtin) prepared once."""
    if data is not None:
        path = Path(data).expanduser()
        load_manifest(path)  # FileNotFoundError with the fix when it is not a prepared directory
        return path, str(path)
    from nano_core.cli import val_tokens_for
    from nano_core.prepare import prepare

    specs = [str(SHARED_FINEWEB)] if SHARED_FINEWEB.is_file() else ["builtin"]
    name = "compare-fineweb_edu" if specs != ["builtin"] else "compare-builtin"
    out = default_data_dir(name, 8192)
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("complete"):
        log(f"data: cached shards {out}")
    else:
        log(f"data: preparing {specs[0]} (vocab 8192) into {out}")
        prepare(specs, out, vocab_size=8192, val_tokens=val_tokens_for(specs), progress=True)
    return out, specs[0]


def resolve_config(args, vocab_size: int) -> ModelConfig:
    overrides = {"vocab_size": vocab_size}
    if args.seq_len is not None:
        overrides["seq_len"] = args.seq_len
    if args.config is not None:
        text = args.config
        if not text.lstrip().startswith("{"):
            if not Path(text).is_file():
                raise FileNotFoundError(f"--config {text} not found (give a JSON file or an inline JSON object)")
            text = Path(text).read_text()
        try:
            base = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--config is not valid JSON ({e.msg}); e.g. --config '{{\"n_layer\": 4}}'") from None
        return ModelConfig.from_dict({**base, **overrides})
    if args.preset is not None:
        return ModelConfig.from_preset(args.preset, **overrides)
    return ModelConfig.from_dict({**(QUICK_CONFIG if args.quick else COMPARE_CONFIG), **overrides})


def stats_ms(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    p25, med, p75 = np.percentile(ms, [25, 50, 75])
    return {"median": float(med), "p25": float(p25), "p75": float(p75), "iqr": float(p75 - p25),
            "min": float(ms.min()), "max": float(ms.max()), "n": int(ms.size)}


# ----------------------------------------------------------------------------- the runs
def run_training(sessions: dict, batches: list, lrs: list, hp) -> dict:
    """Warm-up steps, then hp.repeats chunks of hp.steps steps per backend, the order reversed every repeat."""
    names = list(sessions)
    rec = {n: {"times": [], "losses": [], "repeat_tok_per_s": []} for n in names}
    tokens = batches[0].shape[0] * (batches[0].shape[1] - 1)
    bar = tqdm(total=len(batches) * len(names), desc="train steps", unit="step", dynamic_ncols=True)

    def chunk(name: str, lo: int, hi: int, timed: bool):
        s = sessions[name]
        s.memory.start()
        times = []
        for i in range(lo, hi):
            dt, loss = s.step(batches[i], lrs[i])
            s.memory.sample()
            rec[name]["losses"].append(s.value(loss))  # after the clock was read
            times.append(dt)
            bar.update(1)
            bar.set_postfix(backend=name, ms=f"{dt * 1e3:.0f}")
        s.memory.stop()
        if timed:
            rec[name]["times"] += times
            rec[name]["repeat_tok_per_s"].append(tokens * len(times) / sum(times))

    for name in names:  # warm-up: compilation and first allocations, not timed (but part of the loss curve)
        chunk(name, 0, hp.warmup, timed=False)
    for r in range(hp.repeats):
        lo = hp.warmup + r * hp.steps
        for name in (names if r % 2 == 0 else names[::-1]):  # alternate: drift hits every backend alike
            chunk(name, lo, lo + hp.steps, timed=True)
    bar.close()
    return rec


ATTN_KINDS = {"MHA": lambda h: h, "GQA": lambda h: max(d for d in range(2, h) if h % d == 0) if h > 2 else None,
              "MQA": lambda h: 1}


def attention_variants(cfg: ModelConfig) -> list[tuple[str, int, int | None]]:
    """(kind, n_kv_head, window): MHA -> GQA -> MQA, each with full attention and a sliding window of T/4."""
    out = []
    for kind, kv_of in ATTN_KINDS.items():
        kv = kv_of(cfg.n_head)
        if kv is None or any(v[1] == kv for v in out):
            continue
        for window in (None, max(1, cfg.seq_len // 4)):
            out.append((kind, kv, window))
    return out


def run_attention(sessions: dict, cfg: ModelConfig, batch_size: int, reps: int, seed: int) -> dict:
    """Time each backend's Attention module alone, alternating backends rep by rep."""
    rows = []
    variants = attention_variants(cfg)
    x = np.random.default_rng(seed).standard_normal((batch_size, cfg.seq_len, cfg.n_embd)).astype(np.float32)
    bar = tqdm(total=len(variants) * len(sessions) * reps, desc="attention", unit="rep", dynamic_ncols=True)
    for kind, kv, window in variants:
        vcfg = replace(cfg, n_layer=1, n_kv_head=kv, window=window, window_pattern="S").validate()
        weights = init_weights(vcfg, seed)
        fns = {n: s.attention_fns(vcfg, weights, x) for n, s in sessions.items()}
        times = {n: {"fwd": [], "fwd_bwd": []} for n in sessions}
        for f, fb in fns.values():  # warm-up
            f(), fb()
        names = list(sessions)
        for r in range(reps):
            for n in (names if r % 2 == 0 else names[::-1]):
                f, fb = fns[n]
                for key, fn in (("fwd", f), ("fwd_bwd", fb)):
                    times[n][key].append(fn())  # seconds, timed inside the backend's worker process
                bar.update(1)
        t_eff = cfg.seq_len if window is None else min(window, cfg.seq_len)
        d, hd = cfg.n_embd, cfg.head_dim
        # forward FLOPs of the module (same convention as count_flops): projections + QK^T + PV
        flops = batch_size * cfg.seq_len * (2 * d * (cfg.n_head * hd + 2 * kv * hd) + 2 * cfg.n_head * hd * d
                                             + 4 * t_eff * cfg.n_head * hd)
        for n in sessions:
            fwd = float(np.median(times[n]["fwd"]))
            rows.append({"backend": n, "kind": kind, "n_kv_head": kv, "window": window, "fwd_ms": fwd * 1e3,
                         "fwd_bwd_ms": float(np.median(times[n]["fwd_bwd"])) * 1e3,
                         "fwd_gflops_per_s": flops / fwd / 1e9})
    bar.close()
    return {"batch_size": batch_size, "seq_len": cfg.seq_len, "n_head": cfg.n_head, "head_dim": cfg.head_dim,
            "reps": reps, "rows": rows,
            "convention": "median wall time of the Attention module of each model.py (qkv projection, attention, "
                          "output projection), run op by op (not compiled) on both backends, with the attention kernel "
                          "each training CLI picks for this dtype (backends.*.step names it); fwd_bwd includes the "
                          "parameter gradients; sliding windows run the banded kernel"}


def parity(rec: dict, val: dict, dtype: str) -> dict:
    names = list(rec)
    ref = np.asarray(rec[names[0]]["losses"], dtype=np.float64)
    tol = PARITY_TOLERANCE[dtype]
    pairs = {}
    for n in names[1:]:
        other = np.asarray(rec[n]["losses"], dtype=np.float64)
        rel = np.abs(other - ref) / np.abs(ref)
        vrel = abs(val[n]["val_loss"] - val[names[0]]["val_loss"]) / abs(val[names[0]]["val_loss"])
        pairs[n] = {"max_rel_diff": float(rel.max()), "final_rel_diff": float(rel[-1]),
                    "max_abs_diff": float(np.abs(other - ref).max()), "rel_diff": rel.tolist(),
                    "val_loss_rel_diff": float(vrel), "within_tolerance": bool(rel.max() <= tol)}
    return {"reference": names[0], "tolerance": tol, "dtype": dtype, "pairs": pairs}


# ----------------------------------------------------------------------------- outputs
def _atomic_write(path: Path, text: str):
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _savefig(fig, path: Path):
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _fmt_bytes(b) -> str:
    return "n/a" if not b else f"{b / 2**20:,.0f} MiB"


def _pct(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.1%}"


def summary_rows(report: dict) -> list[list[str]]:
    rows = []
    for name, b in report["backends"].items():
        ms = b["ms_per_step"]
        pair = report["parity"]["pairs"].get(name)
        rows.append([name, f"{b['tok_per_s']:,.0f}", f"{ms['median']:,.1f}", f"{ms['iqr']:,.1f}",
                     f"{ms['min']:,.0f}-{ms['max']:,.0f}", _pct(b["mfu"]["measured"]), _pct(b["mfu"]["known"]),
                     f"{b['peak_flops']['measured'] / 1e9:,.0f}", _fmt_bytes(b["peak_memory"]["bytes"]),
                     f"{b['final_loss']:.4f}", f"{b['val']['val_loss']:.4f}", f"{b['val']['val_bpb']:.4f}",
                     "ref" if pair is None else f"{pair['max_rel_diff']:.1e}"])
    return rows


SUMMARY_HEADER = ["backend", "tok/s", "ms/step", "IQR ms", "min-max ms", "MFU", "MFU chip", "peak GFLOP/s",
                  "peak mem", "final loss", "val loss", "val bpb", "max rel dLoss"]


def text_table(header, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def md_table(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                     + ["| " + " | ".join(str(x) for x in r) + " |" for r in rows])


def attention_rows(att: dict) -> list[list[str]]:
    return [[r["backend"], r["kind"], r["n_kv_head"], "full" if r["window"] is None else r["window"],
             f"{r['fwd_ms']:.2f}", f"{r['fwd_bwd_ms']:.2f}", f"{r['fwd_gflops_per_s']:.1f}"] for r in att["rows"]]


ATTN_HEADER = ["backend", "kind", "n_kv_head", "window", "fwd ms", "fwd+bwd ms", "fwd GFLOP/s"]


def write_markdown(report: dict, path: Path):
    env, run, fl = report["env"], report["run"], report["flops"]
    lines = [f"# nano backend comparison ({report['created']})", "",
             f"Model: {json.dumps({k: v for k, v in report['config'].items() if v is not None})}", "",
             f"Run: B={run['batch_size']} T={run['seq_len']} dtype={run['dtype']}, {run['warmup']} warm-up + "
             f"{run['steps']} x {run['repeats']} timed steps per backend (order alternated per repeat), "
             f"lr {run['lr']} ({run['schedule']}), data {run['data_source']}", "",
             "## Training step", "", md_table(SUMMARY_HEADER, summary_rows(report)), "",
             "MFU = estimate_flops x tok/s / peak; peak = measured matmul probe (MFU chip: the chip's known peak, "
             "when recognised). Peak memory methods: " + "; ".join(
                 f"{n}: {b['peak_memory']['method']}" for n, b in report["backends"].items()), "",
             "## FLOP count check", "",
             f"estimate_flops: {fl['per_token_estimate']:,} FLOPs/token; independent count: "
             f"{fl['per_token_independent']:,} (ratio {fl['ratio']:.4f}). Convention: {fl['convention']}.", "",
             "## Loss parity", ""]
    par = report["parity"]
    for n, p in par["pairs"].items():
        lines.append(f"- {n} vs {par['reference']}: max rel diff {p['max_rel_diff']:.2e}, final {p['final_rel_diff']:.2e}, "
                     f"val loss rel diff {p['val_loss_rel_diff']:.2e} (tolerance {par['tolerance']:g}: "
                     f"{'ok' if p['within_tolerance'] else 'above tolerance'})")
    att = report["attention"]
    lines += ["", "## Attention alone", ""]
    lines += ["(skipped)"] if att.get("skipped") else [
        f"B={att['batch_size']} T={att['seq_len']} n_head={att['n_head']} head_dim={att['head_dim']}; "
        f"{att['convention']}.", "", md_table(ATTN_HEADER, attention_rows(att))]
    lines += ["", "## Environment", ""]
    lines += [f"- {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in env.items()]
    lines += ["", "![loss](loss.png) ![throughput](throughput.png) ![attention](attention.png)", ""]
    _atomic_write(path, "\n".join(lines))


def plot_all(report: dict, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["backends"])
    # loss curves and the relative difference to the reference
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for n in names:
        loss = report["backends"][n]["loss"]
        ax.plot(range(1, len(loss) + 1), loss, marker="o", ms=3, lw=1.2, label=n)
    ax.axvspan(0.5, report["run"]["warmup"] + 0.5, color="gray", alpha=0.15, label="warm-up (untimed)")
    ax.set_ylabel("train loss (nats/token)")
    ax.set_title(f"same init, same batches ({report['run']['dtype']})")
    ax.legend()
    ax.grid(alpha=0.3)
    par = report["parity"]
    for n, p in par["pairs"].items():
        ax2.semilogy(range(1, len(p["rel_diff"]) + 1), np.maximum(p["rel_diff"], 1e-12), marker=".", label=n)
    ax2.axhline(par["tolerance"], color="red", ls="--", lw=1, label=f"tolerance {par['tolerance']:g}")
    ax2.set_ylabel(f"|rel diff| vs {par['reference']}")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, out / "loss.png")

    # throughput: median tok/s with the per-step min-max and IQR range, MFU on each bar
    fig, ax = plt.subplots(figsize=(7, 4))
    toks = [report["backends"][n]["tok_per_s"] for n in names]
    tokens = report["run"]["batch_size"] * report["run"]["seq_len"]
    lo = [tokens / (report["backends"][n]["ms_per_step"]["max"] / 1e3) for n in names]
    hi = [tokens / (report["backends"][n]["ms_per_step"]["min"] / 1e3) for n in names]
    bars = ax.bar(names, toks, color=[f"C{i}" for i in range(len(names))],
                  yerr=[np.subtract(toks, lo), np.subtract(hi, toks)], capsize=6)
    for bar, n in zip(bars, names):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() / 2,
                f"{bar.get_height():,.0f} tok/s\nMFU {_pct(report['backends'][n]['mfu']['measured'])}",
                ha="center", va="center", fontsize=9, color="white")
    ax.set_ylabel("tokens / s (median step; whiskers: slowest..fastest step)")
    ax.set_title(f"training throughput, B={report['run']['batch_size']} T={report['run']['seq_len']} "
                 f"{report['run']['dtype']}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _savefig(fig, out / "throughput.png")


def plot_attention(report: dict, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["backends"])
    # attention: grouped bars per variant, one bar per backend, fwd and fwd+bwd panels
    rows = report["attention"]["rows"]
    variants = list(dict.fromkeys((r["kind"], r["n_kv_head"], r["window"]) for r in rows))
    labels = [f"{k} kv={kv}\n{'full' if w is None else f'win {w}'}" for k, kv, w in variants]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(names)
    for ax, key, title in zip(axes, ("fwd_ms", "fwd_bwd_ms"), ("forward", "forward + backward")):
        for i, n in enumerate(names):
            vals = [next(r[key] for r in rows if r["backend"] == n and (r["kind"], r["n_kv_head"], r["window"]) == v)
                    for v in variants]
            ax.bar(np.arange(len(variants)) + i * width, vals, width, label=n)
        ax.set_xticks(np.arange(len(variants)) + width * (len(names) - 1) / 2, labels, fontsize=7)
        ax.set_ylabel("ms (median)")
        ax.set_title(f"attention {title}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, out / "attention.png")


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/compare.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=None, help="output directory (default: benchmarks/results/compare-TIMESTAMP)")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--preset", default=None, choices=list(PRESETS), help="model preset (default: the DESIGN.md "
                   "comparison config, GPT-2 classic 6x384, 6 heads, T=256)")
    m.add_argument("--config", default=None, help="ModelConfig JSON: a file or an inline object")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 8; --quick 4)")
    p.add_argument("--seq-len", type=int, default=None, help="context length (default: the config's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 8; --quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="timed chunks per backend, order alternated (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (compilation; default 2)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="fp32 (TF32 off) or bf16 compute")
    p.add_argument("--backends", default=None, help=f"comma-separated, from {','.join(ALL_BACKENDS)} "
                   "(default: all available)")
    p.add_argument("--data", default=None, help="prepared shard directory (default: ../shared/data/fineweb_edu "
                   "prepared once into the nano cache, or the builtin text)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine schedule with warm-up)")
    p.add_argument("--eval-batches", type=int, default=None, help="val batches for the final val loss / bpb")
    p.add_argument("--attn-reps", type=int, default=None, help="timed repetitions per attention variant")
    p.add_argument("--no-attention", action="store_true", help="skip the attention section")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and the batch order")
    p.add_argument("--quick", action="store_true", help="seconds: a very small model and few steps (CI)")
    return p


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    try:
        return compare(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


def compare(args, log=print) -> Path:
    backends = resolve_backends(args.backends)  # before any slow work: a typo fails in one line, at once
    size = DEFAULTS["quick" if args.quick else "full"]
    hp = SimpleNamespace(**{k: (getattr(args, k, None) if getattr(args, k, None) is not None else v)
                            for k, v in size.items()})
    for name in ("batch_size", "steps", "repeats", "eval_batches", "attn_reps"):
        if getattr(hp, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(hp, name)}")
    if hp.warmup < 1:
        raise ValueError(f"--warmup must be >= 1 (the first step compiles), got {hp.warmup}")
    total = hp.warmup + hp.steps * hp.repeats
    hp.__dict__.update(lr=args.lr, min_lr_frac=0.1, warmup_steps=max(1, total // 5), max_steps=total,
                       schedule="cosine", decay_frac=0.2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
                       grad_clip=1.0, seed=args.seed)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)

    notices: list[str] = []
    if any(b.startswith("mlx-cpu") for b in backends):
        from nano_mlx.train import blas_notice

        if (tip := blas_notice()) is not None:
            tip = tip.replace("python -m nano_mlx.train ...", "python benchmarks/compare.py ...")
            notices.append(tip)
            log(tip)

    data_dir, data_source = resolve_data(args.data, log)
    vocab = int(load_manifest(data_dir)["vocab_size"])
    cfg = resolve_config(args, vocab)
    T = cfg.seq_len
    loader = ShardLoader(data_dir, hp.batch_size, T, split="train", seed=args.seed)
    batches = [loader.next_batch() for _ in range(total)]
    lrs = [lr_at(i, hp) for i in range(total)]
    tok = loader.tokenizer
    weights = init_weights(cfg, args.seed)
    log(f"compare: {', '.join(backends)} | {cfg.num_params() / 1e6:.2f}M params, B={hp.batch_size} T={T} "
        f"{args.dtype} | {hp.warmup} warm-up + {hp.steps} x {hp.repeats} steps per backend | out {out}")

    sessions = {}
    for name in backends:
        framework, device = name.split("-")
        # the OpenBLAS preload is for MLX; inside PyTorch it made the fp32 step 3.5x slower (nano_core/host.py)
        with without_openblas_preload() if framework == "torch" else contextlib.nullcontext():
            sessions[name] = Isolated(framework, device, cfg, weights, args.dtype, hp)

    rec = run_training(sessions, batches, lrs, hp)
    val = {n: s.evaluate(data_dir, hp.batch_size, T, hp.eval_batches, tok.token_byte_lengths())
           for n, s in sessions.items()}

    env = environment(backends, notices)
    est = cfg.estimate_flops()
    indep = count_flops(weights, cfg)
    flops = {"per_token_estimate": est, "per_token_independent": indep["total"], "ratio": indep["total"] / est,
             "convention": FLOP_CONVENTION,
             "breakdown": {"matmul_fwd": indep["matmul_fwd"], "attention_fwd": indep["attention_fwd"]}}
    tokens = hp.batch_size * T
    report_backends = {}
    for name, s in sessions.items():
        r = rec[name]
        ms = stats_ms(r["times"])
        tps = tokens / (ms["median"] / 1e3)
        measured, measured_src = s.peak_flops()
        known = chips.known_gpu_peak(env["cpu"], args.dtype, env["gpu_cores"]) if s.device_name in ("gpu", "mps") \
            else None
        report_backends[name] = {
            "framework": s.framework, "device": s.device_name, "step": s.step_name,
            "tok_per_s": tps, "tok_per_s_mean": tokens * len(r["times"]) / sum(r["times"]), "ms_per_step": ms,
            "repeat_tok_per_s": r["repeat_tok_per_s"],
            "peak_flops": {"measured": measured, "measured_source": measured_src,
                           "known": known[0] if known else None, "known_source": known[1] if known else None},
            "mfu": {"measured": est * tps / measured, "known": est * tps / known[0] if known else None,
                    "independent_measured": indep["total"] * tps / measured},
            "peak_memory": {"bytes": int(s.memory.peak), "method": s.memory.method},
            "loss": r["losses"], "final_loss": r["losses"][-1], "val": val[name],
        }
    attention = (run_attention(sessions, cfg, hp.batch_size, hp.attn_reps, args.seed)
                 if not args.no_attention and cfg.arch == "gpt" else {"rows": [], "skipped": True})
    for s in sessions.values():
        s.close()
    report = {
        "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "env": env, "config": cfg.to_dict(),
        "run": {"batch_size": hp.batch_size, "seq_len": T, "dtype": args.dtype, "warmup": hp.warmup,
                "steps": hp.steps, "repeats": hp.repeats, "total_steps": total, "lr": hp.lr, "schedule": hp.schedule,
                "warmup_steps": hp.warmup_steps, "grad_clip": hp.grad_clip, "weight_decay": hp.weight_decay,
                "seed": args.seed, "eval_batches": hp.eval_batches, "data": str(data_dir),
                "data_source": data_source, "backends": backends, "quick": bool(args.quick)},
        "flops": flops, "backends": report_backends, "parity": parity(rec, val, args.dtype),
        "attention": attention,
        "files": ["report.json", "report.md", "loss.png", "throughput.png", "attention.png"],
    }
    if attention.get("skipped"):
        report["files"].remove("attention.png")
    plot_all(report, out)
    if not attention.get("skipped"):
        plot_attention(report, out)
    _atomic_write(out / "report.json", json.dumps(report, indent=1))
    write_markdown(report, out / "report.md")

    log("")
    log(text_table(SUMMARY_HEADER, summary_rows(report)))
    log(f"FLOPs/token: estimate_flops {est:,} | independent count {indep['total']:,} | ratio {flops['ratio']:.4f}")
    for n, p in report["parity"]["pairs"].items():
        log(f"loss parity {n} vs {report['parity']['reference']}: max rel {p['max_rel_diff']:.2e}, final "
            f"{p['final_rel_diff']:.2e} ({'ok' if p['within_tolerance'] else 'above tolerance'} at "
            f"{report['parity']['tolerance']:g})")
    if attention["rows"]:
        log("")
        log(text_table(ATTN_HEADER, attention_rows(attention)))
    for tip in notices:
        log(tip)
    log(f"wrote {out}/report.json, report.md and the plots")
    return out


if __name__ == "__main__":
    main()
