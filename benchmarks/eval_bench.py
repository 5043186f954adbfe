"""Evaluation benchmark: the reference training runs scored on both backends; full HellaSwag timed on tiny and small.

    python benchmarks/eval_bench.py                       # train what is missing, evaluate, table + JSON + PNG
    python benchmarks/eval_bench.py --runs torch=runs/a mlx=runs/b small=runs/c   # reuse trained runs
    python benchmarks/eval_bench.py --limit 200 --tiny-steps 20 --small-steps 5    # a quick look, not the figures
    python benchmarks/eval_bench.py --cross none --tiny-tasks wikitext2,hellaswag  # docs/evaluation.md's table

What runs, each step in its own subprocess from the repository root (so ../shared/data resolves); MLX processes
get the OpenBLAS preload (fast matmuls on CPU), PyTorch processes never do (the preload slows them several times):
1. Training, unless --runs names the run: the training bar (docs/benchmarks.md) -- `tiny`, --tiny-steps 300, B=8, T=256,
   seed 0, FineWeb-edu + the 64 Gutenberg novels, vocab 8192, fp32 on CPU -- once with nano_torch and once with
   nano_mlx; and a `small` model (8 x 512, T=512) for --small-steps (50) with nano_torch fp32, trained only so
   that there is a checkpoint to time: its accuracy is near chance, its speed is what small costs.
2. Evaluation (python -m nano_{torch,mlx}.eval, fp32, --device cpu): each tiny run on its own backend, and the
   torch run on MLX too (--cross both: the MLX run on PyTorch as well; the cross rows show that the two backends
   score one checkpoint alike), on bpb (the run's val shard), wikitext2 (raw test split) and hellaswag (all 10,042
   validation items; --tiny-tasks picks fewer); the small run on hellaswag alone, on both backends.
3. A table (and table.md), eval_bench.json (every row, the backends' per-item agreement, the machine, the load
   average before and after every step) and eval_bench.png (items/s and acc_norm per run and backend) in --out.

Finished steps in --out are reused on a rerun (a run whose newest checkpoint is at the asked step, a report with
the same --limit and --batch-size); --fresh redoes everything. A step's output goes to OUT/logs/STEP.log; the
console gets one progress line a minute while a step runs. The machine's other work moves the speed figures:
compare rows measured under similar load averages (recorded per step).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness import (ROOT, StepError, child_env, fmt_load, machine, pyplot, run_child, save_figure, save_json,
                     save_text)
from nano_core.eval import parse_tasks

SOURCES = ["../shared/data/fineweb_edu/sample-10BT-281docs.jsonl", "../shared/data/gutenberg"]  # from ROOT
BACKENDS = ("torch", "mlx")
HELLASWAG_ITEMS = 10_042
TINY_TASKS = "bpb,wikitext2,hellaswag"
SMALL_TASKS = "hellaswag"


def run_step(label: str, cmd: list[str], backend: str, log: Path, record: list) -> None:
    """One child to its end (benchmarks/harness.py), its record kept for the report."""
    record.append(run_child(label, cmd, log, child_env(backend)))


# ----------------------------------------------------------------------------- training and evaluation
def train_cmd(backend: str, preset: str, steps: int, out: Path) -> list[str]:
    return [sys.executable, "-m", f"nano_{backend}.train", "--preset", preset, "--source", *SOURCES,
            "--max-steps", str(steps), "--batch-size", "8", "--seed", "0", "--dtype", "fp32", "--device", "cpu",
            "--out", str(out), "--overwrite"]


def eval_cmd(backend: str, run: Path, tasks: str, out: Path, batch_size: int, limit: int | None) -> list[str]:
    cmd = [sys.executable, "-m", f"nano_{backend}.eval", "--ckpt", str(run), "--tasks", tasks, "--batch-size",
           str(batch_size), "--out", str(out), "--device", "cpu", "--dtype", "fp32"]
    return cmd + (["--limit", str(limit)] if limit else [])


def trained_step(run: Path) -> int | None:
    """The step of the run's newest good checkpoint, or None when it holds none."""
    from nano_core.checkpoint import latest_checkpoint, read_meta

    if not run.is_dir():
        return None
    ckpt = latest_checkpoint(run)
    return read_meta(ckpt)["step"] if ckpt else None


def ensure_run(name: str, backend: str, preset: str, steps: int, args, record: list) -> Path:
    """The run dir for `name`: as given by --runs, or trained into OUT/runs/NAME unless already there."""
    if name in args.runs:
        run = Path(args.runs[name])
        if trained_step(run) is None:
            raise StepError(f"--runs {name}={run}: no checkpoint there that verifies")
        print(f"{name}: using {run} (step {trained_step(run)})")
        return run
    run = args.out / "runs" / name
    if not args.fresh and trained_step(run) == steps:
        print(f"{name}: reusing {run} (step {steps})")
        return run
    run_step(f"train {name}", train_cmd(backend, preset, steps, run), backend,
             args.out / "logs" / f"train-{name}.log", record)
    return run


