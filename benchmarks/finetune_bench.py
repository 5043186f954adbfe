"""Fine-tuning benchmark: LoRA against a full fine-tune of `small`, on both backends, on TinyShakespeare.

    python benchmarks/finetune_bench.py                          # base, 2 probes, 4 fine-tunes
    python benchmarks/finetune_bench.py --base runs/my-small     # fine-tune a base you already trained
    python benchmarks/finetune_bench.py --steps 5 --base-steps 5 # a quick look, not the figures

What runs, each step in its own subprocess from the repository root (so ../shared/data resolves); MLX processes get
the OpenBLAS preload (fast matmuls on CPU), PyTorch processes never do (the preload slows them several times). Set
NANO_CACHE to choose where the prepared shards are cached. Everything is fp32 on the CPU, seed 0, batch 4 x 128.
1. The base, unless --base names one: `small` (8 x 512) with --seq-len 128 (the preset's 512 is too slow for a
   benchmark on a laptop-class CPU), pretrained with nano_torch for --base-steps (80) on FineWeb-edu + three
   Gutenberg novels (vocab 8192, lr 1e-3). It is briefly trained on purpose: a base, not a good model.
2. Its loss on Shakespeare before tuning, per backend: a LoRA run of one step at lr 1e-12 (the adapters' B starts
   at zero, so this is the base to float rounding), scored on the same validation batches as the fine-tunes.
3. Four fine-tunes of --steps (40) on ../shared/data/tinyshakespeare/input.txt, encoded with the base's tokenizer:
   {full, LoRA rank 8 alpha 16 on every Linear of every block} x {torch, mlx}, one fresh optimizer each, cosine
   schedule with 4 warmup steps down to 10%; peak lr 5e-4 for the full fine-tune, 2e-3 for LoRA (adapters start
   at zero and are few: they want a larger step).
4. From each run: trainable and total parameters (counted in the safetensors headers of its checkpoint and its
   base), peak memory as the run reports it (PyTorch on CPU: the process's peak RSS; MLX: its allocator's peak,
   arrays only), the peak RSS of the whole process (os.wait4, the same measure for both backends), tok/s over the
   logged steps after the first (which holds compilation and warm-up), the final validation loss and bpb, the
   checkpoint's size. A table (and table.md), finetune_bench.json (every figure, the machine, the load average
   before and after every step) and finetune_bench.png (peak memory, tok/s and validation loss per run) in --out.

A finished step in --out is reused when its command is the same (OUT/logs/NAME.json); --fresh redoes everything.
A step's output goes to OUT/logs/NAME.log; the console gets one progress line a minute while a step runs. Other
work on the machine moves the speed figures: compare rows measured under similar load averages (recorded).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys
from pathlib import Path

from harness import (ROOT, StepError, child_env, finished, fmt_load, machine, pyplot, read_jsonl, run_child,
                     save_figure, save_json, save_text)

DATA = "../shared/data"  # from ROOT
PRETRAIN_SOURCES = [f"{DATA}/fineweb_edu/sample-10BT-281docs.jsonl",  # + Pride and Prejudice, Emma, Persuasion
                    f"{DATA}/gutenberg/1342-0.txt", f"{DATA}/gutenberg/158-0.txt", f"{DATA}/gutenberg/105.txt"]
SHAKESPEARE = f"{DATA}/tinyshakespeare/input.txt"
BACKENDS = ("torch", "mlx")
KINDS = ("full", "lora")
PROBE_LR = 1e-12
CLOSING = re.compile(
    r"done at step (?P<step>\d+): train loss (?P<train_loss>\S+), val loss (?P<val_loss>\S+) "
    r"\(unigram on val (?P<unigram>\S+)\), bpb (?P<bpb>\S+), (?P<tok_per_s>[\d,]+) tok/s, MFU (?P<mfu>\S+)%, "
    r"peak memory (?P<peak_gb>\S+) GB(?:, trained (?P<trained>\S+) of (?P<total>\S+) params)?; "
    r"checkpoint in (?P<run_dir>.+)$")


def ensure_step(name: str, label: str, cmd: list[str], backend: str, args) -> dict:
    """Run a step unless --out holds the same command finished (its record in OUT/logs/NAME.json); its record."""
    log, saved = args.out / "logs" / f"{name}.log", args.out / "logs" / f"{name}.json"
    record = finished(saved, cmd, args.fresh)
    if record is not None and log.is_file() and closing_line(log.read_text(errors="replace")) is not None:
        print(f"{label}: reusing {args.out / 'runs' / name}")
        return record
    record = {**run_child(label, cmd, log, child_env(backend)), "backend": backend}
    save_json(saved, record)
    return record


# ----------------------------------------------------------------------------- commands (pure: tested)
def train_cmd(backend: str, out: Path, source: list[str], steps: int, lr: float, args, *, preset: str | None = None,
              init_from: str | None = None, lora_rank: int | None = None, warmup: int = 4) -> list[str]:
    """A training command with the benchmark's fixed settings (fp32, CPU, seed 0, evaluation at the end only)."""
    start = ["--preset", preset] if preset else ["--init-from", str(init_from)]
    cmd = [sys.executable, "-m", f"nano_{backend}.train", *start, "--seq-len", str(args.seq_len), "--source", *source,
           "--max-steps", str(steps), "--batch-size", str(args.batch_size), "--lr", f"{lr:g}",
           "--warmup-steps", str(warmup), "--schedule", "cosine", "--min-lr-frac", "0.1", "--eval-every", "0",
           "--eval-steps", str(args.eval_steps), "--log-every", str(args.log_every), "--sample-every", "0",
           "--sample-tokens", "16", "--seed", "0", "--dtype", "fp32", "--device", "cpu", "--out", str(out),
           "--overwrite"]
    if lora_rank:
        cmd += ["--lora-rank", str(lora_rank), "--lora-alpha", f"{args.lora_alpha:g}"]
    return cmd


