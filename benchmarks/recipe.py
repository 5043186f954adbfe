"""Which training recipe gives the lowest validation bits per byte for a fixed budget of wall time?

    python benchmarks/recipe.py                                   # every candidate at 600 s
    python benchmarks/recipe.py --budget 120 --only modern-muon tiny-adamw   # a screening pass over some of them
    python benchmarks/recipe.py --quick                           # micro models, seconds each: does it run
    python benchmarks/recipe.py --quick --only qwen3-3x192-opt4   # a candidate's flags on the micro model

Every candidate trains with nothing but `--max-time BUDGET` for its length (nano_core/schedule.py TimeBudget: the
schedule is laid out over the steps that fit and ends annealed at the deadline), from scratch, seed 0, on the same
shards: FineWeb-edu (the 281-document sample) + the 64 Gutenberg novels, vocab 8192, prepared once into
OUT/data. The held-out split is that data's validation shard (the first documents of the interleaved corpus, never
trained on); every candidate is scored on its first --eval-tokens tokens (the same text for all: the number of
validation batches is set from each candidate's batch and context), once, at the end. Evaluations during the run
are off (they would eat the budget of some candidates more than others); the clock counts training only.

Each candidate is one `python -m nano_{backend}.train` process (MLX ones with OpenBLAS preloaded, PyTorch ones never:
see nano_core/host.framework_env), one at a time: the candidates share the machine, so a figure is only as good as
the machine was quiet; the load average before and after each run is recorded. A finished candidate in OUT is
reused (same command) unless --fresh.

Output: a table sorted by val bpb (printed and OUT/table.md), OUT/recipe.json (every figure, the commands, the
machine) and OUT/recipe.png (val bpb per candidate, train-loss curves against training time).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from harness import (ROOT, child_env, finished, machine, pyplot, read_jsonl, run_child, save_figure, save_json,
                     save_text)

# The corpus beside the repository; a bare clone has its excerpts (the same names) in tests/fixtures/data, enough for
# --quick but not for figures.
DATA = "../shared/data" if (ROOT.parent / "shared" / "data").is_dir() else "tests/fixtures/data"  # from ROOT
SOURCES = [f"{DATA}/fineweb_edu/sample-10BT-281docs.jsonl", f"{DATA}/gutenberg"]

# Model shapes beyond the presets (ModelConfig fields; written to OUT/configs/NAME.json).
CLASSIC = dict(mlp="gelu", norm="layernorm", pos="learned", bias=True, tie_embeddings=True)  # GPT-2's choices
MODERN = dict(mlp="relu2", norm="rmsnorm", pos="rope", bias=False, tie_embeddings=False, qk_norm=True)
SHAPES = {
    "classic-2x128": dict(CLASSIC, n_layer=2, n_head=2, n_embd=128, seq_len=256),
    "classic-4x256": dict(CLASSIC, n_layer=4, n_head=4, n_embd=256, seq_len=256),  # = the `tiny` preset
    "classic-6x384": dict(CLASSIC, n_layer=6, n_head=6, n_embd=384, seq_len=256),
    "modern-4x256": dict(MODERN, n_layer=4, n_head=4, n_embd=256, seq_len=256),
    "modern-6x256": dict(MODERN, n_layer=6, n_head=4, n_embd=256, seq_len=256),
    "modern-4x384": dict(MODERN, n_layer=4, n_head=6, n_embd=384, seq_len=256),
    "modern-3x192": dict(MODERN, n_layer=3, n_head=3, n_embd=192, seq_len=256),
    "modern-4x256-tied": dict(MODERN, n_layer=4, n_head=4, n_embd=256, seq_len=256, tie_embeddings=True),
    "modern-4x256-t128": dict(MODERN, n_layer=4, n_head=4, n_embd=256, seq_len=128),
    "modern-4x256-softcap": dict(MODERN, n_layer=4, n_head=4, n_embd=256, seq_len=256, logit_softcap=15.0),
    "micro": dict(MODERN, n_layer=2, n_head=2, n_embd=64, seq_len=64),
    # blocks a stock Hugging Face / mlx-lm layout holds (issue 21: the default recipe must export)
    "nanochat-3x192": dict(MODERN, n_layer=3, n_head=3, n_embd=192, seq_len=256, norm_params=False, emb_norm=True,
                           logit_softcap=15.0),  # = the nanochat-3x192 preset: transformers and mlx-lm `nanochat`
    "nanochat-3x192-nocap": dict(MODERN, n_layer=3, n_head=3, n_embd=192, seq_len=256, norm_params=False,
                                 emb_norm=True),  # transformers' nanochat only: mlx-lm always caps at 15
    "nanochat-4x256": dict(MODERN, n_layer=4, n_head=4, n_embd=256, seq_len=256, norm_params=False, emb_norm=True,
                           logit_softcap=15.0),
    "qwen3-3x192": dict(MODERN, n_layer=3, n_head=3, n_embd=192, seq_len=256, mlp="swiglu"),  # the `qwen3` layout
    "qwen3-4x256": dict(MODERN, n_layer=4, n_head=4, n_embd=256, seq_len=256, mlp="swiglu"),
}
# Candidates trained on their own tokenizer (OUT/data-v{size}: the same sources, another --vocab-size); every other
# candidate uses vocab 8192 in OUT/data. bpb is per byte of text, so these compare directly; the held-out text is
# the first --eval-tokens tokens of the same interleaved validation documents, which a smaller vocabulary spreads
# over fewer bytes (docs/training.md also scores such runs on one fixed text: `eval --tasks wikitext2`).
VOCAB = {"qwen3-3x192-v4096": 4096, "qwen3-3x192-v2048": 2048, "qwen3-3x192-v1024": 1024, "qwen3-4x256-v4096": 4096}
DEFAULT_VOCAB = 8192
ADAMW = ["--optimizer", "adamw"]
MUON = ["--optimizer", "muon"]
QWEN3 = MUON + ["--lr", "3e-3", "--batch-size", "32"]  # the qwen3-3x192 candidate's flags (cpu-10min's until 12-07)
CPU10 = QWEN3 + ["--embed-lr", "0.09", "--head-lr", "0.009"]  # cpu-10min's flags since then
# name -> (shape, train flags, what it tests). Every flag not given is nano's default (lr 1e-3, cosine to 10%,
# warm-up 50, batch 8, AdamW betas (0.9, 0.95), weight decay 0.1, grad clip 1, dtype auto).
CANDIDATES: dict[str, tuple[str, list[str], str]] = {
    "tiny-adamw": ("classic-4x256", ADAMW, "the `tiny` preset with nano's defaults: the baseline"),
    "classic-2x128-adamw": ("classic-2x128", ADAMW + ["--lr", "3e-3"], "GPT-2 classic, smaller"),
    "classic-6x384-adamw": ("classic-6x384", ADAMW, "GPT-2 classic, larger"),
    "tiny-muon": ("classic-4x256", MUON + ["--lr", "3e-3"], "Muon alone, on the classic model"),
    "modern-adamw": ("modern-4x256", ADAMW + ["--lr", "3e-3"], "the modern architecture alone"),
    "modern-muon": ("modern-4x256", MUON + ["--lr", "3e-3"], "modern architecture + Muon"),
    "modern-muon-hi": ("modern-4x256", MUON + ["--lr", "6e-3", "--muon-lr", "0.04"], "... twice the learning rates"),
    "modern-muon-lo": ("modern-4x256", MUON + ["--lr", "2e-3", "--muon-lr", "0.01"], "... half the learning rates"),
    "modern-muon-wsd": ("modern-4x256", MUON + ["--lr", "3e-3", "--schedule", "wsd", "--decay-frac", "0.4",
                                                "--min-lr-frac", "0.0"], "... warmup-stable-decay to zero"),
    "modern-muon-b16": ("modern-4x256", MUON + ["--lr", "3e-3", "--batch-size", "16"], "... twice the batch"),
    "modern-muon-b4": ("modern-4x256", MUON + ["--lr", "3e-3", "--batch-size", "4"], "... half the batch"),
    "modern-muon-6x256": ("modern-6x256", MUON + ["--lr", "3e-3"], "... deeper"),
    "modern-muon-4x384": ("modern-4x384", MUON + ["--lr", "3e-3"], "... wider"),
    "modern-muon-3x192": ("modern-3x192", MUON + ["--lr", "3e-3"], "... smaller"),
    "modern-muon-tied": ("modern-4x256-tied", MUON + ["--lr", "3e-3"], "... with a tied head"),
    "modern-muon-t128": ("modern-4x256-t128", MUON + ["--lr", "3e-3", "--batch-size", "16"],
                         "... context 128, same tokens per step"),
    "modern-muon-fp32": ("modern-4x256", MUON + ["--lr", "3e-3", "--dtype", "fp32"], "... in fp32, not bf16"),
    "modern-muon-wd0": ("modern-4x256", MUON + ["--lr", "3e-3", "--weight-decay", "0"], "... without weight decay"),
    "modern-muon-warm20": ("modern-4x256", MUON + ["--lr", "3e-3", "--warmup-steps", "20"], "... shorter warm-up"),
    "modern-muon-zero": ("modern-4x256", MUON + ["--lr", "3e-3", "--min-lr-frac", "0"], "... cosine down to zero"),
    "modern-muon-softcap": ("modern-4x256-softcap", MUON + ["--lr", "3e-3"], "... logits soft-capped at 15"),
    # second round, around the best of the first (batch 16)
    "b16-b32": ("modern-4x256", MUON + ["--lr", "3e-3", "--batch-size", "32"], "batch 32"),
    "b16-zero": ("modern-4x256", MUON + ["--lr", "3e-3", "--batch-size", "16", "--min-lr-frac", "0"],
                 "batch 16, cosine down to zero"),
    "b16-softcap": ("modern-4x256-softcap", MUON + ["--lr", "3e-3", "--batch-size", "16"], "batch 16, softcap 15"),
    "b16-3x192": ("modern-3x192", MUON + ["--lr", "3e-3", "--batch-size", "16"], "batch 16, 3 x 192"),
    "b16-warm20": ("modern-4x256", MUON + ["--lr", "3e-3", "--batch-size", "16", "--warmup-steps", "20"],
                   "batch 16, warm-up 20"),
    "b16-hi": ("modern-4x256", MUON + ["--lr", "6e-3", "--muon-lr", "0.04", "--batch-size", "16"],
               "batch 16, twice the learning rates"),
    "b16-adamw": ("modern-4x256", ADAMW + ["--lr", "3e-3", "--batch-size", "16"],
                  "4 x 256, batch 16, with AdamW instead of Muon"),
    "b16-3x192-adamw": ("modern-3x192", ADAMW + ["--lr", "3e-3", "--batch-size", "16"],
                        "3 x 192, batch 16, with AdamW instead of Muon"),
    "b32-3x192": ("modern-3x192", MUON + ["--lr", "3e-3", "--batch-size", "32"], "3 x 192, batch 32"),
    # third round (2026-12-07): the recipe's settings on blocks that export (nanochat, qwen3 layouts)
    "nc-3x192": ("nanochat-3x192", MUON + ["--lr", "3e-3", "--batch-size", "32"],
                 "cpu-10min's settings on nanochat's block (parameter-free norms, embedding norm, softcap 15)"),
    "nc-3x192-nocap": ("nanochat-3x192-nocap", MUON + ["--lr", "3e-3", "--batch-size", "32"],
                       "... without the soft cap"),
    "nc-3x192-hi": ("nanochat-3x192", MUON + ["--lr", "6e-3", "--muon-lr", "0.03", "--batch-size", "32"],
                    "... higher learning rates"),
    "nc-4x256": ("nanochat-4x256", MUON + ["--lr", "3e-3", "--batch-size", "32"], "... 4 x 256"),
    "qwen3-3x192": ("qwen3-3x192", MUON + ["--lr", "3e-3", "--batch-size", "32"],
                    "cpu-10min's settings on a SwiGLU block with weighted norms (the qwen3 layout)"),
    # fourth round: Muon's opt-in variants (nano_core/muon.py) on the cpu-10min candidate, one at a time and together
    "qwen3-3x192-polar": ("qwen3-3x192", QWEN3 + ["--muon-ns", "polar"], "... Polar Express coefficients"),
    "qwen3-3x192-normuon": ("qwen3-3x192", QWEN3 + ["--normuon"], "... NorMuon"),
    "qwen3-3x192-cwd": ("qwen3-3x192", QWEN3 + ["--cautious-wd"], "... cautious weight decay"),
    "qwen3-3x192-mwarm": ("qwen3-3x192", QWEN3 + ["--muon-momentum-warmup", "100"],
                          "... Muon momentum 0.85 -> 0.95 over 100 steps"),
    "qwen3-3x192-opt4": ("qwen3-3x192", QWEN3 + ["--muon-ns", "polar", "--normuon", "--cautious-wd",
                                                 "--muon-momentum-warmup", "100"], "... all four Muon variants"),
    "qwen3-3x192-zproj": ("qwen3-3x192", QWEN3 + ["--zero-init-proj"], "... zero-initialised output projections"),
    # AdamW's embedding and head learning rates (--embed-lr, --head-lr; the recipe's --lr is 3e-3)
    "qwen3-3x192-e10": ("qwen3-3x192", QWEN3 + ["--embed-lr", "0.03"], "... embeddings at 10x the lr"),
    "qwen3-3x192-e30": ("qwen3-3x192", QWEN3 + ["--embed-lr", "0.09"], "... embeddings at 30x the lr"),
    "qwen3-3x192-e100": ("qwen3-3x192", QWEN3 + ["--embed-lr", "0.3"], "... embeddings at 100x the lr"),
    "qwen3-3x192-h3": ("qwen3-3x192", QWEN3 + ["--head-lr", "0.009"], "... the head at 3x the lr"),
    "qwen3-3x192-e30h3": ("qwen3-3x192", QWEN3 + ["--embed-lr", "0.09", "--head-lr", "0.009"],
                          "... embeddings at 30x, the head at 3x the lr"),
    "qwen3-3x192-e100h3": ("qwen3-3x192", QWEN3 + ["--embed-lr", "0.3", "--head-lr", "0.009"],
                           "... embeddings at 100x, the head at 3x the lr"),
    # issue 21's vocabulary lever: the head is half of a 3 x 192 model's FLOPs at 8,192 tokens
    "qwen3-3x192-v4096": ("qwen3-3x192", QWEN3, "... a 4,096-token vocabulary"),
    "qwen3-3x192-v2048": ("qwen3-3x192", QWEN3, "... a 2,048-token vocabulary"),
    "qwen3-3x192-v1024": ("qwen3-3x192", QWEN3, "... a 1,024-token vocabulary"),
    "qwen3-4x256-v4096": ("qwen3-4x256", QWEN3, "4 x 256 on a 4,096-token vocabulary (the head's FLOPs to the body)"),
    # fifth round (2026-12-07, night), run with --steps: settings that leave the step's speed alone, on cpu-10min
    "cpu10": ("qwen3-3x192", CPU10, "cpu-10min as it is"),
    "cpu10-m03": ("qwen3-3x192", CPU10 + ["--muon-lr", "0.03"], "... Muon's lr 0.03"),
    "cpu10-m04": ("qwen3-3x192", CPU10 + ["--muon-lr", "0.04"], "... Muon's lr 0.04"),
    "cpu10-wsd": ("qwen3-3x192", CPU10 + ["--schedule", "wsd", "--decay-frac", "0.5", "--min-lr-frac", "0"],
                  "... warmup-stable-decay, the last half linear to zero"),
    "cpu10-wd0": ("qwen3-3x192", CPU10 + ["--weight-decay", "0"], "... without weight decay"),
    "cpu10-w20": ("qwen3-3x192", CPU10 + ["--warmup-steps", "20"], "... warm-up 20 steps"),
    "cpu10-lr6": ("qwen3-3x192", CPU10 + ["--lr", "6e-3"], "... AdamW's base lr (norm weights) 6e-3"),
    "cpu10-seed1": ("qwen3-3x192", CPU10 + ["--seed", "1"], "cpu-10min, another seed (the spread at fixed steps)"),
}
QUICK = {"micro-adamw": ("micro", ADAMW + ["--lr", "3e-3", "--warmup-steps", "5"], "quick check"),
         "micro-muon": ("micro", MUON + ["--lr", "3e-3", "--warmup-steps", "5"], "quick check")}


def prepare_data(out: Path, quick: bool, vocab: int = DEFAULT_VOCAB) -> Path:
    """The shared shards, prepared once per vocabulary (python -m nano_core.prepare resumes and refuses another
    tokenizer). --quick trains every candidate on the FineWeb sample at vocab 512."""
    vocab = 512 if quick else vocab
    data = out / ("data" if vocab in (512, DEFAULT_VOCAB) else f"data-v{vocab}")
    if (data / "manifest.json").is_file():
        return data
    if DATA != "../shared/data" and not quick:
        print(f"notice: ../shared/data is absent; preparing the excerpts in {DATA} (figures from them are not the "
              f"ones in docs/training.md)", flush=True)
    sources = SOURCES[:1] if quick else SOURCES
    cmd = [sys.executable, "-m", "nano_core.prepare", "--out", str(data), "--vocab-size", str(vocab)]
    for s in sources:
        cmd += ["--source", s]
    run_child(f"preparing the shared data (vocab {vocab})", cmd, out / "logs" / f"prepare-v{vocab}.log",
              child_env("torch"))
    return data


def command(name: str, spec: tuple, args, data: Path) -> list[str]:
    shape, flags, _ = spec
    config = args.out / "configs" / f"{shape}.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    save_json(config, SHAPES[shape])
    batch = int(flags[flags.index("--batch-size") + 1]) if "--batch-size" in flags else 8
    eval_steps = math.ceil(args.eval_tokens / (batch * SHAPES[shape]["seq_len"]))
    return [sys.executable, "-m", f"nano_{args.backend}.train", "--data", str(data), "--config", str(config),
            *(["--max-steps", str(args.steps)] if args.steps else ["--max-time", str(args.budget)]),
            "--seed", "0", "--out", str(args.out / "runs" / name), "--overwrite",
            "--eval-every", "0", "--eval-steps", str(eval_steps), "--sample-every", "0", "--ckpt-every", "0",
            "--keep", "1", "--log-every", "25", *flags]


def run_candidate(name: str, spec: tuple, args, data: Path) -> dict:
    cmd = command(name, spec, args, data)
    run_dir = args.out / "runs" / name
    done = args.out / "results" / f"{name}.json"
    result = finished(done, cmd, args.fresh)
    if result is not None:
        print(f"{name}: reusing {done}", flush=True)
        return result
    log = args.out / "logs" / f"{name}.log"
    length = f"{args.steps} steps" if args.steps else f"{args.budget:.0f} s"
    child = run_child(f"{name}: {spec[2]} ({length})", cmd, log, child_env(args.backend))
    records = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if "train_loss" in r]
    final = [r for r in records if "val_bpb" in r][-1]
    plan = next((r for r in reversed(records) if "schedule_steps" in r), {})  # the last horizon (it is revised)
    meta = json.loads(next(run_dir.glob("ckpt_*/meta.json")).read_text())
    speeds = sorted(r["tok_per_s"] for r in train[2:]) or [float("nan")]
    result = {
        "name": name, "what": spec[2], "shape": spec[0], "model": SHAPES[spec[0]], "flags": spec[1],
        "vocab_size": json.loads((data / "manifest.json").read_text())["vocab_size"],
        "command": cmd[1:], "budget_s": None if args.steps else args.budget, "fixed_steps": args.steps,
        "wall_s": child["seconds"],
        "val_bpb": final["val_bpb"], "val_loss": final["val_loss"], "steps": final["step"],
        "planned_steps": plan.get("schedule_steps"), "tokens": meta["tokens_seen"],
        "tok_per_s_median": speeds[len(speeds) // 2], "params": None,
        "curve": [(r["step"], r["train_loss"]) for r in train],
        "load_before": child["loadavg_before"], "load_after": child["loadavg_after"],
    }
    startup = next((ln for ln in log.read_text().splitlines() if ln.startswith(f"nano {args.backend} |")), "")
    if "params " in startup:
        result["params"] = startup.split("params ")[1].split(" |")[0]
    save_json(done, result)
    print(f"{name}: val bpb {result['val_bpb']:.4f} after {result['steps']:,} steps "
          f"({result['tokens'] / 1e6:.2f}M tokens, {result['tok_per_s_median']:,.0f} tok/s)", flush=True)
    return result


def table(results: list[dict], baseline: str | None) -> str:
    base = next((r["val_bpb"] for r in results if r["name"] == baseline), None)
    lines = ["| candidate | model | vocab | params | steps | tokens | tok/s | val bpb | vs baseline |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: r["val_bpb"]):
        vs = f"{(r['val_bpb'] / base - 1) * 100:+.1f}%" if base else ""
        lines.append(f"| {r['name']} | {r['shape']} | {r.get('vocab_size', DEFAULT_VOCAB):,} | {r['params']} | "
                     f"{r['steps']:,} | {r['tokens'] / 1e6:.2f}M | "
                     f"{r['tok_per_s_median']:,.0f} | {r['val_bpb']:.4f} | {vs} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()
    ordered = sorted(results, key=lambda r: r["val_bpb"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    a.barh([r["name"] for r in ordered][::-1], [r["val_bpb"] for r in ordered][::-1], color="tab:blue")
    lo = min(r["val_bpb"] for r in ordered)
    a.set_xlim(lo * 0.95, max(r["val_bpb"] for r in ordered) * 1.01)
    a.set_xlabel("val bits per byte (lower is better)")
    fixed = ordered[0].get("fixed_steps")
    a.set_title(f"{fixed:,} steps each" if fixed else f"{ordered[0]['budget_s']:.0f} s of training each")
    for r in ordered:
        steps, loss = zip(*r["curve"]) if r["curve"] else ((), ())
        frac = [s / max(r["steps"], 1) for s in steps]
        b.plot(frac, loss, label=r["name"], lw=1)
    b.set_xlabel("fraction of the budget (steps / steps done)")
    b.set_ylabel("train loss (nats/token)")
    b.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=600.0, help="seconds of training per candidate")
    p.add_argument("--steps", type=int, help="train every candidate exactly this many steps instead of --budget "
                   "seconds: compares settings that leave the step's speed alone (learning rates, schedule, weight "
                   "decay) without the spread a time budget's step count adds")
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"candidates to run (default all): "
                                                              f"{', '.join(CANDIDATES)}")
    p.add_argument("--backend", choices=("torch", "mlx"), default="torch")
    p.add_argument("--eval-tokens", type=int, default=131_072, help="held-out tokens every candidate is scored on")
    p.add_argument("--baseline", default="tiny-adamw", help="the row the others are compared with")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "recipe_bench")
    p.add_argument("--quick", action="store_true", help="micro models, 4 s each, the FineWeb sample at vocab 512 "
                   "(with --only: any candidate's flags on the micro model)")
    p.add_argument("--fresh", action="store_true", help="rerun candidates OUT already holds")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    candidates = CANDIDATES
    if args.quick:  # QUICK by default; --only may also name any candidate: its flags on the micro model
        candidates = {**{n: ("micro", flags, what) for n, (_, flags, what) in CANDIDATES.items()}, **QUICK}
    if args.quick:
        args.budget, args.eval_tokens, args.baseline = min(args.budget, 4.0), 8192, "micro-adamw"
    unknown = [n for n in args.only or [] if n not in candidates]
    if unknown:
        p.error(f"unknown candidate {unknown[0]!r}; choose from {', '.join(candidates)}")
    args.out = args.out.resolve()
    results = [run_candidate(n, candidates[n], args, prepare_data(args.out, args.quick, VOCAB.get(n, DEFAULT_VOCAB)))
               for n in (args.only or (QUICK if args.quick else candidates))]
    text = table(results, args.baseline)
    report = {"budget_s": None if args.steps else args.budget, "fixed_steps": args.steps, "backend": args.backend,
              "eval_tokens": args.eval_tokens,
              "baseline": args.baseline, "machine": machine(), "results": results}
    save_json(args.out / "recipe.json", report)
    save_text(args.out / "table.md", text)
    plot(results, args.out / "recipe.png")
    cpu = report["machine"]
    each = f"{args.steps:,} steps" if args.steps else f"{args.budget:.0f} s"
    print(f"\n{cpu['cpu']}, {cpu['cpu_count']} CPUs, {args.backend}, {each} each\n{text}")
    print(f"wrote {args.out / 'recipe.json'}, table.md, recipe.png")
    return report


if __name__ == "__main__":
    main()