def ensure_report(run_name: str, run: Path, backend: str, tasks: str, args, record: list) -> dict:
    """The eval report of `run` on `backend`: OUT/reports/RUN-on-BACKEND.json, made unless already there."""
    out = args.out / "reports" / f"{run_name}-on-{backend}.json"
    if not args.fresh and out.is_file():
        report = json.loads(out.read_text())
        if report.get("limit") == args.limit and report.get("batch_size") == args.batch_size \
                and set(report["tasks"]) >= set(tasks.split(",")):  # a report with more tasks serves as well
            print(f"eval {run_name} on {backend}: reusing {out}")
            return report
    cmd = eval_cmd(backend, run, tasks, out, args.batch_size, args.limit)
    run_step(f"eval {run_name} on {backend}", cmd, backend, args.out / "logs" / f"eval-{run_name}-on-{backend}.log",
             record)
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------- figures (pure: tested)
def minutes_for_full(items_per_s: float) -> float:
    """Minutes for all 10,042 HellaSwag items at `items_per_s`."""
    return HELLASWAG_ITEMS / items_per_s / 60 if items_per_s > 0 else float("nan")


def table_row(run_name: str, preset: str, report: dict) -> dict:
    """One table row from an eval report (python -m nano_*.eval --out): the headline figures, flat."""
    tasks, nan = report["tasks"], float("nan")
    wt2, val, hs = tasks.get("wikitext2", {}), tasks.get("bpb", {}), tasks["hellaswag"]
    return {"run": run_name, "preset": preset, "trained_with": report.get("trained_with"), "step": report.get("step"),
            "eval_backend": report["backend"], "word_ppl": wt2.get("word_ppl", nan),
            "token_ppl": wt2.get("token_ppl", nan), "wikitext2_bpb": wt2.get("bpb", nan),
            "val_bpb": val.get("bpb", nan),
            "acc": hs["acc"], "acc_stderr": hs["acc_stderr"], "acc_norm": hs["acc_norm"],
            "acc_norm_stderr": hs["acc_norm_stderr"], "items": hs["items"], "items_per_s": hs["items_per_s"],
            "hellaswag_minutes_full": minutes_for_full(hs["items_per_s"]), "truncated_items": hs["truncated_items"]}


def agreement(a: dict, b: dict) -> dict:
    """How alike two reports score the same checkpoint: HellaSwag items with the same pick (acc and acc_norm),
    the largest difference of an ending's log-likelihood, and the relative differences of the stream figures."""
    la, lb = a["tasks"]["hellaswag"]["logliks"], b["tasks"]["hellaswag"]["logliks"]
    same = sum(max(range(4), key=ra.__getitem__) == max(range(4), key=rb.__getitem__) for ra, rb in zip(la, lb))
    out = {"items": len(la), "same_pick": same / len(la),
           "max_abs_loglik_diff": max(abs(x - y) for ra, rb in zip(la, lb) for x, y in zip(ra, rb)),
           "acc_norm_diff": a["tasks"]["hellaswag"]["acc_norm"] - b["tasks"]["hellaswag"]["acc_norm"]}
    for task, key in (("wikitext2", "word_ppl"), ("bpb", "bpb")):
        if task in a["tasks"] and task in b["tasks"]:
            x, y = a["tasks"][task][key], b["tasks"][task][key]
            out[f"{task}_{key}_rel_diff"] = abs(x - y) / abs(x)
    return out


def format_table(rows: list[dict]) -> str:
    """A Markdown table: one line per (run, eval backend)."""
    lines = ["| run | step | eval backend | WikiText-2 word ppl | token ppl | WikiText-2 bpb | val bpb | HellaSwag acc "
             "| acc_norm | items/s | min for 10,042 |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        def num(k, f=".2f"):
            return "–" if r[k] != r[k] else format(r[k], f)  # NaN: the task was not run
        lines.append(f"| {r['run']} | {r['step']} | {r['eval_backend']} | {num('word_ppl')} | {num('token_ppl')} "
                     f"| {num('wikitext2_bpb', '.4f')} | {num('val_bpb', '.4f')} "
                     f"| {r['acc']:.4f} ± {r['acc_stderr']:.4f} | {r['acc_norm']:.4f} ± {r['acc_norm_stderr']:.4f} "
                     f"| {r['items_per_s']:.1f} | {r['hellaswag_minutes_full']:.1f} |")
    return "\n".join(lines)


def assemble(rows: list[dict], agreements: dict, record: list, args_dict: dict) -> dict:
    """The JSON written to OUT/eval_bench.json."""
    return {"benchmark": "eval_bench", "machine": machine(), "settings": args_dict, "rows": rows,
            "agreement": agreements, "steps": record, "loadavg_end": os.getloadavg()}


def plot(rows: list[dict], path: Path) -> None:
    """Two panels, one bar per (run, eval backend): HellaSwag items/s, and acc_norm with its standard error."""
    plt = pyplot()
    labels = [f"{r['run']} ({r['step']} steps), on {r['eval_backend']}" for r in rows]
    colors = ["C0" if r["eval_backend"] == "torch" else "C1" for r in rows]
    y = range(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.8), sharey=True)
    a.barh(y, [r["items_per_s"] for r in rows], color=colors)
    a.set_xlabel("HellaSwag items/s (CPU, fp32)")
    a.set_yticks(list(y), labels)
    a.invert_yaxis()
    b.barh(y, [r["acc_norm"] for r in rows], xerr=[r["acc_norm_stderr"] for r in rows], color=colors, capsize=3)
    b.axvline(0.25, color="grey", ls="--", lw=1, label="chance (0.25)")
    b.set_xlabel("HellaSwag acc_norm (± stderr)")
    b.legend(loc="lower right", fontsize=8)
    fig.suptitle("nano eval: PyTorch (blue) and MLX (orange) on the same checkpoints")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


