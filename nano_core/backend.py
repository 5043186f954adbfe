"""What a framework has to supply: the backend interface that nano_torch/backend.py and nano_mlx/backend.py implement.

Everything that is not framework code lives once in nano_core: the training loop (loop.py), evaluation,
generation, checkpoints, schedules, metrics. They talk to a framework only through the methods below, so a new
feature (an optimizer, an eval task, an export) is written once and a new backend is one file.

The contract, in words:
- Arrays cross the boundary as numpy, under the canonical parameter names of nano_core.init: weights and optimizer
  state go in and out as dict[str, np.ndarray] (float32), batches come in as int32 (rows, T+1) windows.
- The model and the optimizer are the framework's own objects; nano_core never looks inside them, it passes them
  back to the backend. A model has `.cfg` (its ModelConfig).
- The train step is the whole optimizer step: forward, backward, gradient accumulation over micro-batches, global
  norm clipping, the AdamW update (bias-corrected, decoupled decay on >= 2-D weights only). It returns the mean
  loss as a framework scalar without waiting for it (where the framework queues work); `loss_value` waits. The
  global gradient norm is folded into that loss (loss + 0 * norm): it is NaN/inf when the loss or the gradients
  are, so the loop catches a divergence at the exact step from the values it reads anyway. Randomness inside the step
  (dropout) is a pure function of (seed, step): the step reseeds the framework's generator from
  `step_seed(seed, step)`, so a resumed run draws what the uninterrupted run drew, whichever backend wrote the
  checkpoint, and no RNG state has to be saved.
- Loss masks (instruction data): the step takes an optional float32 (rows, T) `mask`, 1 where a target counts. The
  step's loss is then the mean over the counted targets of the whole step: each micro-batch contributes
  sum(nats * mask) / (the mask sum of the step) (nano_core.lora.mask_weights), so accumulation gives what one big
  batch gives. Without a mask the step is exactly the unmasked one (the same numbers, bit for bit).
- LoRA (nano_core/lora.py): `build_model(..., lora=LoraConfig)` attaches low-rank adapters beside the Linear weights
  they adapt (`h.{i}.attn.wq.lora_a` (r, in), `...lora_b` (out, r)) and freezes the base: it holds no gradients and
  gets no optimizer state. "Trainable parameters" then means the adapters everywhere below (num_params, the
  optimizer, optimizer_state); model_weights stays the base, adapter_weights gives the adapters.
- `inference(model)` is a context for evaluation and sampling: eval mode, no gradients, the training compute dtype.
- A backend is a plain class (no base class to inherit): `Backend(device=..., dtype=..., attn_impl=..., compile=...)`
  resolves "auto" for each of them and raises ValueError with a one-line message for a choice that cannot run.

tests/test_backend.py runs one contract suite against both implementations.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable, Protocol

import numpy as np

from nano_core.config import ModelConfig
from nano_core.lora import LoraConfig

Weights = dict[str, np.ndarray]


def step_seed(seed: int, step: int) -> int:
    """The seed of the framework RNG for optimizer step `step` (0-based) of a run seeded with `seed`."""
    return (seed * 1_000_003 + step) % 2**32


class Backend(Protocol):
    name: str          # "torch" | "mlx": written into checkpoints and run names
    device: str        # where it runs, as the framework names it: "cpu" | "cuda" | "mps" (torch), "cpu" | "gpu" (mlx)
    dtype: str         # the compute dtype after "auto": "fp32" | "bf16" | "fp16"; weights and AdamW state stay fp32
    dtype_why: str     # a few words on why that dtype (the startup line prints them)
    attn_impl: str     # the attention kernel after "auto": "sdpa" | "eager" | "flash"
    compile: bool      # whether the train step is compiled (mx.compile / torch.compile)
    memory_label: str  # what peak_memory() is, in the closing line's words: "peak memory" unless the framework keeps
                       # no peak (PyTorch on MPS: "MPS driver memory")

    # -- the machine ------------------------------------------------------------------------------------------
    def notices(self) -> list[str]:
        """One-line notices worth printing at the start of a run (a slow BLAS, a setting that was ignored)."""

    def set_memory_limit(self, gb: float | None) -> str | None:
        """Cap accelerator memory at `gb` GiB (None: the framework default); a notice when it cannot."""

    def measure_peak_flops(self) -> tuple[float, str]:
        """(FLOP/s, how): a square matmul in the compute dtype, through the model's own GEMM path, timed now.
        The MFU denominator; the loop caches it and re-measures at most once (nano_core.metrics.recheck_peak)."""

    def peak_memory(self) -> tuple[int, str]:
        """(bytes, method): the peak memory since the start (or the last reset_peak_memory) and what was measured
        (allocator peak, driver allocation, process peak RSS)."""

    def reset_peak_memory(self) -> None:
        """Start a new peak, where the framework (or the OS, for RSS) allows it; else the lifetime peak stays."""

    def sync(self) -> None:
        """Wait for queued device work (timing); a no-op where the framework is synchronous."""

    # -- model ------------------------------------------------------------------------------------------------
    def build_model(self, cfg: ModelConfig, weights: Weights, grad_checkpoint: bool = False,
                    lora: LoraConfig | None = None, adapters: Weights | None = None, seed: int = 0) -> Any:
        """The model for `cfg` on the device, in training mode, holding `weights` (canonical names, fp32). With
        `lora` (checked against cfg, one-line ValueError): LoRA adapters on the targeted Linears, holding `adapters`
        (canonical adapter names) or, when None, nano_core.lora.init_adapters(cfg, lora, seed) (B = 0: the model
        starts as the base model); the base weights are frozen (no gradients, no optimizer state). `model.lora` is
        the LoraConfig (None without LoRA)."""

    def model_weights(self, model) -> Weights:
        """A float32 numpy copy of every base parameter, under the canonical names (never the adapters)."""

    def adapter_weights(self, model) -> Weights:
        """A float32 numpy copy of the LoRA adapters, under their canonical names ({} without LoRA)."""

    def num_params(self, model) -> int:
        """Number of trainable parameters (the adapters only under LoRA)."""

    def num_total_params(self, model) -> int:
        """Number of all parameters: the base (tied head counted once) plus the adapters."""

    # -- optimizer --------------------------------------------------------------------------------------------
    def build_optimizer(self, model, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                        optimizer: str = "adamw", muon_lr: float = 0.02, muon_momentum: float = 0.95,
                        muon_ns: str = "keller", normuon: bool = False, cautious_wd: bool = False,
                        embed_lr: float | None = None, head_lr: float | None = None) -> Any:
        """"adamw": AdamW over the trainable parameters only: bias-corrected, decoupled weight decay on parameters
        with ndim >= 2 only (LoRA's A and B included), fp32 moments. "muon": Muon (nano_core/muon.py) at muon_lr on
        the blocks' hidden matrices, that AdamW at lr on the rest; ValueError under LoRA. `set_lr` (inside the
        train step) moves both parts with the one schedule. muon_ns ("keller" | "polar"), normuon, cautious_wd:
        Muon's opt-in variants (nano_core/muon.py); ValueError with "adamw". embed_lr, head_lr: AdamW's peak lr
        for the embeddings and an untied head (nano_core/lr_groups.py; None: lr)."""

    def set_momentum(self, optimizer, momentum: float) -> None:
        """Muon's momentum for the next train step (nano_core.muon.momentum_at, the loop calls it before each step of
        a Muon run); it reaches a compiled step as the lr does. ValueError for an optimizer without Muon."""

    def optimizer_state(self, optimizer, model) -> Weights:
        """`{name}.exp_avg`, `{name}.exp_avg_sq` (float32) per AdamW parameter (exactly the adapters under LoRA),
        `{name}.momentum` per Muon parameter (and `{name}.second_moment` with NorMuon), and `step` (0-d int64)."""

    def load_optimizer_state(self, optimizer, model, state: Weights) -> None:
        """The inverse of optimizer_state; ValueError (one line) when the state does not fit the model."""

    # -- several processes (torchrun / mlx.launch; nano_core/distributed.py) ----------------------------------
    def init_distributed(self, timeout: float) -> tuple[int, int]:
        """(rank, world_size) from the launcher's environment, after the engine's own rendezvous (a Watchdog of
        `timeout` seconds turns a peer that never comes into one line); (0, 1) when started alone. Sets self.rank and
        self.world_size; the train step then averages gradients and the loss over the ranks with the engine's own
        collective (DDP / nn.average_gradients). One-line ValueError for a setup that cannot work (MPS + gloo)."""

    def all_max(self, value: int) -> int:
        """The largest `value` over the ranks (the loop's agreement on stopping)."""

    def barrier(self) -> None:
        """Wait until every rank is here (a no-op alone)."""

    def close_distributed(self) -> None:
        """Leave the process group at a normal end."""

    # -- training ---------------------------------------------------------------------------------------------
    def make_train_step(self, model, optimizer, grad_accum: int, grad_clip: float,
                        seed: int) -> Callable[..., Any]:
        """step(batch, lr, step, mask=None) -> mean loss (unsynchronised framework scalar). `batch` is
        (grad_accum * B, T+1) int32, split into grad_accum micro-batches of B rows; `lr` is this step's learning
        rate; `step` is the 0-based index of this optimizer step (it seeds dropout, see step_seed); `mask`, when
        given, is float32 (grad_accum * B, T) with 1 where the target batch[:, 1:] counts: the loss is then the mean
        over the counted targets of the whole step (one-line ValueError for a wrong shape). grad_clip 0 means no
        clipping."""

    def loss_value(self, loss) -> float:
        """The Python float of a loss returned by the train step (synchronises)."""

    # -- inference --------------------------------------------------------------------------------------------
    def inference(self, model) -> AbstractContextManager:
        """Eval mode, no gradients, the compute dtype, for the duration of the block; training mode after it."""

    def token_losses(self, model, batch: np.ndarray) -> np.ndarray:
        """(B, T) float32 nats of each next token of (B, T+1) int32 windows. Call inside inference()."""

    def make_cache(self, model, batch_size: int, max_len: int) -> Any:
        """A KV cache (hidden state for the RNN) for `max_len` positions; `.pos` counts the positions written."""

    def next_logits(self, model, ids, cache) -> np.ndarray:
        """Feed `ids` through the model, advancing `cache`; float32 logits at the last position: (V,) for one
        sequence (a list of ids), (B, V) for B rows of equal length (a cache made for batch_size B: the rows of
        generate_batch). Call inside inference()."""


def check_optimizer_state(state: Weights, param_shapes: dict[str, tuple[int, ...]]) -> int:
    """The checks both backends' load_optimizer_state make, written once: every parameter has its two moments of
    its own shape (a missing entry is allowed only at step 0, where a state is fresh anyway). Returns the step."""
    step = int(np.asarray(state.get("step", 0)))
    for name, shape in param_shapes.items():
        if f"{name}.exp_avg" not in state:
            if step > 0:
                raise ValueError(f"optimizer state has no entry for {name}; was it saved from a different model?")
            continue
        got = tuple(np.shape(state[f"{name}.exp_avg"]))
        if got != tuple(shape):
            raise ValueError(f"optimizer state {name}.exp_avg has shape {got}, parameter {tuple(shape)}; was it "
                             f"saved from a different model?")
    return step
