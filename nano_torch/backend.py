"""PyTorch behind nano_core's backend interface (nano_core/backend.py): CUDA, MPS or CPU. Mirror of
nano_mlx/backend.py: the same class, the same methods in the same order; only the framework differs.

Precision: weights and AdamW moments are fp32; bf16/fp16 are autocast around the forward (fp16 with a GradScaler,
CUDA only). The train step is eager by default; `compile=True` wraps the model's loss in torch.compile (never on
MPS, where it is a prototype).
"""
from __future__ import annotations

import contextlib
import math
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from nano_core.backend import step_seed
from nano_core.config import ModelConfig
from nano_core.distributed import Watchdog
from nano_core.host import peak_rss, preloaded_openblas, reset_peak_rss
from nano_core.lora import LoraConfig, init_adapters, mask_weights
from nano_core.metrics import probe_peak_flops
from nano_torch.kernels import linear
from nano_torch.model import GPT
from nano_torch.optim import (build_optimizer, clip_grad_norm_, load_optimizer_state_numpy, optimizer_state_numpy,
                              set_lr, set_momentum)

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# What peak_memory() measures on MPS, where PyTorch keeps no peak: the driver's allocation (the allocator's cache
# included) at the moments it was read, the largest of them. Not the true peak, which may fall between two reads.
MPS_MEMORY = "largest torch.mps.driver_allocated_memory() read (allocator cache included; not a true peak)"
SYNC = {"cuda": lambda: torch.cuda.synchronize(), "mps": lambda: torch.mps.synchronize(), "cpu": lambda: None}


# ----------------------------------------------------------------------------- device, dtype, kernels
def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name not in available:
        raise ValueError(f"--device {name} is not a PyTorch device here; use auto, cuda, mps or cpu")
    if not available[name]:
        raise ValueError(f"--device {name} is not available on this machine; use --device auto")
    return name


def cpu_has_fast_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX-512-BF16 or AMX): read from /proc/cpuinfo, nothing is timed."""
    try:
        flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "").split()
    except OSError:  # not Linux
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


FAST_BF16 = {
    "cuda": lambda: torch.cuda.is_bf16_supported(),
    "cpu": cpu_has_fast_bf16,
    "mps": lambda: False,  # works, but slower than fp32 on Apple GPUs: opt in with --dtype bf16
}


def pick_dtype(name: str, device: str) -> tuple[str, str]:
    """(fp32 | bf16 | fp16, why). Weights and optimizer states stay fp32; bf16/fp16 mean autocast."""
    if name == "auto":
        return ("bf16", f"auto: {device} has fast bf16") if FAST_BF16[device]() else \
            ("fp32", f"auto: no fast bf16 on {device}")
    if name not in AUTOCAST_DTYPES:
        raise ValueError(f"--dtype {name} is not one of auto, {', '.join(AUTOCAST_DTYPES)}")
    if name == "fp16" and device != "cuda":
        raise ValueError("--dtype fp16 needs CUDA (loss scaling); use --dtype bf16 or fp32 here")
    return name, "as asked"


def pick_attn_impl(name: str, device: str, dtype: str) -> str:
    """auto: sdpa, except bf16 on a CPU, where the eager path (nano_torch/kernels.py) is the faster kernel (in fp32
    the two are level and sdpa uses less memory); benchmarks/step_speed.py measures both."""
    if name != "auto":
        return name
    return "eager" if (device == "cpu" and dtype == "bf16") else "sdpa"


def autocast(device: str, dtype: str):
    # keyed on the device type, so MPS gets MPS autocast (not CPU's) and fp32 gets no autocast at all
    amp = AUTOCAST_DTYPES[dtype]
    return torch.autocast(device_type=device, dtype=amp) if amp is not None else contextlib.nullcontext()


def blas_notice() -> str | None:
    """An OpenBLAS preloaded for nano_mlx (LD_PRELOAD) reaches PyTorch's CPU kernels too, and its thread pool
    competes with PyTorch's on the same cores (see docs/benchmarks.md). This only prints."""
    lib = preloaded_openblas()
    if lib is None:
        return None
    return (f"notice: LD_PRELOAD={lib} is meant for nano_mlx; inside PyTorch it makes CPU steps several times "
            f"slower (two thread pools on the same cores): run nano_torch without it")