# ----------------------------------------------------------------------------- the command
def parse_runs(specs: list[str]) -> dict:
    """--runs torch=DIR mlx=DIR small=DIR -> {name: DIR}; a one-line error on anything else."""
    runs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or name not in ("torch", "mlx", "small") or not path:
            raise ValueError(f"--runs takes NAME=RUN_DIR with NAME torch, mlx or small; got {spec!r}")
        runs[name] = path
    return runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "eval_bench", help="where everything goes")
    p.add_argument("--runs", nargs="+", default=[], metavar="NAME=DIR",
                   help="reuse trained runs: torch=DIR (tiny, nano_torch), mlx=DIR (tiny, nano_mlx), small=DIR")
    p.add_argument("--tiny-steps", type=int, default=300, help="steps of the tiny reference runs")
    p.add_argument("--small-steps", type=int, default=50, help="steps of the small run (timed, not scored)")
    p.add_argument("--no-small", action="store_true", help="skip the small preset")
    p.add_argument("--cross", choices=("torch", "both", "none"), default="torch",
                   help="tiny runs also scored on the other backend: the torch run (torch), both runs, none")
    p.add_argument("--tiny-tasks", default=TINY_TASKS,
                   help="the tasks of the tiny rows (hellaswag always among them); dropping bpb, the whole val shard, "
                        "saves the most time")
    p.add_argument("--limit", type=int, default=None,
                   help="first N HellaSwag items / N windows (a quick look; default: everything)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass of the evals (4 per item)")
    p.add_argument("--fresh", action="store_true", help="retrain and re-evaluate even what --out already holds")
    return p


def evaluate_all(args, record: list) -> tuple[list[dict], dict]:
    """Train what is missing, run every eval; (table rows, per-checkpoint backend agreement)."""
    rows, reports, agreements = [], {}, {}
    tiny = {b: ensure_run(b, b, "tiny", args.tiny_steps, args, record) for b in BACKENDS}
    small = None if args.no_small else ensure_run("small", "torch", "small", args.small_steps, args, record)
    for trained, run in tiny.items():
        cross = args.cross == "both" or args.cross == trained
        for backend in BACKENDS if cross else (trained,):
            reports[trained, backend] = ensure_report(f"tiny-{trained}", run, backend, args.tiny_tasks, args, record)
            rows.append(table_row(f"tiny, trained by {trained}", "tiny", reports[trained, backend]))
        if cross:
            agreements[f"tiny-{trained}"] = agreement(reports[trained, "torch"], reports[trained, "mlx"])
    if small is not None:
        for backend in BACKENDS:
            reports["small", backend] = ensure_report("small", small, backend, SMALL_TASKS, args, record)
            rows.append(table_row("small, trained by torch", "small", reports["small", backend]))
        agreements["small"] = agreement(reports["small", "torch"], reports["small", "mlx"])
    return rows, agreements


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        args.runs = parse_runs(args.runs)
        args.tiny_tasks = ",".join(parse_tasks(args.tiny_tasks))  # the eval CLI's own check: known task names
        if "hellaswag" not in args.tiny_tasks.split(","):
            raise ValueError(f"--tiny-tasks must include hellaswag (every row of the table has it), got "
                             f"{args.tiny_tasks!r}")
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        args.out = args.out.resolve()
        record: list = []
        rows, agreements = evaluate_all(args, record)
    except (ValueError, FileNotFoundError, StepError) as e:
        sys.exit(f"error: {e}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = assemble(rows, agreements, record, settings)
    text = format_table(rows)
    save_json(args.out / "eval_bench.json", result)
    save_text(args.out / "table.md", text)
    plot(rows, args.out / "eval_bench.png")
    print(f"\n{result['machine']['cpu']}, {os.cpu_count()} CPUs; load average now {fmt_load(os.getloadavg())}")
    print(text)
    for name, ag in agreements.items():
        print(f"{name}: torch and mlx pick the same ending on {ag['same_pick']:.2%} of {ag['items']:,} items; "
              f"largest log-likelihood difference {ag['max_abs_loglik_diff']:.2e}")
    print(f"wrote {args.out / 'eval_bench.json'}, table.md, eval_bench.png")
    return result


if __name__ == "__main__":
    main()
