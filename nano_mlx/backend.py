"""MLX behind nano_core's backend interface (nano_core/backend.py): the Metal GPU or the CPU. Mirror of
nano_torch/backend.py: the same class, the same methods in the same order; only the framework differs.

Precision: MLX has no autocast. bf16 casts the fp32 master weights to bf16 inside the loss function, so gradients
flow back to the fp32 masters and AdamW updates those; evaluation and sampling run on a bf16 copy (inference()).
The whole train step (forward, backward, accumulation, clipping, AdamW) is one mx.compile'd function with
[model.state, optimizer.state, mx.random.state] as inputs and outputs, evaluated with one mx.eval per step; the
learning rate goes in through optimizer.state (no retrace). A step with a loss mask is a second compiled function
(its own input signature), so the unmasked step is the same graph it always was. Under LoRA the frozen base is cast
to the compute dtype once per step, the adapters (the only trainable parameters) inside the loss as above.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import math
import os
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

from nano_core.backend import step_seed
from nano_core.config import ModelConfig
from nano_core.distributed import Watchdog
from nano_core.host import OPENBLAS_GLOBS, apple_gpu_has_bf16, cpu_brand, mapped_libraries
from nano_core.lora import LoraConfig, init_adapters, mask_weights
from nano_core.metrics import probe_peak_flops
from nano_mlx.model import GPT
from nano_mlx.optim import (build_optimizer, clip_grad_norm, load_optimizer_state_numpy, optimizer_state_numpy,
                            set_lr, set_momentum)

COMPUTE_DTYPES = {"fp32": mx.float32, "bf16": mx.bfloat16}


# ----------------------------------------------------------------------------- device, dtype, kernels
def pick_device(name: str) -> str:
    if name == "auto":
        return "gpu" if mx.is_available(mx.gpu) else "cpu"
    if name not in ("gpu", "cpu"):
        raise ValueError(f"--device {name} is not an MLX device; use auto, gpu or cpu")
    if not mx.is_available(getattr(mx, name)):
        raise ValueError(f"--device {name} is not available on this machine; use --device auto")
    return name


def pick_dtype(name: str, device: str, brand: str | None = None) -> tuple[str, str]:
    """(fp32 | bf16, why). Master weights and optimizer states stay fp32; bf16 is the compute dtype. `brand` is the
    chip's name (nano_core.host.cpu_brand), read only for auto on the GPU."""
    if name == "auto":
        if device != "gpu":  # MLX's CPU backend has no fast bf16 path
            return "fp32", "auto: fp32 on the MLX CPU backend"
        brand = cpu_brand() if brand is None else brand
        # bf16 only where the GPU computes it in hardware (M3 on); nano trains no fp16 (no loss scaling), so M1/M2
        # train in fp32. benchmarks/compare.py --dtype fp32,bf16 measures both on the owner's chip.
        if apple_gpu_has_bf16(brand):
            return "bf16", f"auto: {brand} has bf16 on its GPU"
        return "fp32", f"auto: no bf16 hardware on the GPU of {brand or 'this chip'} (--dtype bf16 to try it)"
    if name == "fp16":
        raise ValueError("--dtype fp16 is not supported by nano_mlx (no loss scaling); use --dtype bf16 or fp32")
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"--dtype {name} is not one of auto, {', '.join(COMPUTE_DTYPES)}")
    return name, "as asked"


def gpu_info() -> dict:
    """The Metal device's properties: mx.device_info() from MLX 0.30.4, mx.metal.device_info() before (macOS 13
    installs MLX 0.29.3 at most, which has only the latter)."""
    info = getattr(mx, "device_info", None) or mx.metal.device_info
    return info()


def pick_attn_impl(name: str, device: str, dtype: str) -> str:
    """auto: the fused mx.fast kernel everywhere (flash is a PyTorch/CUDA kernel: asking for it is an error)."""
    if name == "flash":
        raise ValueError("--attn-impl flash is a PyTorch/CUDA kernel; nano_mlx has sdpa (mx.fast) and eager")
    return "sdpa" if name == "auto" else name


