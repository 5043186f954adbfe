"""Training-step speed of one backend: forward + backward + grad clipping + AdamW, timed step by step.

    python benchmarks/step_speed.py --backend torch --dtype fp32
    python benchmarks/step_speed.py --backend torch --dtype fp32 --aten-gemm  # fp32 GEMMs by MKL, not oneDNN
    python benchmarks/step_speed.py --dtype auto --preset qwen3-3x192 --batch-size 32 --two-pass-ce  # cpu-10min
    python benchmarks/step_speed.py --backend torch --dtype bf16            # torch.autocast("cpu", bfloat16)
    python benchmarks/step_speed.py --backend torch --dtype bf16 --compile  # torch.compile(model.loss)
    python benchmarks/step_speed.py --backend torch --dtype auto            # as the CLI's default resolves it
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \
        python benchmarks/step_speed.py --backend mlx --dtype fp32           # compiled MLX step, OpenBLAS matmul
    python benchmarks/step_speed.py --preset small --batch-size 4 --steps 10 --out runs/speed.json

The step is the training CLI's, by construction: nano_<backend>.backend.Backend(device, dtype, attn_impl,
compile) builds the model from nano_core.init's weights, AdamW with the CLI's defaults (nano_core.cli.TrainConfig)
and the step `make_train_step` returns; --compile/--no-compile default to the CLI's choice (compiled on MLX, eager
on PyTorch) and --attn-impl auto resolves as in the CLI. nano_core.host.keep_freed_memory() is applied as the
training loop applies it.

The model is the comparison config (GPT-2 classic, 6 x 384, 6 heads, T=256, V=8192) unless --preset or
--config says otherwise. Tokens are random (seeded): speed does not depend on the text. Each step is timed on its
own until its loss has been read (Backend.loss_value synchronises), after --warmup untimed steps; the table shows
the median and the spread (min..max) of the per-step times, and a PNG beside the JSON plots every step.
GFLOP/s = tok/s x cfg.estimate_flops(), the model FLOPs (fwd+bwd, PaLM accounting) -- the number MFU is computed
from. The load average is recorded with the result because other work on the same cores moves these figures by tens
of percent.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from harness import ROOT, machine, pyplot, save_figure, save_json
from nano_core.cli import TrainConfig
from nano_core.config import ModelConfig
from nano_core.host import keep_freed_memory, loaded_blas
from nano_core.init import init_weights

COMPARE_CONFIG = dict(n_layer=6, n_head=6, n_embd=384, seq_len=256, vocab_size=8192, mlp="gelu", norm="layernorm",
                      pos="learned", bias=True, tie_embeddings=True)
BACKENDS = ("torch", "mlx")


# ----------------------------------------------------------------------------- the backend's step
def torch_settings(args) -> str:
    """The torch-only flags, applied before the backend builds anything; the runtime in a few words."""
    import torch

    import nano_torch.kernels

    if args.aten_gemm:
        nano_torch.kernels.ONEDNN_FP32 = False  # fp32 linears by aten (MKL) instead of oneDNN
    if args.two_pass_ce:
        nano_torch.kernels.FUSED_CE = False  # the loss's gradient in the backward, as on accelerators
    if args.threads:
        torch.set_num_threads(args.threads)
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def mlx_settings(args) -> str:
    import mlx.core as mx

    import nano_mlx.kernels

    if args.aten_gemm or args.threads:
        raise ValueError("--aten-gemm and --threads are torch options; drop them with --backend mlx")
    if args.two_pass_ce:
        nano_mlx.kernels.FUSED_CE = False  # MLX's own backward of logsumexp (a second exp per logit), as on a GPU
    return f"mlx {mx.__version__}, {loaded_blas()}"


SETTINGS = {"torch": torch_settings, "mlx": mlx_settings}


def make_stepper(cfg: ModelConfig, batch: np.ndarray, args):
    """(step(i) -> float loss, backend, runtime): one training-CLI step of the backend on `batch`."""
    runtime = SETTINGS[args.backend](args)
    backend = importlib.import_module(f"nano_{args.backend}.backend").Backend(
        device=args.device, dtype=args.dtype, attn_impl=args.attn_impl, compile=args.compile)
    hp = TrainConfig()
    model = backend.build_model(cfg, init_weights(cfg, 0))
    opt = backend.build_optimizer(model, hp.lr, (hp.beta1, hp.beta2), hp.eps, hp.weight_decay)
    train_step = backend.make_train_step(model, opt, 1, hp.grad_clip, seed=0)

    def step(i: int) -> float:
        return backend.loss_value(train_step(batch, hp.lr, i))

    return step, backend, runtime


# ----------------------------------------------------------------------------- driver
def resolve_config(args) -> ModelConfig:
    try:
        overrides = json.loads(args.config) if args.config else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--config is not valid JSON ({e.msg}); e.g. --config '{{\"n_layer\": 4}}'") from None
    if args.preset:
        return ModelConfig.from_preset(args.preset, **overrides)
    return ModelConfig.from_dict({**COMPARE_CONFIG, **overrides})


def run(args) -> dict:
    cfg = resolve_config(args).validate()
    keep_freed_memory()  # as the training loop does
    batch = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(args.batch_size, cfg.seq_len + 1),
                                              dtype=np.int32)
    step, backend, runtime = make_stepper(cfg, batch, args)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    warmup_s = time.perf_counter() - t0
    times, losses = [], []
    for i in range(args.warmup, args.warmup + args.steps):
        t = time.perf_counter()
        losses.append(step(i))
        times.append(time.perf_counter() - t)
    tokens = args.batch_size * cfg.seq_len
    med = statistics.median(times)
    flops = cfg.estimate_flops()
    return {
        "backend": args.backend, "device": backend.device, "dtype": backend.dtype, "dtype_asked": args.dtype,
        "compile": backend.compile,
        "attn_impl": backend.attn_impl, "aten_gemm": bool(args.aten_gemm), "two_pass_ce": bool(args.two_pass_ce),
        "runtime": runtime, "config": cfg.to_dict(), "batch_size": args.batch_size, "tokens_per_step": tokens,
        "flops_per_token": flops, "warmup_steps": args.warmup, "warmup_s": warmup_s,
        "step_ms": [1000 * s for s in times], "ms_median": 1000 * med, "ms_min": 1000 * min(times),
        "ms_max": 1000 * max(times), "tok_s": tokens / med, "gflop_s": tokens / med * flops / 1e9,
        "losses": losses, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(), "machine": machine(),
    }


def plot_steps(r: dict, path: Path) -> None:
    """Per-step time (ms) in run order with the median: drift and outliers show at a glance, a median does not."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(range(1, len(r["step_ms"]) + 1), r["step_ms"], "o-", ms=3, lw=1)
    ax.axhline(r["ms_median"], color="C1", ls="--", lw=1,
               label=f"median {r['ms_median']:.0f} ms = {r['tok_s']:,.0f} tok/s")
    ax.set_xlabel("timed step")
    ax.set_ylabel("ms / step")
    ax.set_ylim(bottom=0)
    compiled = ", compiled" if r["compile"] else ""
    ax.set_title(f"{r['backend']} {r['device']} {r['dtype']} ({r['attn_impl']} attention{compiled}): "
                 f"{r['flops_per_token'] / 1e6:.1f} MFLOP/token, {r['tokens_per_step']} tokens/step", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def print_result(r: dict) -> None:
    la = r["loadavg_before"]
    print(f"{r['runtime']}; load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} before, "
          f"{r['loadavg_after'][0]:.2f} after")
    print(f"{'backend':8} {'dtype':5} {'attn':6} {'compile':7} {'tok/s':>8} {'ms/step med':>12} {'min..max':>15} "
          f"{'GFLOP/s':>8}")
    print(f"{r['backend']:8} {r['dtype']:5} {r['attn_impl']:6} {str(r['compile']):7} {r['tok_s']:8.0f} "
          f"{r['ms_median']:12.1f} {r['ms_min']:7.1f}..{r['ms_max']:<7.1f} {r['gflop_s']:8.1f}")
    print(f"loss first/last: {r['losses'][0]:.4f} / {r['losses'][-1]:.4f}; warmup {r['warmup_s']:.1f} s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--device", default="cpu", help="as the training CLI's --device (default: %(default)s)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="auto: what the training CLI's --dtype auto resolves to on --device (the JSON records it)")
    p.add_argument("--preset", default=None, help="a ModelConfig preset instead of the comparison config")
    p.add_argument("--config", default=None, help="JSON overrides of the config, e.g. '{\"n_layer\": 2}'")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    p.add_argument("--attn-impl", default="auto", help="auto = what the training CLI picks (default: %(default)s)")
    p.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction,
                   help="compile the step (default: the training CLI's: on for MLX, off for PyTorch; PyTorch's "
                        "torch.compile needs a C++ compiler)")
    p.add_argument("--aten-gemm", action="store_true",
                   help="torch only: fp32 linears by aten (MKL) instead of oneDNN, to measure the difference")
    p.add_argument("--two-pass-ce", action="store_true",
                   help="the cross-entropy's plain two passes (what accelerators run) instead of the CPU's one "
                        "pass (torch: one softmax per block; mlx: one exp per logit), to measure the difference")
    p.add_argument("--threads", type=int, default=0, help="torch only: torch.set_num_threads (0 = default)")
    p.add_argument("--out", default=None, help="JSON output path (default runs/step_speed_{backend}_{dtype}.json)")
    p.add_argument("--omp-wait", choices=("passive", "active", "env"), default="env",
                   help="OMP_WAIT_POLICY for torch's OpenMP threads (set before torch loads; env = leave as is, "
                        "as the training CLIs do)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.omp_wait != "env":
        # For measuring the choice the CLIs leave to libgomp: PASSIVE wakes the threads by futex for every op, and
        # fully spinning threads (ACTIVE) starve other work on shared cores (the figures: docs/benchmarks.md).
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait.upper()
    try:
        r = run(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print_result(r)
    compiled = "_compile" if args.compile else ""
    out = Path(args.out or ROOT / "runs" / f"step_speed_{args.backend}_{args.dtype}{compiled}.json")
    save_json(out, r)
    plot_steps(r, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
