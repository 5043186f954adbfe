"""Training-step speed of one backend: forward + backward + grad clipping + AdamW, timed step by step.

    python benchmarks/step_speed.py --backend torch --dtype fp32
    python benchmarks/step_speed.py --backend torch --dtype fp32 --aten-gemm  # fp32 GEMMs by MKL, not oneDNN
    python benchmarks/step_speed.py --backend torch --dtype bf16            # torch.autocast("cpu", bfloat16)
    python benchmarks/step_speed.py --backend torch --dtype bf16 --compile  # torch.compile(model)
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \
        python benchmarks/step_speed.py --backend mlx --dtype fp32           # compiled MLX step, OpenBLAS matmul
    python benchmarks/step_speed.py --preset small --batch-size 4 --steps 10 --out runs/speed.json

The model is the DESIGN.md comparison config (GPT-2 classic, 6 x 384, 6 heads, T=256, V=8192) unless --preset or
--config says otherwise. Tokens are random (seeded): speed does not depend on the text. Each step is timed on its
own (torch on CPU is synchronous; MLX is forced with one mx.eval per step), after --warmup untimed steps; the table
shows the median and the spread (min..max) of the per-step times, and a PNG beside the JSON plots every step.
GFLOP/s = tok/s x cfg.estimate_flops(), the model FLOPs (fwd+bwd, PaLM accounting) — the number MFU is computed
from. The load average is recorded with the result because other work on the same cores moves these figures by tens
of percent. --attn-impl auto and nano_core.host.keep_freed_memory() are applied as in the training CLIs, so the
step is the one they run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nano_core.config import ModelConfig  # noqa: E402
from nano_core.host import keep_freed_memory  # noqa: E402

COMPARE_CONFIG = dict(n_layer=6, n_head=6, n_embd=384, seq_len=256, vocab_size=8192, mlp="gelu", norm="layernorm",
                      pos="learned", bias=True, tie_embeddings=True)


# ----------------------------------------------------------------------------- one step per backend
def torch_stepper(cfg: ModelConfig, batch: np.ndarray, args):
    """Returns step() -> float loss. Mirrors nano_torch/train.py: autocast forward, fp32 masters and AdamW."""
    import torch

    from nano_torch import model as torch_model
    from nano_torch.model import GPT
    from nano_torch.optim import build_optimizer, clip_grad_norm

    if args.aten_gemm:
        torch_model.ONEDNN_FP32 = False
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from nano_torch.train import pick_attn_impl
    args.attn_impl = pick_attn_impl(args.attn_impl, torch.device("cpu"), args.dtype)  # as the training CLI does
    model = GPT(cfg, attn_impl=args.attn_impl).init_weights(seed=0)
    model.train()
    opt = build_optimizer(model, lr=3e-4)
    amp = {"fp32": None, "bf16": torch.bfloat16}[args.dtype]
    loss_fn = torch.compile(model.loss) if args.compile else model.loss
    t = torch.from_numpy(batch).long()
    x, y = t[:, :-1], t[:, 1:]

    def step():
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = loss_fn(x, y)
        loss.backward()
        clip_grad_norm(model, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def mlx_stepper(cfg: ModelConfig, batch: np.ndarray, args):
    """Returns step() -> float loss. Mirrors nano_mlx/train.py: the whole step is one mx.compile'd graph."""
    import mlx.core as mx
    import mlx.nn as nn

    from nano_mlx.model import GPT
    from nano_mlx.optim import build_optimizer, clip_grad_norm

    if args.dtype != "fp32":
        raise ValueError("MLX bf16 on a Linux CPU has no fast matmul path (DESIGN.md); use --dtype fp32 with mlx")
    if args.compile:
        raise ValueError("--compile is a torch option; the MLX step is always compiled here")
    if args.aten_gemm or args.threads:
        raise ValueError("--aten-gemm and --threads are torch options; drop them with --backend mlx")
    from nano_mlx.train import pick_attn_impl
    args.attn_impl = pick_attn_impl(args.attn_impl, mx.cpu, args.dtype)  # as the training CLI does
    mx.random.seed(0)
    model = GPT(cfg, attn_impl=args.attn_impl).init_weights(seed=0)
    model.train()
    opt = build_optimizer(model, lr=3e-4)
    grad_fn = nn.value_and_grad(model, model.loss)

    def raw_step(b):
        loss, grads = grad_fn(b[:, :-1], b[:, 1:])
        grads, _ = clip_grad_norm(grads, 1.0)
        opt.update(model, grads)
        return loss

    state = [model.state, opt.state, mx.random.state]
    compiled = mx.compile(raw_step, inputs=state, outputs=state)
    b = mx.array(batch)

    def step():
        loss = compiled(b)
        mx.eval(loss, model.state, opt.state)
        return loss.item()

    blas = "OpenBLAS preloaded" if "openblas" in os.environ.get("LD_PRELOAD", "") else "reference BLAS (slow)"
    return step, f"mlx {mx.__version__}, {blas}"