@contextlib.contextmanager
def compute_dtype(model, dtype: str):
    """Run the block on a copy of the weights in the compute dtype, then put the fp32 masters back."""
    if dtype == "fp32":
        yield
        return
    masters = model.parameters()
    model.update(tree_map(lambda p: p.astype(COMPUTE_DTYPES[dtype]), masters))
    try:
        yield
    finally:
        model.update(masters)


def blas_notice() -> str | None:
    """On Linux the mlx[cpu] wheel links the reference BLAS (far slower matmuls than OpenBLAS). Look at what is
    loaded in this process (nothing is timed) and, when an OpenBLAS is installed, say how to preload it. The
    numerics are never changed behind the user's back: this only prints."""
    if not sys.platform.startswith("linux") or (libs := mapped_libraries()) is None:
        return None
    # numpy's own OpenBLAS (libscipy_openblas64_) uses suffixed symbols that MLX cannot bind to: look for a plain
    # libopenblas, which is what an LD_PRELOAD puts in front of the reference libblas.
    if any(Path(lib).name.startswith("libopenblas") for lib in libs):
        return None
    if not any("libblas" in Path(lib).name for lib in libs):
        return None  # some other BLAS (MKL, BLIS, ...): nothing known to say
    found = [p for g in OPENBLAS_GLOBS for p in sorted(glob.glob(g))]
    if found:
        return (f"notice: MLX's CPU backend runs on the reference BLAS here (~30x slower matmuls); the nano_mlx "
                f"commands preload the installed OpenBLAS themselves unless NANO_OPENBLAS=0; from your own Python, "
                f"start it with LD_PRELOAD={found[0]}")
    return ("notice: MLX's CPU backend runs on the reference BLAS here (~30x slower matmuls); install OpenBLAS "
            "(apt-get install libopenblas0-pthread) and the nano_mlx commands preload it, or use "
            "python -m nano_torch.train")