def base_cmd(args, out: Path) -> list[str]:
    return train_cmd("torch", out, PRETRAIN_SOURCES, args.base_steps, args.base_lr, args, preset="small",
                     warmup=max(1, args.base_steps // 8))


def probe_cmd(backend: str, base: Path, args, out: Path) -> list[str]:
    """One LoRA step at a vanishing lr: the base's validation loss on Shakespeare, on the fine-tunes' batches."""
    return train_cmd(backend, out, [SHAKESPEARE], 1, PROBE_LR, args, init_from=str(base), lora_rank=args.lora_rank,
                     warmup=0)


def finetune_cmd(backend: str, kind: str, base: Path, args, out: Path) -> list[str]:
    lr = args.lora_lr if kind == "lora" else args.full_lr
    return train_cmd(backend, out, [SHAKESPEARE], args.steps, lr, args, init_from=str(base),
                     lora_rank=args.lora_rank if kind == "lora" else None, warmup=min(4, args.steps - 1))


# ----------------------------------------------------------------------------- reading a run (pure: tested)
def parse_count(text: str) -> float:
    """nano's format_count back to a number: '589.82k' -> 589820.0, '30.07M' -> 30070000.0."""
    scale = {"k": 1e3, "M": 1e6, "B": 1e9}.get(text[-1:], 1.0)
    return float(text[:-1] if scale != 1.0 else text) * scale


def closing_line(log_text: str) -> dict | None:
    """The figures of a training run's closing line ('done at step N: ...'), or None when the log has none."""
    for line in reversed(log_text.replace("\r", "\n").splitlines()):
        m = CLOSING.match(line.strip())
        if m:
            g = m.groupdict()
            out = {"step": int(g["step"]), "run_dir": g["run_dir"], "mfu": float(g["mfu"]) / 100,
                   "tok_per_s": float(g["tok_per_s"].replace(",", ""))}
            out.update({k: float(g[k]) for k in ("train_loss", "val_loss", "unigram", "bpb", "peak_gb")})
            out["trained"] = parse_count(g["trained"]) if g["trained"] else None
            out["total"] = parse_count(g["total"]) if g["total"] else None
            return out
    return None


def steady_tok_per_s(records: list[dict], tokens_per_step: int) -> float:
    """Tokens per second over the train records after the first (step 1 holds compilation and warm-up): the
    tokens of those intervals over their summed time; NaN when there are none."""
    train = [r for r in records if "train_loss" in r and r.get("tok_per_s")]
    tokens = seconds = 0.0
    for prev, rec in zip(train, train[1:]):
        n = (rec["step"] - prev["step"]) * tokens_per_step
        tokens, seconds = tokens + n, seconds + n / rec["tok_per_s"]
    return tokens / seconds if seconds else float("nan")


def last_val(records: list[dict]) -> dict:
    """The last validation record of a run (val_loss, val_bpb, step); {} when there is none."""
    vals = [r for r in records if "val_loss" in r]
    return vals[-1] if vals else {}


def safetensors_params(path: Path) -> int:
    """Number of parameters in a safetensors file, from its header alone."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def newest_checkpoint(run_dir: Path) -> Path:
    from nano_core.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir, notices=[])
    if ckpt is None:
        raise StepError(f"{run_dir} holds no checkpoint that verifies")
    return ckpt


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_row(name: str, backend: str, kind: str, lr: float, run_dir: Path, log: Path, record: dict,
            base_params: int, tokens_per_step: int) -> dict:
    """One table row: the run's closing line, metrics.jsonl, checkpoint and process record, flat."""
    close = closing_line(log.read_text(errors="replace"))
    if close is None:
        raise StepError(f"{log} has no closing line ('done at step ...'): the run did not finish")
    records = read_jsonl(run_dir / "metrics.jsonl")
    ckpt = newest_checkpoint(run_dir)
    saved = safetensors_params(ckpt / "model.safetensors")  # LoRA: the adapters alone; full: every weight
    val = last_val(records)
    return {"name": name, "backend": backend, "kind": kind, "lr": lr, "step": close["step"],
            "trainable_params": saved, "total_params": base_params + saved if kind == "lora" else saved,
            "peak_memory_gb": close["peak_gb"], "peak_memory_method": ("MLX allocator peak" if backend == "mlx"
                                                                        else "process peak RSS"),
            "peak_rss_gb": record["peak_rss_bytes"] / 2**30, "tok_per_s": steady_tok_per_s(records, tokens_per_step),
            "tok_per_s_closing": close["tok_per_s"], "train_loss": close["train_loss"],
            "val_loss": val.get("val_loss", close["val_loss"]), "val_bpb": val.get("val_bpb", close["bpb"]),
            "checkpoint_mb": dir_bytes(ckpt) / 1e6, "seconds": record["seconds"],
            "loadavg_before": list(record["loadavg_before"]), "loadavg_after": list(record["loadavg_after"])}


# ----------------------------------------------------------------------------- report (pure: tested)
def fmt_params(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def format_table(rows: list[dict]) -> str:
    """A Markdown table: one line per fine-tune."""
    lines = ["| fine-tune | backend | peak lr | trainable / total params | peak memory (as reported) "
             "| process peak RSS | tok/s | Shakespeare val loss: base → tuned | val bpb | checkpoint | load avg |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = r["trainable_params"] / r["total_params"]
        kind = f"LoRA r{r['rank']}" if r["kind"] == "lora" else "full"
        lines.append(f"| {kind} | {r['backend']} | {r['lr']:g} | {fmt_params(r['trainable_params'])} / "
                     f"{fmt_params(r['total_params'])} ({share:.1%}) | {r['peak_memory_gb']:.2f} GB "
                     f"({r['peak_memory_method']}) | {r['peak_rss_gb']:.2f} GB | {r['tok_per_s']:.0f} "
                     f"| {r['val_loss_before']:.3f} → {r['val_loss']:.3f} | {r['val_bpb']:.3f} "
                     f"| {r['checkpoint_mb']:.1f} MB | {r['loadavg_before'][0]:.1f} |")
    return "\n".join(lines)


def assemble(rows: list[dict], base: dict, probes: dict, record: list, settings: dict) -> dict:
    """The JSON written to OUT/finetune_bench.json."""
    return {"benchmark": "finetune_bench", "machine": machine(), "settings": settings, "base": base,
            "base_on_shakespeare": probes, "rows": rows, "steps": record, "loadavg_end": list(os.getloadavg())}


def plot(rows: list[dict], path: Path) -> None:
    """Three panels, one bar per fine-tune: peak memory (as reported, and process RSS), tok/s, and the validation
    loss on Shakespeare after tuning, with the base's loss before tuning marked."""
    plt = pyplot()
    labels = [f"{'LoRA r' + str(r['rank']) if r['kind'] == 'lora' else 'full'}, {r['backend']}" for r in rows]
    colors = ["C0" if r["backend"] == "torch" else "C1" for r in rows]
    y = list(range(len(rows)))
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 0.5 * len(rows) + 2.2), sharey=True)
    h = 0.38
    a.barh([i - h / 2 for i in y], [r["peak_memory_gb"] for r in rows], height=h, color=colors,
           label="as the run reports it")
    a.barh([i + h / 2 for i in y], [r["peak_rss_gb"] for r in rows], height=h, color=colors, alpha=0.45,
           hatch="//", label="process peak RSS")
    a.set_xlabel("peak memory, GB")
    a.set_yticks(y, labels)
    a.invert_yaxis()
    a.legend(loc="lower right", fontsize=7)
    b.barh(y, [r["tok_per_s"] for r in rows], color=colors)
    b.set_xlabel("training tok/s (CPU, fp32)")
    c.barh(y, [r["val_loss"] for r in rows], color=colors)
    for i, r in enumerate(rows):
        c.plot([r["val_loss_before"]] * 2, [i - 0.4, i + 0.4], color="k", ls="--", lw=1,
               label="base, before tuning" if i == 0 else None)
    low = min(min(r["val_loss"] for r in rows), min(r["val_loss_before"] for r in rows))
    c.set_xlim(max(0.0, low - 0.5), None)
    c.set_xlabel("Shakespeare val loss after tuning (nats/token)")
    c.legend(loc="lower right", fontsize=7)
    steps = rows[0]["step"] if rows else 0
    fig.suptitle(f"nano: LoRA vs full fine-tune of small, {steps} steps on TinyShakespeare "
                 f"(PyTorch blue, MLX orange)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


# ----------------------------------------------------------------------------- the command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "finetune_bench", help="where everything goes")
    p.add_argument("--base", default=None, metavar="RUN_OR_CKPT",
                   help="fine-tune this nano checkpoint (or run dir) instead of pretraining a base")
    p.add_argument("--base-steps", type=int, default=80, help="pretraining steps of the base (nano_torch, small)")
    p.add_argument("--base-lr", type=float, default=1e-3, help="peak lr of the base's pretraining")
    p.add_argument("--steps", type=int, default=40, help="steps of every fine-tune")
    p.add_argument("--full-lr", type=float, default=5e-4, help="peak lr of the full fine-tunes")
    p.add_argument("--lora-lr", type=float, default=2e-3, help="peak lr of the LoRA fine-tunes")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (scale = alpha / rank)")
    p.add_argument("--seq-len", type=int, default=128, help="context length of the base and the fine-tunes")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per step")
    p.add_argument("--eval-steps", type=int, default=16, help="validation batches per evaluation")
    p.add_argument("--log-every", type=int, default=10, help="steps per train record (tok/s is measured over them)")
    p.add_argument("--backends", default="torch,mlx", help="comma-separated: torch, mlx")
    p.add_argument("--fresh", action="store_true", help="rerun even what --out already holds")
    return p


def check_args(args) -> None:
    """One-line errors for settings that cannot work, before anything runs."""
    for flag in ("base_steps", "steps", "lora_rank", "seq_len", "batch_size", "eval_steps", "log_every"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("base_lr", "full_lr", "lora_lr", "lora_alpha"):
        if not getattr(args, flag) > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2 (tok/s leaves out the first step), got {args.steps}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in args.backends if b not in BACKENDS]
    if bad or not args.backends:
        raise ValueError(f"--backends takes torch and/or mlx, comma-separated; got {','.join(bad) or 'nothing'}")
    for src in ([SHAKESPEARE] if args.base else PRETRAIN_SOURCES + [SHAKESPEARE]):
        if not (ROOT / src).exists():
            raise FileNotFoundError(f"{(ROOT / src).resolve()} is missing: the benchmark reads ../shared/data "
                                    f"beside the repository")


def make_base(args, record: list) -> tuple[Path, dict]:
    """The base checkpoint (given by --base, or pretrained into OUT/runs/base) and what is known about it."""
    from nano_core.checkpoint import read_meta, resolve_checkpoint

    if args.base:
        ckpt = resolve_checkpoint(args.base, notices=print)
        print(f"base: using {ckpt}")
    else:
        run = args.out / "runs" / "base"
        record.append(ensure_step("base", "pretrain the base", base_cmd(args, run), "torch", args))
        ckpt = newest_checkpoint(run)
    meta = read_meta(ckpt)
    info = {"checkpoint": str(ckpt), "step": meta["step"], "trained_with": meta.get("backend"),
            "model_config": meta["model_config"], "params": safetensors_params(ckpt / "model.safetensors"),
            "val_loss_own_data": meta.get("metrics", {}).get("val_loss"), "data_dir": meta.get("data_dir")}
    return ckpt, info


def run_all(args, record: list) -> tuple[list[dict], dict, dict]:
    """Base, probes, fine-tunes; (rows, base info, base val loss on Shakespeare per backend)."""
    base, info = make_base(args, record)
    tokens_per_step = args.batch_size * args.seq_len
    probes, rows = {}, []
    for backend in args.backends:
        name = f"probe-{backend}"
        record.append(ensure_step(name, f"base on Shakespeare, {backend}",
                                  probe_cmd(backend, base, args, args.out / "runs" / name), backend, args))
        probes[backend] = last_val(read_jsonl(args.out / "runs" / name / "metrics.jsonl"))["val_loss"]
    for backend in args.backends:
        for kind in KINDS:
            name = f"{kind}-{backend}"
            run = args.out / "runs" / name
            rec = ensure_step(name, f"fine-tune {kind} on {backend}", finetune_cmd(backend, kind, base, args, run),
                              backend, args)
            record.append(rec)
            lr = args.lora_lr if kind == "lora" else args.full_lr
            row = run_row(name, backend, kind, lr, run, args.out / "logs" / f"{name}.log", rec, info["params"],
                          tokens_per_step)
            row.update(rank=args.lora_rank if kind == "lora" else None, val_loss_before=probes[backend])
            rows.append(row)
    return rows, info, probes


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        args.out = args.out.resolve()
        record: list = []
        rows, base, probes = run_all(args, record)
    except (ValueError, FileNotFoundError, StepError) as e:
        sys.exit(f"error: {e}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(pretrain_sources=PRETRAIN_SOURCES, finetune_source=SHAKESPEARE, probe_lr=PROBE_LR)
    result = assemble(rows, base, probes, record, settings)
    text = format_table(rows)
    save_json(args.out / "finetune_bench.json", result)
    save_text(args.out / "table.md", text)
    plot(rows, args.out / "finetune_bench.png")
    cfg = base["model_config"]
    print(f"\n{result['machine']['cpu']}, {os.cpu_count()} CPUs; load average now {fmt_load(os.getloadavg())}")
    print(f"base: {base['checkpoint']} ({cfg['n_layer']} x {cfg['n_embd']}, T={cfg['seq_len']}, "
          f"{fmt_params(base['params'])} params, step {base['step']}); {args.steps} fine-tune steps of "
          f"{args.batch_size} x {args.seq_len} tokens")
    print(text)
    print(f"wrote {args.out / 'finetune_bench.json'}, table.md, finetune_bench.png")
    return result


if __name__ == "__main__":
    main()