STEPPERS = {"torch": torch_stepper, "mlx": mlx_stepper}


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
    cfg = resolve_config(args)
    cfg.validate()
    keep_freed_memory()  # as the training loops do
    rng = np.random.default_rng(0)
    batch = rng.integers(0, cfg.vocab_size, size=(args.batch_size, cfg.seq_len + 1), dtype=np.int32)
    step, runtime = STEPPERS[args.backend](cfg, batch, args)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup_s = time.perf_counter() - t0
    times, losses = [], []
    for _ in range(args.steps):
        t = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t)
    tokens = args.batch_size * cfg.seq_len
    med = statistics.median(times)
    flops = cfg.estimate_flops()
    return {
        "backend": args.backend, "dtype": args.dtype, "compile": bool(args.compile), "attn_impl": args.attn_impl,
        "aten_gemm": bool(getattr(args, "aten_gemm", False)),
        "runtime": runtime, "config": cfg.to_dict(), "batch_size": args.batch_size, "tokens_per_step": tokens,
        "flops_per_token": flops, "warmup_steps": args.warmup, "warmup_s": warmup_s,
        "step_ms": [1000 * s for s in times], "ms_median": 1000 * med, "ms_min": 1000 * min(times),
        "ms_max": 1000 * max(times), "tok_s": tokens / med, "gflop_s": tokens / med * flops / 1e9,
        "losses": losses, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
    }


def plot_steps(r: dict, path: Path) -> None:
    """Per-step time (ms) in run order with the median: drift and outliers show at a glance, a median does not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(range(1, len(r["step_ms"]) + 1), r["step_ms"], "o-", ms=3, lw=1)
    ax.axhline(r["ms_median"], color="C1", ls="--", lw=1,
               label=f"median {r['ms_median']:.0f} ms = {r['tok_s']:,.0f} tok/s")
    ax.set_xlabel("timed step")
    ax.set_ylabel("ms / step")
    ax.set_ylim(bottom=0)
    compiled = ", compiled" if r["compile"] else ""
    ax.set_title(f"{r['backend']} {r['dtype']} ({r['attn_impl']} attention{compiled}): "
                 f"{r['flops_per_token'] / 1e6:.1f} MFLOP/token, {r['tokens_per_step']} tokens/step", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=sorted(STEPPERS), default="torch")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--preset", default=None, help="a ModelConfig preset instead of the comparison config")
    p.add_argument("--config", default=None, help="JSON overrides of the config, e.g. '{\"n_layer\": 2}'")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    p.add_argument("--attn-impl", default="auto", help="auto = what the training CLI picks (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="torch only: torch.compile the loss (needs a C++ compiler)")
    p.add_argument("--aten-gemm", action="store_true",
                   help="torch only: fp32 linears by aten (MKL) instead of oneDNN, to measure the difference")
    p.add_argument("--threads", type=int, default=0, help="torch only: torch.set_num_threads (0 = default)")
    p.add_argument("--out", default=None, help="JSON output path (default runs/step_speed_{backend}_{dtype}.json)")
    p.add_argument("--omp-wait", choices=("passive", "active", "env"), default="env",
                   help="OMP_WAIT_POLICY for torch's OpenMP threads (set before torch loads; env = leave as is, "
                        "as the training CLIs do)")
    args = p.parse_args(argv)
    if args.omp_wait != "env":
        # Measured here: on an idle machine libgomp's default (spin briefly, then sleep) beat PASSIVE by ~12% on the
        # bf16 step (PASSIVE wakes the threads by futex for every op); with other work on the 2 cores, fully
        # spinning threads (ACTIVE) made the step up to 8x slower.
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait.upper()
    try:
        r = run(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    la = r["loadavg_before"]
    print(f"{r['runtime']}; load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} before, "
          f"{r['loadavg_after'][0]:.2f} after")
    print(f"{'backend':8} {'dtype':5} {'attn':6} {'compile':7} {'tok/s':>8} {'ms/step med':>12} {'min..max':>15} "
          f"{'GFLOP/s':>8}")
    print(f"{r['backend']:8} {r['dtype']:5} {r['attn_impl']:6} {str(r['compile']):7} {r['tok_s']:8.0f} {r['ms_median']:12.1f} "
          f"{r['ms_min']:7.1f}..{r['ms_max']:<7.1f} {r['gflop_s']:8.1f}")
    print(f"loss first/last: {r['losses'][0]:.4f} / {r['losses'][-1]:.4f}; warmup {r['warmup_s']:.1f} s")
    out = Path(args.out or ROOT / "runs" / f"step_speed_{args.backend}_{args.dtype}{'_compile' if args.compile else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(r, indent=1))
    os.replace(tmp, out)
    plot_steps(r, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