# ----------------------------------------------------------------------------- the backend
class Backend:
    name = "mlx"
    rank, world_size = 0, 1  # until init_distributed finds a launcher
    group = None
    memory_label = "peak memory"  # mx.get_peak_memory is a true peak on the GPU and the CPU

    def __init__(self, device: str = "auto", dtype: str = "auto", attn_impl: str = "auto", compile: bool | None = None):
        self.device = pick_device(device)
        self.dtype, self.dtype_why = pick_dtype(dtype, self.device)
        self.attn_impl = pick_attn_impl(attn_impl, self.device, self.dtype)
        self._notices = [n for n in [blas_notice() if self.device == "cpu" else None] if n]
        self.compile = compile is not False  # on unless asked off: the compiled step is the measured default
        self.mx_device = getattr(mx, self.device)
        mx.set_default_device(self.mx_device)

    # -- the machine --------------------------------------------------------------------------------------------
    def notices(self) -> list[str]:
        return list(self._notices)

    def set_memory_limit(self, gb: float | None) -> str | None:
        if self.device == "gpu":
            # Wire the model's working set (no paging mid-step) and bound the buffer cache, as mlx-lm does.
            recommended = gpu_info().get("max_recommended_working_set_size")
            if recommended:
                mx.set_wired_limit(int(recommended))
                mx.set_cache_limit(int(recommended) // 4)
        if gb is not None:
            mx.set_memory_limit(int(gb * 2**30))
        return None

    def measure_peak_flops(self) -> tuple[float, str]:
        # 1024 on CPU: with the reference BLAS of the Linux wheel a 2048 probe alone would take seconds
        n = 1024 if self.device == "cpu" else 4096
        a = mx.full((n, n), 1.0 / n, dtype=COMPUTE_DTYPES[self.dtype])  # constant data: no RNG draws
        b = mx.full((n, n), 0.5, dtype=COMPUTE_DTYPES[self.dtype])
        mx.eval(a, b)

        def matmul():
            mx.eval(a @ b)

        return probe_peak_flops(matmul, n), f"measured {n}x{n} {self.dtype} matmul on mlx {self.device}"

    def peak_memory(self) -> tuple[int, str]:
        return mx.get_peak_memory(), "mx.get_peak_memory (the MLX allocator)"

    def reset_peak_memory(self) -> None:
        mx.reset_peak_memory()

    def sync(self) -> None:
        mx.synchronize()

    # -- several processes ------------------------------------------------------------------------------------------
    def init_distributed(self, timeout: float) -> tuple[int, int]:
        if not any(v in os.environ for v in ("MLX_RANK", "MLX_HOSTFILE", "OMPI_COMM_WORLD_SIZE", "MLX_WORLD_SIZE")):
            return 0, 1  # started alone: no backend to try
        hostfile = os.environ.get("MLX_HOSTFILE")
        named = hostfile and not hostfile.lstrip().startswith("[")  # a path, not mlx.launch's inline JSON
        what = f"the hostfile {hostfile}" if named else "mlx.launch's hosts"
        try:
            with Watchdog(timeout, f"rank {os.environ.get('MLX_RANK', '?')} could not connect to the other ranks "
                                   f"listed in {what}; check that every host is reachable at the IPs given and runs "
                                   f"the same command (mlx.distributed_config --help writes a hostfile)"):
                group = mx.distributed.init()
                mx.eval(mx.distributed.all_sum(mx.array(1), group=group, stream=mx.cpu))  # everyone is there
        except RuntimeError as e:  # a hostfile that is not JSON, a peer that refused the connection
            raise ValueError(f"could not start mx.distributed from {what}: {str(e).strip().splitlines()[0]}; check "
                             f"the hostfile (mlx.distributed_config writes one) and that every host is up") from None
        self.group, self.rank, self.world_size = group, group.rank(), group.size()
        return self.rank, self.world_size

    def all_max(self, value: int) -> int:
        return int(mx.distributed.all_max(mx.array(value), group=self.group, stream=mx.cpu).item())

    def barrier(self) -> None:
        if self.world_size > 1:
            mx.eval(mx.distributed.all_sum(mx.array(0), group=self.group, stream=mx.cpu))

    def close_distributed(self) -> None:
        pass  # the group lives as long as the process

    # -- model ----------------------------------------------------------------------------------------------------
    def build_model(self, cfg: ModelConfig, weights, grad_checkpoint: bool = False, lora: LoraConfig | None = None,
                    adapters=None, seed: int = 0):
        if adapters is not None and lora is None:
            raise ValueError("adapters were given without a LoRA config; pass lora= too")
        model = GPT(cfg, attn_impl=self.attn_impl, lora=lora)
        model.load_numpy(weights)
        if lora is not None:
            model.load_adapters(init_adapters(cfg, lora, seed) if adapters is None else adapters)
        model.grad_checkpoint = grad_checkpoint
        model.train()
        return model

    def model_weights(self, model) -> dict[str, np.ndarray]:
        return model.to_numpy()

    def adapter_weights(self, model) -> dict[str, np.ndarray]:
        return model.to_numpy(adapters=True)

    def num_params(self, model) -> int:
        return sum(p.size for _, p in tree_flatten(model.trainable_parameters()))

    def num_total_params(self, model) -> int:
        return sum(p.size for _, p in tree_flatten(model.parameters()))

    # -- optimizer ------------------------------------------------------------------------------------------------
    def build_optimizer(self, model, lr: float, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1,
                        optimizer: str = "adamw", muon_lr: float = 0.02, muon_momentum: float = 0.95,
                        muon_ns: str = "keller", normuon: bool = False, cautious_wd: bool = False,
                        embed_lr: float | None = None, head_lr: float | None = None):
        # Muon's Newton-Schulz runs in the compute dtype: bf16 matmuls where the run is bf16, fp32 otherwise
        return build_optimizer(model, lr, betas, eps, weight_decay, optimizer, muon_lr, muon_momentum,
                               ns_dtype="bf16" if self.dtype == "bf16" else "fp32", muon_ns=muon_ns,
                               normuon=normuon, cautious_wd=cautious_wd,
                               embed_lr=embed_lr, head_lr=head_lr)

    def set_momentum(self, optimizer, momentum: float) -> None:
        set_momentum(optimizer, momentum)

    def optimizer_state(self, optimizer, model) -> dict[str, np.ndarray]:
        return optimizer_state_numpy(optimizer, model)

    def load_optimizer_state(self, optimizer, model, state) -> None:
        load_optimizer_state_numpy(optimizer, model, state)

    # -- training -------------------------------------------------------------------------------------------------
    def make_train_step(self, model, optimizer, grad_accum: int, grad_clip: float, seed: int):
        cast = COMPUTE_DTYPES[self.dtype]
        group, world, rank = self.group, self.world_size, self.rank

        def loss_fn(params, x, y, w=None):
            # The model runs on (a bf16 copy of) `params`, so the gradient is taken w.r.t. the fp32 masters.
            model.update(params if cast == mx.float32 else tree_map(lambda p: p.astype(cast), params))
            # masked: sum(nats * mask) / (the whole step's mask sum), so the micro-batches add up to the step's mean
            return model.loss(x, y) / grad_accum if w is None else model.loss(x, y, w)

        grad_fn = mx.value_and_grad(loss_fn)

        def update(batch, weights=None):
            params = model.trainable_parameters()
            masters = model.parameters() if model.lora is not None else params
            if model.lora is not None and cast != mx.float32:  # the frozen base runs in the compute dtype too
                model.update(tree_map(lambda p: p.astype(cast), masters))
            total, grads = 0.0, None
            for i in range(grad_accum):  # unrolled: grad_accum is fixed for the run, so the graph shape is too
                xy = (batch[i, :, :-1], batch[i, :, 1:])
                loss, g = grad_fn(params, *xy) if weights is None else grad_fn(params, *xy, weights[i])
                total = total + loss
                grads = g if grads is None else tree_map(mx.add, grads, g)
            model.update(masters)  # the fp32 masters back in place of the bf16 copies
            if world > 1:  # the mean gradient and the mean loss over the ranks, by the engine's own all-reduce
                grads = nn.average_gradients(grads, group=group)
                total = mx.distributed.all_sum(total, group=group) / world
            grads, norm = clip_grad_norm(grads, grad_clip if grad_clip > 0 else math.inf)  # 0: no clipping
            optimizer.update(model, grads)
            return total + 0.0 * norm  # NaN/inf when the gradients are: the loop sees it in the loss

        masked_update = update
        if self.compile:  # one compiled function per input signature: with and without a loss mask
            state = [model.state, optimizer.state, mx.random.state]
            masked_update = mx.compile(update, inputs=state, outputs=state)
            update = mx.compile(functools.partial(update, weights=None), inputs=state, outputs=state)

        def step(batch: np.ndarray, lr: float, index: int, mask: np.ndarray | None = None):
            mx.random.seed(step_seed(seed, index) + rank)  # dropout masks: a function of (seed, step, rank)
            set_lr(optimizer, lr)
            x = mx.array(batch).reshape(grad_accum, -1, batch.shape[1])
            if mask is None:
                loss = update(x)
            else:
                loss = masked_update(x, mx.array(mask_weights(mask, batch)).reshape(grad_accum, -1, x.shape[2] - 1))
            mx.eval(loss, model.state, optimizer.state)  # the one evaluation per step
            return loss

        return step

    def loss_value(self, loss) -> float:
        return float(loss.item())

    # -- inference ------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def inference(self, model):
        was_training = model.training
        model.eval()
        try:
            with compute_dtype(model, self.dtype):
                yield
        finally:
            model.train(was_training)

    def token_losses(self, model, batch: np.ndarray) -> np.ndarray:
        t = mx.array(batch)
        logits = model(t[:, :-1])
        return np.array(nn.losses.cross_entropy(logits.astype(mx.float32), t[:, 1:], reduction="none"))

    def make_cache(self, model, batch_size: int, max_len: int):
        return model.make_cache(batch_size, max_len)

    def next_logits(self, model, ids, cache) -> np.ndarray:
        rows = np.asarray(ids, dtype=np.int32)
        logits = model(mx.array(rows.reshape(-1, rows.shape[-1])), cache=cache)
        last = np.array(logits[:, -1].astype(mx.float32))
        return last if rows.ndim == 2 else last[0]
