"""Evaluation, written once for both backends: which tasks run, with which files, and the command.

    python -m nano_mlx.eval   --ckpt runs/tiny --tasks bpb,wikitext2,hellaswag [--limit N] [--out FILE]
    python -m nano_torch.eval --ckpt runs/tiny --tasks hellaswag --device cpu

The tasks themselves (bits per byte, WikiText-2, HellaSwag as lm-evaluation-harness asks it) and how a backend
scores rows are in nano_core/eval_tasks.py. Training runs the same tasks through `run_tasks` (--eval-tasks).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nano_core.checkpoint import resolve_checkpoint
from nano_core.cli import DEVICES, HelpFormatter
from nano_core.eval_tasks import Scorer, task_bpb, task_hellaswag, task_wikitext2
from nano_core.generate import load_model
from nano_io.files import atomic_write

# hellaswag 2: lm-eval's context and acc_norm; version 1's acc_norm (per byte, ctx alone) is acc_per_byte's kind.
TASK_VERSIONS = {"bpb": 1, "wikitext2": 1, "hellaswag": 2}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repository
DEFAULT_FILES = {"wikitext2": ("wikitext2/wiki.test.raw", "--wikitext2"),
                 "hellaswag": ("hellaswag/hellaswag_val.jsonl", "--hellaswag")}


# ----------------------------------------------------------------------------- running tasks
@dataclass
class EvalSettings:
    tasks: list[str]
    limit: int | None = None
    stride: int | None = None          # None: half the context
    bpb_source: list[str] | None = None  # None: the run's val shard
    wikitext2: str | None = None
    hellaswag: str | None = None


def parse_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_VERSIONS]
    if unknown or not tasks:
        raise ValueError(f"unknown eval task {', '.join(unknown) or repr(text)}; choose from "
                         f"{', '.join(TASK_VERSIONS)} (comma-separated)")
    return tasks


def task_file(task: str, given: str | None) -> Path:
    """The data file of a task: as given, else ../shared/data beside the repository; a one-line error if absent."""
    relative, flag = DEFAULT_FILES[task]
    path = Path(given) if given else SHARED_DATA / relative
    if not path.is_file():
        raise FileNotFoundError(f"{task} data not found at {path}; pass {flag} PATH (the {Path(relative).name} file)")
    return path


def check_settings(settings: EvalSettings) -> None:
    """Every file a task needs, before any model is loaded."""
    for task in settings.tasks:
        if task in DEFAULT_FILES:
            task_file(task, getattr(settings, task))
    if settings.limit is not None and settings.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {settings.limit}")


def run_tasks(scorer: Scorer, settings: EvalSettings, data_dir: str | None = None, log=print) -> dict:
    """{task: figures} for every task of `settings`, run in the backend's inference mode."""
    stride = settings.stride if settings.stride is not None else max(1, scorer.context // 2)
    results = {}
    with scorer.backend.inference(scorer.model):
        for task in settings.tasks:
            t0 = time.perf_counter()
            if task == "bpb":
                r = task_bpb(scorer, settings.bpb_source or ["val"], data_dir, stride, settings.limit)
            elif task == "wikitext2":
                r = task_wikitext2(scorer, task_file(task, settings.wikitext2), stride, settings.limit)
            else:
                r = task_hellaswag(scorer, task_file(task, settings.hellaswag), settings.limit, log)
            results[task] = {"version": TASK_VERSIONS[task], **r, "seconds": time.perf_counter() - t0}
    return results


def summary_metrics(results: dict) -> dict:
    """The headline figure(s) of each task, flat, for metrics.jsonl and the loss plot."""
    keys = {"bpb": ("bpb",), "wikitext2": ("word_ppl", "token_ppl", "bpb"), "hellaswag": ("acc", "acc_norm")}
    return {f"{task}_{k}": results[task][k] for task in results for k in keys[task]}


def table(results: dict) -> str:
    lines = [f"{'task':10} {'metric':10} {'value':>10} {'stderr':>8}  n"]
    for task, r in results.items():
        if task == "hellaswag":
            for k in ("acc", "acc_norm"):
                lines.append(f"{task:10} {k:10} {r[k]:10.4f} {r[k + '_stderr']:8.4f}  {r['items']} items "
                             f"({r['items_per_s']:.1f} items/s)")
        else:
            for k in ("word_ppl", "token_ppl", "bpb"):
                if k in r:
                    lines.append(f"{task:10} {k:10} {r[k]:10.4f} {'':8}  {r['tokens']:,} tokens")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command
def build_parser(backend_name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m nano_{backend_name}.eval", formatter_class=HelpFormatter,
                                description="Evaluate a checkpoint: bits per byte, WikiText-2 perplexity, HellaSwag.")
    p.add_argument("--ckpt", required=True, help="checkpoint dir, or a run dir (its newest good checkpoint)")
    p.add_argument("--tasks", default="bpb,wikitext2,hellaswag", help=f"comma-separated: {', '.join(TASK_VERSIONS)}")
    p.add_argument("--limit", type=int, default=None, help="hellaswag: the first N items; bpb/wikitext2: N windows")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (hellaswag: 4 per item)")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: half the context)")
    p.add_argument("--bpb-source", nargs="+", default=None, metavar="SPEC",
                   help="text for the bpb task: files, dirs, .jsonl, .parquet, builtin (default: the run's val shard)")
    p.add_argument("--wikitext2", default=None, metavar="FILE", help="wiki.test.raw (default: ../shared/data/...)")
    p.add_argument("--hellaswag", default=None, metavar="FILE",
                   help="hellaswag_val.jsonl (default: ../shared/data/...)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="JSON with every figure (default: eval-CKPT_NAME.json in the run dir)")
    p.add_argument("--device", default="auto", choices=DEVICES[backend_name])
    p.add_argument("--dtype", default="fp32", choices=("auto", "fp32", "bf16"), help="compute dtype")
    return p


def main(backend_class, argv=None) -> dict:
    args = build_parser(backend_class.name).parse_args(argv)
    try:
        settings = EvalSettings(parse_tasks(args.tasks), args.limit, args.stride, args.bpb_source, args.wikitext2,
                                args.hellaswag)
        check_settings(settings)
        if args.batch_size < 4:
            raise ValueError(f"--batch-size must be >= 4 (hellaswag scores an item's 4 endings together), got "
                             f"{args.batch_size}")
        backend = backend_class(device=args.device, dtype=args.dtype)
        path = resolve_checkpoint(args.ckpt, notices=print)
        model, tok, meta = load_model(backend, path)  # a LoRA checkpoint: its base with the adapters on top
        scorer = Scorer(backend, model, tok, args.batch_size)
        t0 = time.perf_counter()
        results = run_tasks(scorer, settings, meta.get("data_dir"))
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    report = {"checkpoint": str(path), "step": meta.get("step"), "tokens_seen": meta.get("tokens_seen"),
              "trained_with": meta.get("backend"), "backend": backend.name, "device": backend.device,
              "dtype": backend.dtype, "context": scorer.context, "batch_size": args.batch_size,
              "limit": args.limit, "seconds": time.perf_counter() - t0, "tasks": results}
    out = Path(args.out) if args.out else path.parent / f"eval-{path.name}.json"
    atomic_write(out, json.dumps(report, indent=1))
    print(f"[{path}: step {meta.get('step')}, {meta.get('tokens_seen') or 0:,} tokens seen; "
          f"{backend.name} on {backend.device}, {backend.dtype}]")
    print(table(results))
    print(f"wrote {out}")
    return report