class LossModule(torch.nn.Module):
    """The model's loss as a module's forward: DistributedDataParallel hooks the gradient all-reduce into the
    forward it wraps, and the train step calls the loss, not the logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y, w=None):
        return self.model.loss(x, y, w)


# ----------------------------------------------------------------------------- the backend
class Backend:
    name = "torch"
    rank, world_size = 0, 1  # until init_distributed finds a launcher

    def __init__(self, device: str = "auto", dtype: str = "auto", attn_impl: str = "auto", compile: bool | None = None):
        self.device = pick_device(device)
        self.dtype, self.dtype_why = pick_dtype(dtype, self.device)
        self.attn_impl = pick_attn_impl(attn_impl, self.device, self.dtype)
        self._notices = [n for n in [blas_notice() if self.device == "cpu" else None] if n]
        self.compile = bool(compile)  # off unless asked: eager is the measured default
        if self.compile and self.device == "mps":
            self._notices.append("notice: torch.compile is a prototype on MPS; running eagerly")
            self.compile = False
        self.torch_device = torch.device(self.device)
        self._mps_seen = 0  # the largest MPS driver allocation read by peak_memory()
        self.memory_label = "MPS driver memory" if self.device == "mps" else "peak memory"

    # -- the machine --------------------------------------------------------------------------------------------
    def notices(self) -> list[str]:
        return list(self._notices)

    def set_memory_limit(self, gb: float | None) -> str | None:
        if gb is None:
            return None
        if self.device == "cuda":
            total = torch.cuda.get_device_properties(self.torch_device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, gb * 2**30 / total), self.torch_device)
        elif self.device == "mps":
            torch.mps.set_per_process_memory_fraction(min(2.0, gb * 2**30 / torch.mps.recommended_max_memory()))
        else:
            return f"notice: --memory-limit is ignored on {self.device}"
        return None

    def measure_peak_flops(self) -> tuple[float, str]:
        n = 2048 if self.device == "cpu" else 4096
        tdtype = AUTOCAST_DTYPES[self.dtype] or torch.float32
        a = torch.full((n, n), 1.0 / n, dtype=tdtype, device=self.torch_device)  # constant data: no RNG draws
        b = torch.full((n, n), 0.5, dtype=tdtype, device=self.torch_device)

        def matmul():
            linear(a, b)  # the model's own GEMM path (oneDNN for fp32 on x86 CPUs): MFU compares like with like
            self.sync()

        return probe_peak_flops(matmul, n), f"measured {n}x{n} {self.dtype} matmul, {torch.get_num_threads()} threads"

    def peak_memory(self) -> tuple[int, str]:
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated(self.torch_device), "torch.cuda.max_memory_allocated"
        if self.device == "mps":  # PyTorch keeps no MPS peak: the largest driver allocation read so far
            self._mps_seen = max(self._mps_seen, torch.mps.driver_allocated_memory())
            return self._mps_seen, MPS_MEMORY
        return peak_rss()

    def reset_peak_memory(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats(self.torch_device)
        elif self.device == "mps":
            self._mps_seen = 0
        elif self.device == "cpu":
            reset_peak_rss()

    def sync(self) -> None:
        SYNC[self.device]()

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """A host batch on the training device. Asynchronous only on CUDA: on MPS a non-blocking copy from unpinned
        numpy memory can read the buffer after it was freed or reused (PyTorch issues 139550, 189690), and the loop
        runs several steps ahead of the GPU between syncs, so the batch is copied before the call returns."""
        return torch.from_numpy(array).to(self.torch_device, non_blocking=self.device == "cuda")

    # -- several processes ------------------------------------------------------------------------------------------
    def init_distributed(self, timeout: float) -> tuple[int, int]:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return 0, 1
        if self.device == "mps":
            raise ValueError("PyTorch cannot all-reduce MPS tensors across processes (gloo takes CPU tensors, NCCL "
                             "needs CUDA); train on several Macs with `mlx.launch ... -- python -m nano_mlx.train`, "
                             "or use --device cpu")
        if self.device == "cuda":  # one GPU per process, as torchrun numbers them on each node
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.torch_device = torch.device("cuda", local)
        engine = "nccl" if self.device == "cuda" else "gloo"
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        with Watchdog(timeout, f"rank {os.environ.get('RANK', '?')} could not reach the other {world - 1} ranks "
                               f"at {where} ({engine}); check that every node runs the same torchrun command with "
                               f"a reachable --master-addr and a free --master-port"):
            dist.init_process_group(engine)
            dist.barrier()  # everyone is there before anything else starts
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        return self.rank, self.world_size

    def all_max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.torch_device if self.device == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close_distributed(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

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
        return model.to(self.torch_device).train()

    def model_weights(self, model) -> dict[str, np.ndarray]:
        return model.to_numpy()

    def adapter_weights(self, model) -> dict[str, np.ndarray]:
        return model.to_numpy(adapters=True)

    def num_params(self, model) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def num_total_params(self, model) -> int:
        return sum(p.numel() for p in model.parameters())

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
        ddp = None
        if self.world_size > 1:  # DDP averages the gradients over the ranks during the last micro-batch's backward
            # broadcast_buffers=False: the only buffers (RoPE tables, sinusoidal positions) are constants, the same
            # on every rank; DDP would otherwise re-send them from rank 0 before every micro-batch
            ddp = torch.nn.parallel.DistributedDataParallel(
                LossModule(model), device_ids=[self.torch_device.index] if self.device == "cuda" else None,
                broadcast_buffers=False)
        loss_fn = ddp if ddp is not None else model.loss
        loss_fn = torch.compile(loss_fn) if self.compile else loss_fn
        ctx = autocast(self.device, self.dtype)
        scaler = torch.amp.GradScaler(self.device) if self.dtype == "fp16" else None
        rank = self.rank

        def step(batch: np.ndarray, lr: float, index: int, mask: np.ndarray | None = None):
            torch.manual_seed(step_seed(seed, index) + rank)  # dropout masks: a function of (seed, step, rank)
            set_lr(optimizer, lr)
            t = self.to_device(batch).long()
            w = None if mask is None else \
                self.to_device(mask_weights(mask, batch)).view(grad_accum, -1, t.shape[1] - 1)
            total = 0.0
            for i, micro in enumerate(t.view(grad_accum, -1, t.shape[1])):
                # only the last micro-batch all-reduces: the others accumulate locally
                sync = ddp.no_sync() if ddp is not None and i < grad_accum - 1 else contextlib.nullcontext()
                with sync:
                    with ctx:  # masked: each micro-batch adds sum(nats * mask) / (the whole step's mask sum)
                        loss = loss_fn(micro[:, :-1], micro[:, 1:]) / grad_accum if w is None else \
                            loss_fn(micro[:, :-1], micro[:, 1:], w[i])
                    (scaler.scale(loss) if scaler else loss).backward()
                total = total + loss.detach()
            if ddp is not None:  # the loss every rank shows is the mean over the ranks (one scalar all-reduce)
                dist.all_reduce(total)
                total = total / self.world_size
            if scaler:
                scaler.unscale_(optimizer)
            norm = clip_grad_norm_(model, grad_clip if grad_clip > 0 else math.inf)  # 0: no clipping, norm only
            if not scaler:  # (fp16: inf gradients are the GradScaler's business, it skips those steps itself)
                total = total + 0.0 * norm  # NaN/inf when the gradients are: the loop sees it in the loss
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return total

        return step

    def loss_value(self, loss) -> float:
        return float(loss.item())

    # -- inference ------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def inference(self, model):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.dtype):
                yield
        finally:
            model.train(was_training)

    def token_losses(self, model, batch: np.ndarray) -> np.ndarray:
        t = self.to_device(batch).long()
        logits = model(t[:, :-1])
        nats = F.cross_entropy(logits.float().flatten(0, 1), t[:, 1:].flatten(), reduction="none")
        return nats.view(t.shape[0], -1).cpu().numpy()

    def make_cache(self, model, batch_size: int, max_len: int):
        return model.make_cache(batch_size, max_len)

    def next_logits(self, model, ids, cache) -> np.ndarray:
        rows = np.asarray(ids, dtype=np.int64)
        logits = model(torch.tensor(rows.reshape(-1, rows.shape[-1]), device=self.torch_device), cache=cache)
        last = logits[:, -1].float().cpu().numpy()
        return last if rows.ndim == 2 else last[0]
