"""Ablations: a grid of model/training variants from one command, at an equal budget, over several seeds.

    python benchmarks/ablate.py positions                    # a named suite (positions heads window rnn schedules)
    python benchmarks/ablate.py heads --seeds 0,1,2 --max-steps 500 --backend mlx
    python benchmarks/ablate.py positions --eval-tasks hellaswag --eval-limit 200
    python benchmarks/ablate.py --config a.json --config b.json --flags "--lr 3e-3" --flags "--optimizer muon"
    python benchmarks/ablate.py heads --quick                # micro models, a few steps: does it run

A variant is a ModelConfig dict (written to OUT/configs/NAME.json, passed with --config) plus train flags; the
suites are in benchmarks/ablate_suites.py. Every run is one `python -m nano_{backend}.train` process (the harness's
child environment: OpenBLAS for MLX, never for PyTorch), from scratch, on the same shards (the FineWeb-edu sample at
vocab 1024, prepared once into OUT/data). The budget is equal tokens by default: --max-steps with a fixed
--batch-size (so the result does not depend on how busy the machine is), or seconds with --max-time. Validation
runs once, at the end, on the same held-out batches for every variant; --eval-tasks adds HellaSwag and the like.

A finished run (same command) in OUT is reused, so an interrupted grid resumes where it stopped; --fresh reruns.
Output in OUT/SUITE: table.md (val bpb mean +- half the range over seeds, tok/s, params, peak memory = the child's
peak RSS), ablate.json (every run, the commands, the machine), ablate.png (every variant's train-loss curve; the
window suite adds step time and memory against the context). tok/s is only as good as the machine was quiet: the
load average before and after each run is recorded.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from ablate_suites import SUITES, Suite, Variant, extras
from harness import (ROOT, child_env, finished, machine, pyplot, read_jsonl, run_child, save_figure, save_json,
                     save_text)
from nano_core.config import ModelConfig

DATA = "../shared/data" if (ROOT.parent / "shared" / "data").is_dir() else "tests/fixtures/data"  # from ROOT
SOURCE = f"{DATA}/fineweb_edu/sample-10BT-281docs.jsonl"


def prepare_data(out: Path, vocab: int) -> Path:
    data = out / f"data-v{vocab}"
    if not (data / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "nano_core.prepare", "--out", str(data), "--vocab-size", str(vocab), "--quiet",
               "--source", SOURCE]
        run_child("preparing the shared data", cmd, out / "logs" / "prepare.log", child_env("torch"))
    return data


def command(suite: Suite, v: Variant, seed: int, args, data: Path, out: Path) -> list[str]:
    config = out / "configs" / f"{v.name}.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    save_json(config, v.model)
    budget = [] if "--max-time" in v.flags else (["--max-time", str(args.max_time)] if args.max_time else
                                                   ["--max-steps", str(args.max_steps or suite.steps)])
    eval_steps = 1 if suite.sweep else args.eval_steps
    extra = ["--eval-tasks", args.eval_tasks, "--eval-limit", str(args.eval_limit)] if args.eval_tasks else []
    return [sys.executable, "-m", f"nano_{args.backend}.train", "--data", str(data), "--config", str(config),
            "--seed", str(seed), "--batch-size", str(args.batch_size or suite.batch_size), *budget,
            "--out", str(out / "runs" / f"{v.name}-s{seed}"), "--overwrite", "--eval-every", "0",
            "--eval-steps", str(eval_steps), "--sample-every", "0", "--ckpt-every", "0", "--keep", "1",
            "--log-every", "1" if suite.sweep or args.quick else "5", "--dtype", args.dtype, *extra, *v.flags]


def run_one(suite: Suite, v: Variant, seed: int, args, data: Path, out: Path) -> dict:
    cmd = command(suite, v, seed, args, data, out)
    done = out / "results" / f"{v.name}-s{seed}.json"
    result = finished(done, cmd, args.fresh)
    if result is not None:
        print(f"{v.name} seed {seed}: reusing {done}", flush=True)
        return result
    run_dir = out / "runs" / f"{v.name}-s{seed}"
    child = run_child(f"{v.name} seed {seed}: {v.what}", cmd, out / "logs" / f"{v.name}-s{seed}.log",
                      child_env(args.backend))
    records = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if "train_loss" in r]
    final = [r for r in records if "val_bpb" in r][-1]
    tasks = {k: r[k] for r in records for k in r if k.startswith(("hellaswag_", "wikitext2_"))}
    speeds = sorted(r["tok_per_s"] for r in train[1:]) or [r["tok_per_s"] for r in train]  # step 1 compiles
    result = {"cmd": cmd[1:], "seed": seed, "val_bpb": final["val_bpb"], "val_loss": final["val_loss"],
              "steps": final["step"], "tok_per_s": speeds[len(speeds) // 2], "tok_per_s_best": speeds[-1],
              "wall_s": child["seconds"],
              "peak_rss_mb": child["peak_rss_bytes"] / 2**20, "curve": [(r["step"], r["train_loss"]) for r in train],
              "load_before": child["loadavg_before"], "load_after": child["loadavg_after"], **tasks}
    save_json(done, result)
    print(f"  val bpb {result['val_bpb']:.4f} after {result['steps']} steps, {result['tok_per_s']:,.0f} tok/s",
          flush=True)
    return result


def aggregate(suite: Suite, v: Variant, runs: list[dict], args) -> dict:
    def mean_spread(key):
        xs = [r[key] for r in runs if r.get(key) is not None]
        return (statistics.fmean(xs), (max(xs) - min(xs)) / 2) if xs else (None, None)

    cfg = ModelConfig(**v.model)
    batch = args.batch_size or suite.batch_size
    row = {"name": v.name, "what": v.what, "group": v.group, "model": v.model, "flags": v.flags,
           "params": cfg.num_params(), "seeds": [r["seed"] for r in runs], "runs": runs, "seq_len": cfg.seq_len}
    for key in ("val_bpb", "tok_per_s", "peak_rss_mb", "wall_s", "hellaswag_acc_norm"):
        row[key], row[key + "_spread"] = mean_spread(key)
    # The sweep's step time is the fastest step of the run: on a shared machine a burst of other work lands in
    # some steps, and with few steps per context a median still carries it.
    best = statistics.fmean(r.get("tok_per_s_best", r["tok_per_s"]) for r in runs)
    row["step_ms"] = 1e3 * batch * cfg.seq_len / (best if suite.sweep else row["tok_per_s"])
    row["tokens"] = runs[0]["steps"] * batch * cfg.seq_len
    row.update(extras(args.suite, v, batch))
    return row


def fmt(x, spread=None, digits=4) -> str:
    if x is None:
        return ""
    return f"{x:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread else "")


def table(rows: list[dict], suite: Suite) -> str:
    if suite.sweep:
        lines = ["| variant | T | fastest step ms | median tok/s | peak RSS MB | params |",
                 "|---|---:|---:|---:|---:|---:|"]
        for r in sorted(rows, key=lambda r: (r["group"], r["seq_len"])):
            lines.append(f"| {r['group']} | {r['seq_len']:,} | {r['step_ms']:,.1f} | {r['tok_per_s']:,.0f} | "
                         f"{r['peak_rss_mb']:,.0f} | {r['params']:,} |")
        return "\n".join(lines)
    heads = "attn_ms" in rows[0]
    hella = any(r["hellaswag_acc_norm"] is not None for r in rows)
    cols = ["variant", "group", "params", "tokens", "val bpb", "tok/s", "peak RSS MB", "wall s"]
    cols += ["attn fwd+bwd ms", "KV cache KiB"] if heads else []
    cols += ["HellaSwag acc_norm"] if hella else []
    lines = ["| " + " | ".join(cols) + " |", "|---|---|" + "---:|" * (len(cols) - 2)]
    for r in rows:
        cells = [r["name"], r["group"], f"{r['params']:,}", f"{r['tokens']:,}",
                 fmt(r["val_bpb"], r["val_bpb_spread"]), f"{r['tok_per_s']:,.0f}", f"{r['peak_rss_mb']:,.0f}",
                 f"{r['wall_s']:.0f}"]
        cells += [f"{r['attn_ms']:.2f}", f"{r['kv_cache_kib']:,.0f}"] if heads else []
        cells += [fmt(r["hellaswag_acc_norm"], r["hellaswag_acc_norm_spread"], 3)] if hella else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], suite: Suite, title: str, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3 if suite.sweep else 1, figsize=(15 if suite.sweep else 8, 4.8), squeeze=False)
    a = axes[0][0]
    for r in rows:
        for i, run in enumerate(r["runs"]):
            if run["curve"]:
                steps, loss = zip(*run["curve"])
                a.plot(steps, loss, lw=1, alpha=0.85, color=f"C{rows.index(r) % 10}",
                       label=f"{r['name']} ({len(r['runs'])} seed{'s' if len(r['runs']) > 1 else ''})"
                       if i == 0 else None)
    a.set_xlabel("step")
    a.set_ylabel("train loss (nats/token)")
    a.set_title(title, fontsize=9)
    a.legend(fontsize=6 if len(rows) > 8 else 8, ncol=2 if len(rows) > 8 else 1)
    if suite.sweep:
        for ax, key, label in ((axes[0][1], "step_ms", "ms per step (batch 1, the fastest step)"),
                               (axes[0][2], "peak_rss_mb", "peak RSS of the run (MB)")):
            for g in sorted({r["group"] for r in rows}):
                pts = sorted((r["seq_len"], r[key]) for r in rows if r["group"] == g)
                ax.plot(*zip(*pts), marker="o", label=g)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context T")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def custom_suite(args) -> Suite:
    """--config FILE ... with matching --flags: one variant per config (named after the file)."""
    flags = args.flags or [""] * len(args.config)
    if len(flags) not in (1, len(args.config)):
        raise SystemExit(f"error: --flags given {len(flags)} times for {len(args.config)} --config files; give it "
                         f"once (for all) or once per --config")
    variants = []
    for i, path in enumerate(args.config):
        try:
            model = ModelConfig.from_json(path).to_dict()
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: --config {path}: {e}") from None
        variants.append(Variant(Path(path).stem, model, (flags[i] if len(flags) > 1 else flags[0]).split(),
                                what=f"--config {path}"))
    return Suite("custom grid", variants)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", nargs="?", choices=[*SUITES, "custom"], default="custom",
                   help="a named suite, or custom: the --config files")
    p.add_argument("--config", action="append", metavar="FILE", help="a variant's ModelConfig JSON (repeatable)")
    p.add_argument("--flags", action="append", metavar="'FLAGS'", help="train flags for the --config variants")
    p.add_argument("--backend", choices=("torch", "mlx"), default="torch")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the suite's, 0,1)")
    p.add_argument("--max-steps", type=int, help="equal-token budget: optimizer steps per run (default: the suite's)")
    p.add_argument("--max-time", type=float, help="equal-time budget instead: seconds of training per run")
    p.add_argument("--batch-size", type=int, help="sequences per step (default: the suite's)")
    p.add_argument("--eval-steps", type=int, default=20, help="validation batches (the same for every variant)")
    p.add_argument("--eval-tasks", help="e.g. hellaswag: run at the end of every run (slow; use --eval-limit)")
    p.add_argument("--eval-limit", type=int, default=200, help="--eval-tasks: the first N items")
    p.add_argument("--dtype", default="fp32", help="every run's --dtype (fp32: the same arithmetic on both backends)")
    p.add_argument("--vocab-size", type=int, default=1024, help="tokenizer of the shared shards")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "ablate")
    p.add_argument("--quick", action="store_true", help="micro models, a few steps, one seed: does it run")
    p.add_argument("--fresh", action="store_true", help="rerun the runs OUT already holds")
    args = p.parse_args(argv)
    if args.suite == "custom" and not args.config:
        p.error("name a suite (" + ", ".join(SUITES) + ") or give --config FILE for each variant")
    if args.suite != "custom" and args.config:
        p.error(f"--config makes its own grid; drop it or the suite name {args.suite!r}")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. --seeds 0,1")
    for name in ("max_steps", "batch_size", "eval_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.max_time is not None and args.max_time <= 0:
        p.error("--max-time must be a positive number of seconds")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.eval_steps, args.vocab_size = 2, min(args.vocab_size, 512)
    suite = custom_suite(args) if args.suite == "custom" else SUITES[args.suite](args.quick, args.vocab_size)
    if args.quick:
        suite.steps, suite.seeds = min(suite.steps, 6), suite.seeds[:1]
    seeds = args.seed_list or list(suite.seeds)
    root = args.out.resolve()
    out = root / args.suite
    data = prepare_data(root, args.vocab_size)
    rows = [aggregate(suite, v, [run_one(suite, v, s, args, data, out) for s in seeds], args) for v in suite.variants]
    budget = f"{args.max_time:.0f} s" if args.max_time else f"{args.max_steps or suite.steps} steps"
    title = (f"{args.suite}: {suite.what}\n{args.backend}, {budget} x batch {args.batch_size or suite.batch_size}, "
             f"seeds {','.join(map(str, seeds))}")
    text = table(rows, suite)
    report = {"suite": args.suite, "what": suite.what, "backend": args.backend, "budget": budget, "seeds": seeds,
              "batch_size": args.batch_size or suite.batch_size, "vocab_size": args.vocab_size, "source": SOURCE,
              "machine": machine(), "variants": rows}
    save_json(out / "ablate.json", report)
    save_text(out / "table.md", text)
    plot(rows, suite, title, out / "ablate.png")
    print(f"\n{report['machine']['cpu']}, {report['machine']['cpu_count']} CPUs; {title}\n{text}")
    print(f"wrote {out / 'ablate.json'}, table.md, ablate.png")
    return report


if __name__ == "__main__":
    main()
