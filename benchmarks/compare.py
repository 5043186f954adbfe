"""Cross-backend comparison: the same model, init and batches on MLX and PyTorch; speed, memory, MFU, loss parity.

    python benchmarks/compare.py                       # every backend/device found here, the comparison config
    python benchmarks/compare.py --quick --out /tmp/c  # seconds: a very small model, few steps (CI)
    python benchmarks/compare.py --backends mlx-gpu,torch-mps --dtype bf16 --preset small --steps 20
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 python benchmarks/compare.py  # Linux

What it does, in order:
1. data: --data DIR, else ../shared/data/fineweb_edu (beside the repository; the builtin text when absent) prepared
   once into the nano cache, as the training CLI prepares a --source (nano_core.data_cache.resolve_data);
2. one numpy init (nano_core.init) loaded into every backend, one list of training batches fed to all of them;
3. each backend runs in its own worker process (benchmarks/compare_workers.py) the training step of the training
   CLIs, by construction: nano_<framework>.backend.Backend(device, dtype, attn_impl="auto", compile=None -- the
   CLI default: mx.compile'd on MLX, eager on PyTorch) and the step its make_train_step returns, with the training
   CLI's AdamW settings (nano_core.cli.TrainConfig defaults), clipping and cosine LR schedule. The first --warmup
   steps (compilation, allocator warm-up) are excluded from timing; then --repeats chunks of --steps steps,
   alternating the backend order every repeat so machine drift hits all of them. Every step is timed on its own,
   until Backend.sync() returns;
4. loss parity against the first backend, step by step; val loss and bits per byte (nano_core.trainer.evaluate) on
   val batches of shard 0;
5. MFU against a measured matmul peak (Backend.measure_peak_flops) and the chip's known peak on Apple GPUs
   (benchmarks/chips.py), with the FLOPs per token of ModelConfig.estimate_flops (tests/test_flops.py checks it
   against an independent count);
6. attention alone (the Attention module of each model.py, model.h[0].attn), forward and forward+backward, across
   MHA/GQA/MQA and full vs sliding-window attention.
fp32 by default with TF32 off on both sides (the workers set MLX_ENABLE_TF32=0 before mlx is imported, and torch
allow_tf32 off with float32 matmul precision "highest").

Outputs in --out: report.json, report.md, loss.png, throughput.png, attention.png; a table on stdout.

report.json fields
  version                    format version of this file (2)
  created                    UTC time the run finished (ISO 8601)
  command                    the command line
  env                        the machine and software (nano_core.host.machine() and what each worker reports):
    .os .python .cpu           OS string, Python version, CPU / SoC model (sysctl on macOS, /proc/cpuinfo on Linux)
    .apple_chip .gpu_cores     recognised Apple chip ("M3 Max") and GPU core count, or null
    .cpu_count .torch_threads  logical CPUs; torch.get_num_threads() in the PyTorch worker (null without one)
    .versions                  {numpy, torch, mlx}: versions the workers run (null if not run)
    .blas                      {mlx, torch, numpy}: the BLAS each uses (MLX: nano_core.host.loaded_blas() in the MLX
                               worker, "OpenBLAS (...)" when one is loaded, e.g. by LD_PRELOAD, or "reference BLAS
                               (...)"; torch: summary of torch.__config__.show(); numpy: its build config)
    .ld_preload                the LD_PRELOAD environment variable, or null (an OpenBLAS in it reaches the MLX
                               workers only: PyTorch workers start without it, see nano_core/host.py)
    .omp_wait_policy           OMP_WAIT_POLICY in force (compare.py leaves it as it finds it)
    .mlx_enable_tf32 .torch_allow_tf32   the TF32 settings in force in the workers
    .notices                   hints the backends printed (e.g. the OpenBLAS LD_PRELOAD tip)
  config                     ModelConfig.to_dict() of the model compared
  run                        {batch_size, seq_len, dtype, warmup, steps, repeats, total_steps, lr, schedule,
                              warmup_steps, grad_clip, weight_decay, seed, eval_batches, data, data_source,
                              backends, quick}; total_steps = warmup + steps * repeats (every one in the loss curve)
  flops                      {per_token_estimate (ModelConfig.estimate_flops), convention (text), breakdown
                              {matmul_fwd, attention_fwd} per token}
  backends                   one entry per backend name ("mlx-cpu", "torch-cpu", ...):
    .framework .device .step   "mlx"|"torch", device, which training step ran (compiled or eager, which attention)
    .tok_per_s                 B*T / median step time
    .tok_per_s_mean            all timed tokens / all timed seconds
    .ms_per_step               {median, p25, p75, iqr, min, max, n}: per-step wall time in milliseconds
    .repeat_tok_per_s          tokens/s of each repeat (chunk of --steps steps), in run order
    .peak_flops                {measured, measured_source, known, known_source}: FLOP/s (known: chip table, or null)
    .mfu                       {measured, known}: model FLOPs/s (estimate_flops x tok_per_s) over the measured /
                               known peak
    .peak_memory               {bytes, method}: the largest Backend.peak_memory() read after each step, reset
                               (Backend.reset_peak_memory) before each chunk; method says what was measured
                               (mx.get_peak_memory, torch.cuda.max_memory_allocated,
                               the largest torch.mps.driver_allocated_memory read, or the worker process's peak RSS on
                               CPU)
    .loss                      training loss at every step (warm-up steps included), floats
    .final_loss                the last of them
    .val                       {val_loss, val_ppl, val_bpb} after training, on the first eval_batches val batches
  parity                     {reference, tolerance, dtype, pairs: {backend: {max_rel_diff, final_rel_diff,
                              max_abs_diff, rel_diff (per step), val_loss_rel_diff, within_tolerance}}}
                              rel diff = |loss - loss_ref| / |loss_ref|
  attention                  {batch_size, seq_len, n_head, head_dim, reps, convention, rows: [{backend, n_kv_head,
                              kind (MHA|GQA|MQA), window (null = full causal), fwd_ms, fwd_bwd_ms, fwd_gflops_per_s}]}
                              ({rows: [], skipped: true} with --no-attention or a model without attention)
  files                      names of the files written beside report.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tqdm import tqdm

import chips
from compare_report import flops_section, parity, print_summary, stats_ms, write_all
from compare_workers import Worker, resolve_backends
from nano_core.cli import TrainConfig
from nano_core.config import PRESETS, ModelConfig
from nano_core.data import ShardLoader
from nano_core.data_dir import load_manifest
from nano_core.host import machine, numpy_blas
from nano_core.init import init_weights
from nano_core.schedule import lr_at

ROOT = Path(__file__).resolve().parents[1]
SHARED_FINEWEB = ROOT.parent / "shared" / "data" / "fineweb_edu" / "sample-10BT-281docs.jsonl"

# The comparison config: GPT-2 classic (learned positions, LayerNorm, GELU, biases, tied head).
COMPARE_CONFIG = dict(n_layer=6, n_head=6, n_embd=384, seq_len=256, mlp="gelu", norm="layernorm", pos="learned",
                      bias=True, tie_embeddings=True)
QUICK_CONFIG = dict(COMPARE_CONFIG, n_layer=2, n_head=4, n_embd=64, seq_len=64)
SIZES = {  # run sizes: the no-argument run (a few minutes on 2 cores) and --quick (seconds)
    "full": dict(batch_size=8, warmup=2, steps=8, repeats=3, eval_batches=4, attn_reps=5),
    "quick": dict(batch_size=4, warmup=1, steps=3, repeats=2, eval_batches=2, attn_reps=2),
}


# ----------------------------------------------------------------------------- settings
def run_sizes(args) -> SimpleNamespace:
    """Batch size, step counts and repetitions: the flags, else the --quick or full defaults; checked."""
    size = SimpleNamespace(**{k: v if getattr(args, k) is None else getattr(args, k)
                              for k, v in SIZES["quick" if args.quick else "full"].items()})
    for name in ("batch_size", "steps", "repeats", "eval_batches", "attn_reps"):
        if getattr(size, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(size, name)}")
    if size.warmup < 1:
        raise ValueError(f"--warmup must be >= 1 (the first step compiles), got {size.warmup}")
    size.total = size.warmup + size.steps * size.repeats
    return size


def train_settings(args, total: int) -> TrainConfig:
    """The training CLI's optimizer and schedule defaults, with --lr, --seed, and a schedule over `total` steps."""
    return dataclasses.replace(TrainConfig(), lr=args.lr, seed=args.seed, max_steps=total,
                               warmup_steps=max(1, total // 5))


def resolve_data(data: str | None, log) -> tuple[Path, str]:
    """(shard dir, what it is): --data as given, else the shared FineWeb-Edu sample (or builtin) prepared once."""
    from nano_core.data_cache import resolve_data as prepare_or_reuse

    source = None if data is not None else [str(SHARED_FINEWEB)] if SHARED_FINEWEB.is_file() else ["builtin"]
    path = prepare_or_reuse(SimpleNamespace(data=data, source=source, vocab_size=8192), log)
    return path, data if data is not None else source[0]


def resolve_config(args, vocab_size: int) -> ModelConfig:
    overrides = {"vocab_size": vocab_size}
    if args.seq_len is not None:
        overrides["seq_len"] = args.seq_len
    if args.preset is not None:
        return ModelConfig.from_preset(args.preset, **overrides)
    if args.config is None:
        return ModelConfig.from_dict({**(QUICK_CONFIG if args.quick else COMPARE_CONFIG), **overrides})
    text = args.config
    if not text.lstrip().startswith("{"):
        if not Path(text).is_file():
            raise FileNotFoundError(f"--config {text} not found (give a JSON file or an inline JSON object)")
        text = Path(text).read_text()
    try:
        return ModelConfig.from_dict({**json.loads(text), **overrides})
    except json.JSONDecodeError as e:
        raise ValueError(f"--config is not valid JSON ({e.msg}); e.g. --config '{{\"n_layer\": 4}}'") from None


# ----------------------------------------------------------------------------- the runs
def run_training(workers: dict[str, Worker], batches: list, lrs: list, size) -> dict:
    """Warm-up steps, then size.repeats chunks of size.steps steps per backend, the order reversed every repeat."""
    rec = {n: {"times": [], "losses": [], "repeat_tok_per_s": [], "peak_memory": (0, "")} for n in workers}
    tokens = batches[0].shape[0] * (batches[0].shape[1] - 1)
    bar = tqdm(total=len(batches) * len(workers), desc="train steps", unit="step", dynamic_ncols=True)

    def chunk(name: str, lo: int, hi: int, timed: bool):
        w, r, times = workers[name], rec[name], []
        w.call("reset_peak_memory")
        for i in range(lo, hi):
            dt, loss = w.call("step", batches[i], lrs[i], i)
            r["peak_memory"] = max(r["peak_memory"], w.call("peak_memory"))
            r["losses"].append(loss)
            times.append(dt)
            bar.update(1)
            bar.set_postfix(backend=name, ms=f"{dt * 1e3:.0f}")
        if timed:
            r["times"] += times
            r["repeat_tok_per_s"].append(tokens * len(times) / sum(times))

    names = list(workers)
    for name in names:  # warm-up: compilation and first allocations, not timed (but part of the loss curve)
        chunk(name, 0, size.warmup, timed=False)
    for rep in range(size.repeats):
        lo = size.warmup + rep * size.steps
        for name in (names if rep % 2 == 0 else names[::-1]):  # alternate: drift hits every backend alike
            chunk(name, lo, lo + size.steps, timed=True)
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
        out += [(kind, kv, window) for window in (None, max(1, cfg.seq_len // 4))]
    return out


def time_attention(workers: dict[str, Worker], reps: int, bar) -> dict[str, dict[str, list[float]]]:
    """Seconds of each call, per backend: one warm-up, then `reps` reps alternating the backend order."""
    times = {n: {"fwd": [], "fwd_bwd": []} for n in workers}
    for w in workers.values():
        w.call("attention_time", 0), w.call("attention_time", 1)
    names = list(workers)
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            times[n]["fwd"].append(workers[n].call("attention_time", 0))
            times[n]["fwd_bwd"].append(workers[n].call("attention_time", 1))
            bar.update(1)
    return times


def run_attention(workers: dict[str, Worker], cfg: ModelConfig, batch_size: int, reps: int, seed: int) -> dict:
    """Each backend's Attention module alone, per variant; forward FLOPs = projections + QK^T + PV."""
    rows, variants = [], attention_variants(cfg)
    x = np.random.default_rng(seed).standard_normal((batch_size, cfg.seq_len, cfg.n_embd)).astype(np.float32)
    bar = tqdm(total=len(variants) * len(workers) * reps, desc="attention", unit="rep", dynamic_ncols=True)
    for kind, kv, window in variants:
        vcfg = dataclasses.replace(cfg, n_layer=1, n_kv_head=kv, window=window, window_pattern="S").validate()
        weights = init_weights(vcfg, seed)
        for w in workers.values():
            w.call("attention_setup", vcfg, weights, x)
        times = time_attention(workers, reps, bar)
        t_eff = cfg.seq_len if window is None else min(window, cfg.seq_len)
        d, hd, h = cfg.n_embd, cfg.head_dim, cfg.n_head
        flops = batch_size * cfg.seq_len * (2 * d * (h * hd + 2 * kv * hd) + 2 * h * hd * d + 4 * t_eff * h * hd)
        for n, t in times.items():
            fwd = float(np.median(t["fwd"]))
            rows.append({"backend": n, "kind": kind, "n_kv_head": kv, "window": window, "fwd_ms": fwd * 1e3,
                         "fwd_bwd_ms": float(np.median(t["fwd_bwd"])) * 1e3, "fwd_gflops_per_s": flops / fwd / 1e9})
    bar.close()
    return {"batch_size": batch_size, "seq_len": cfg.seq_len, "n_head": cfg.n_head, "head_dim": cfg.head_dim,
            "reps": reps, "rows": rows,
            "convention": "median wall time of the Attention module of each model.py (qkv projection, attention, "
                          "output projection), run op by op (not compiled) on both backends, with the attention "
                          "kernel each training CLI picks for this dtype (backends.*.step names it); fwd_bwd "
                          "includes the parameter gradients; sliding windows run the banded kernel"}


# ----------------------------------------------------------------------------- the report
def environment(infos: dict[str, dict], notices: list[str]) -> dict:
    """The machine (nano_core.host) and what the workers of each framework reported about themselves."""
    m = machine()
    runtime = {}
    for info in infos.values():  # the first worker of each framework speaks for it
        runtime.setdefault(info["framework"], info["runtime"])
    torch, mlx = runtime.get("torch", {}), runtime.get("mlx", {})
    return {**m, "apple_chip": chips.apple_chip(m["cpu"]), "torch_threads": torch.get("threads"),
            "versions": {"numpy": np.__version__, "torch": torch.get("version"), "mlx": mlx.get("version")},
            "blas": {"mlx": mlx.get("blas"), "torch": torch.get("blas"), "numpy": numpy_blas()},
            "mlx_enable_tf32": mlx.get("tf32"), "torch_allow_tf32": torch.get("tf32"), "notices": notices}


def backend_entry(info: dict, rec: dict, val: dict, peak: tuple[float, str], known, flops_per_token: int,
                  tokens: int) -> dict:
    """One backend's report.json entry from its worker's info, step record, val metrics and measured peak."""
    ms = stats_ms(rec["times"])
    tps = tokens / (ms["median"] / 1e3)
    return {
        "framework": info["framework"], "device": info["device"], "step": info["step"],
        "tok_per_s": tps, "tok_per_s_mean": tokens * len(rec["times"]) / sum(rec["times"]), "ms_per_step": ms,
        "repeat_tok_per_s": rec["repeat_tok_per_s"],
        "peak_flops": {"measured": peak[0], "measured_source": peak[1],
                       "known": known[0] if known else None, "known_source": known[1] if known else None},
        "mfu": {"measured": flops_per_token * tps / peak[0],
                "known": flops_per_token * tps / known[0] if known else None},
        "peak_memory": {"bytes": int(rec["peak_memory"][0]), "method": rec["peak_memory"][1]},
        "loss": rec["losses"], "final_loss": rec["losses"][-1], "val": val,
    }


def measure(workers: dict[str, Worker], cfg: ModelConfig, data: tuple[Path, str], args, size, hp) -> dict:
    """What the workers measure: training on the same batches, val metrics, matmul peaks, attention."""
    loader = ShardLoader(data[0], size.batch_size, cfg.seq_len, split="train", seed=args.seed)
    batches = [loader.next_batch() for _ in range(size.total)]
    lrs = [lr_at(i, hp) for i in range(size.total)]
    rec = run_training(workers, batches, lrs, size)
    token_bytes = loader.tokenizer.token_byte_lengths()
    val = {n: w.call("evaluate", data[0], size.batch_size, cfg.seq_len, size.eval_batches, token_bytes)
           for n, w in workers.items()}
    peaks = {n: w.call("peak_flops") for n, w in workers.items()}
    attention = (run_attention(workers, cfg, size.batch_size, size.attn_reps, args.seed)
                 if not args.no_attention and cfg.arch == "gpt" else {"rows": [], "skipped": True})
    return {"rec": rec, "val": val, "peaks": peaks, "attention": attention}


def build_report(m: dict, cfg: ModelConfig, data: tuple[Path, str], args, size, hp, notices: list[str]) -> dict:
    env = environment(m["infos"], notices)
    flops = flops_section(cfg)
    tokens = size.batch_size * cfg.seq_len
    backends = {}
    for n, info in m["infos"].items():
        known = chips.known_gpu_peak(env["cpu"], args.dtype, env["gpu_cores"]) if info["device"] in ("gpu", "mps") \
            else None
        backends[n] = backend_entry(info, m["rec"][n], m["val"][n], m["peaks"][n], known,
                                    flops["per_token_estimate"], tokens)
    files = ["report.json", "report.md", "loss.png", "throughput.png"]
    return {
        "version": 2, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "env": env, "config": cfg.to_dict(),
        "run": {"batch_size": size.batch_size, "seq_len": cfg.seq_len, "dtype": args.dtype, "warmup": size.warmup,
                "steps": size.steps, "repeats": size.repeats, "total_steps": size.total, "lr": hp.lr,
                "schedule": hp.schedule, "warmup_steps": hp.warmup_steps, "grad_clip": hp.grad_clip,
                "weight_decay": hp.weight_decay, "seed": args.seed, "eval_batches": size.eval_batches,
                "data": str(data[0]), "data_source": data[1], "backends": list(m["infos"]), "quick": bool(args.quick)},
        "flops": flops, "backends": backends,
        "parity": parity({n: r["losses"] for n, r in m["rec"].items()}, m["val"], args.dtype),
        "attention": m["attention"], "files": files + ([] if m["attention"].get("skipped") else ["attention.png"]),
    }


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/compare.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=None, help="output directory (default: benchmarks/results/compare-TIMESTAMP)")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--preset", default=None, choices=list(PRESETS), help="model preset (default: the "
                   "comparison config, GPT-2 classic 6x384, 6 heads, T=256)")
    m.add_argument("--config", default=None, help="ModelConfig JSON: a file or an inline object")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 8; --quick 4)")
    p.add_argument("--seq-len", type=int, default=None, help="context length (default: the config's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 8; --quick 3)")
    p.add_argument("--repeats", type=int, default=None, help="timed chunks per backend, order alternated (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (compilation; default 2)")
    p.add_argument("--dtype", default="auto", help="fp32 (TF32 off), bf16, or both as fp32,bf16 (one report each, "
                   "then their tokens/s side by side); auto: both on a Mac, where which one is faster depends on "
                   "the chip, fp32 elsewhere")
    p.add_argument("--backends", default=None, help="comma-separated, from mlx-gpu,mlx-cpu,torch-cuda,torch-mps,"
                   "torch-cpu (default: all available)")
    p.add_argument("--data", default=None, help="prepared shard directory (default: ../shared/data/fineweb_edu "
                   "prepared once into the nano cache, or the builtin text)")
    p.add_argument("--lr", type=float, default=TrainConfig().lr, help="peak learning rate (cosine schedule with "
                   "warm-up)")
    p.add_argument("--eval-batches", type=int, default=None, help="val batches for the final val loss / bpb")
    p.add_argument("--attn-reps", type=int, default=None, help="timed repetitions per attention variant")
    p.add_argument("--no-attention", action="store_true", help="skip the attention section")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and the batch order")
    p.add_argument("--quick", action="store_true", help="seconds: a very small model and few steps (CI)")
    return p


def parse_dtypes(text: str, platform: str = sys.platform) -> list[str]:
    """--dtype as a list: 'auto' is fp32 and bf16 on macOS (bf16 has no hardware path on M1/M2 GPUs, one from M3
    on: the owner's run settles which is faster there), fp32 elsewhere."""
    if text == "auto":
        return ["fp32", "bf16"] if platform == "darwin" else ["fp32"]
    dtypes = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in ("fp32", "bf16")]
    if not dtypes or bad:
        raise ValueError(f"--dtype {text!r}: use fp32, bf16, fp32,bf16 or auto")
    return list(dict.fromkeys(dtypes))


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    try:
        dtypes = parse_dtypes(args.dtype)
        if len(dtypes) == 1:
            return compare(argparse.Namespace(**{**vars(args), "dtype": dtypes[0]}))
        base = Path(args.out) if args.out else None
        outs = {d: compare(argparse.Namespace(**{**vars(args), "dtype": d, "out": str(base / d) if base else None}))
                for d in dtypes}
        print_dtype_table(outs)
        return outs[dtypes[-1]]
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


def print_dtype_table(outs: dict[str, Path], log=print) -> None:
    """Each backend's tokens/s in each dtype, from the reports just written: which dtype the chip prefers."""
    reports = {d: json.loads((out / "report.json").read_text()) for d, out in outs.items()}
    log("tokens/s by dtype: " + " | ".join(
        f"{name} " + ", ".join(f"{d} {r['backends'][name]['tok_per_s']:,.0f}" for d, r in reports.items()
                               if name in r["backends"])
        for name in next(iter(reports.values()))["backends"]))


def compare(args, log=print) -> Path:
    names = resolve_backends(args.backends)  # before any slow work: a typo fails in one line, at once
    size = run_sizes(args)
    hp = train_settings(args, size.total)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    data = resolve_data(args.data, log)
    cfg = resolve_config(args, int(load_manifest(data[0])["vocab_size"]))
    weights = init_weights(cfg, args.seed)
    log(f"compare: {', '.join(names)} | {cfg.num_params() / 1e6:.2f}M params, B={size.batch_size} T={cfg.seq_len} "
        f"{args.dtype} | {size.warmup} warm-up + {size.steps} x {size.repeats} steps per backend | out {out}")
    workers = {}
    try:
        for n in names:
            workers[n] = Worker(n, args.dtype, cfg, weights, hp)
        infos = {n: w.call("info") for n, w in workers.items()}
        notices = list(dict.fromkeys(t.replace("python -m nano_mlx.train ...", "python benchmarks/compare.py ...")
                                     for info in infos.values() for t in info["notices"]))
        for tip in notices:
            log(tip)
        m = {"infos": infos, **measure(workers, cfg, data, args, size, hp)}
    finally:
        for w in workers.values():
            w.close()
    report = build_report(m, cfg, data, args, size, hp, notices)
    out.mkdir(parents=True, exist_ok=True)
    write_all(report, out)
    print_summary(report, log)
    for tip in notices:
        log(tip)
    log(f"wrote {out}/report.json, report.md and the plots")
    return out


if __name__ == "__main__":
    main()
