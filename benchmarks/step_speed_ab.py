"""Did a change slow the training step? Two revisions' `benchmarks/step_speed.py`, alternated in one run.

    python benchmarks/step_speed_ab.py --before 43deea6                    # that commit vs the working tree
    python benchmarks/step_speed_ab.py --before v0.1 --after main --rounds 4 --backends torch

Each revision other than the working tree ("." as --after, the default) is checked out with `git worktree add`
into a temporary directory and removed afterwards. Every round runs each backend on each revision, before and after
in turns (the order flips every round, so that a drift of the machine's load over the run falls on both alike),
each in a fresh process of that revision's own step_speed.py with that revision's packages first on the path, from
the same interpreter. A revision is compared at its own step -- the whole point -- so the step_speed.py of both
must accept the options used here (--backend, --dtype, --steps, --warmup, --out; --preset and --batch-size when
given: `--preset qwen3-3x192 --batch-size 32` is cpu-10min's model and batch).

The table shows, per backend, every round's tokens/s of both and the ratio of the medians over rounds (after /
before; 1.00 = no change). Shared cores move single figures by tens of percent (docs/benchmarks.md); a ratio is
worth only as much as the rounds agree, which is why each round's figures are printed. Output: the table (printed
and OUT/ab.md), OUT/ab.json and OUT/ab.png (tokens/s per round, both revisions).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nano_core.config import PRESETS
from harness import ROOT, child_env, machine, pyplot, run_child, save_figure, save_json, save_text

WORKING_TREE = "."


def checkout(rev: str, into: Path) -> Path:
    """The tree of `rev`: the working tree itself for ".", otherwise a detached worktree under `into`."""
    if rev == WORKING_TREE:
        return ROOT
    path = into / rev.replace("/", "_")
    r = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: cannot check out {rev!r}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    return path


def remove(tree: Path) -> None:
    if tree != ROOT:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


def measure(tree: Path, backend: str, args, out: Path, label: str) -> dict:
    """One step_speed.py run of the revision in `tree`: its JSON result."""
    result = out / f"{label}.json"
    cmd = [sys.executable, str(tree / "benchmarks" / "step_speed.py"), "--backend", backend, "--dtype", args.dtype,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", str(result)]
    cmd += ["--preset", args.preset] if args.preset else []
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    env = child_env(backend)
    env["PYTHONPATH"] = str(tree)  # this revision's packages before the installed (editable) ones
    run_child(label, cmd, out / f"{label}.log", env, timeout=args.timeout)
    return json.loads(result.read_text())


def table(rows: dict, revs: tuple[str, str]) -> str:
    lines = [f"| backend | round | {revs[0]} tok/s | {revs[1]} tok/s |", "|---|---:|---:|---:|"]
    for backend, runs in rows.items():
        for i, (a, b) in enumerate(zip(runs["before"], runs["after"]), 1):
            lines.append(f"| {backend} | {i} | {a:,.0f} | {b:,.0f} |")
        ratio = statistics.median(runs["after"]) / statistics.median(runs["before"])
        lines.append(f"| {backend} | median | {statistics.median(runs['before']):,.0f} | "
                     f"{statistics.median(runs['after']):,.0f} (x{ratio:.3f}) |")
    return "\n".join(lines)


def plot(rows: dict, revs: tuple[str, str], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 3.4), squeeze=False)
    for ax, (backend, runs) in zip(axes[0], rows.items()):
        for key, rev in zip(("before", "after"), revs):
            ax.plot(range(1, len(runs[key]) + 1), runs[key], "o-", label=rev)
        ax.set_title(backend)
        ax.set_xlabel("round")
        ax.set_ylabel("tokens / s")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="a git revision (commit, tag, branch)")
    p.add_argument("--after", default=WORKING_TREE, help="a git revision, or . for the working tree (default)")
    p.add_argument("--backends", default="torch,mlx", help="comma-separated: torch, mlx")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--preset", default=None, help="a model preset instead of the comparison config")
    p.add_argument("--batch-size", type=int, default=None, help="(default: step_speed.py's)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "step_speed_ab")
    args = p.parse_args(argv)
    if args.preset is not None and args.preset not in PRESETS:  # before any worktree or child process
        p.error(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in ("torch", "mlx") for b in backends) or args.rounds < 1:
        sys.exit("error: --backends takes torch and/or mlx, --rounds at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    revs = (args.before, args.after)
    rows = {b: {"before": [], "after": []} for b in backends}
    with tempfile.TemporaryDirectory(prefix="nano-ab-") as tmp:
        trees = {}
        try:
            trees = {key: checkout(rev, Path(tmp)) for key, rev in zip(("before", "after"), revs)}
            for rnd in range(args.rounds):
                order = ("before", "after") if rnd % 2 == 0 else ("after", "before")
                for backend in backends:
                    for key in order:
                        r = measure(trees[key], backend, args, args.out, f"{backend}-{key}-{rnd + 1}")
                        rows[backend][key].append(r["tok_s"])
        finally:
            for tree in trees.values():
                remove(tree)
    text = table(rows, revs)
    print(text)
    model = f"{args.preset or 'the comparison config'}, batch {args.batch_size or 'default'}"
    stamp = f"machine: {machine()}; {time.strftime('%Y-%m-%d')}; {model}; {args.dtype}, {args.steps} timed steps a run"
    save_text(args.out / "ab.md", f"{text}\n\n{stamp}")
    report = {"before": args.before, "after": args.after, "machine": machine(), "rows": rows,
              "args": {k: str(v) for k, v in vars(args).items()}}
    save_json(args.out / "ab.json", report)
    plot(rows, revs, args.out / "ab.png")
    print(f"wrote {args.out}/ab.json, ab.md and ab.png")
    return report


if __name__ == "__main__":
    main()
