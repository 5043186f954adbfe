"""Peers side by side: tokens/s of nanoGPT, mlx-examples' transformer_lm and nano, each as its authors ship it.

    git clone https://github.com/karpathy/nanoGPT ~/src/nanoGPT
    git clone https://github.com/ml-explore/mlx-examples ~/src/mlx-examples
    python benchmarks/peers.py --nanogpt ~/src/nanoGPT/model.py --transformer-lm ~/src/mlx-examples/transformer_lm
    python benchmarks/peers.py --nanogpt ~/src/nanoGPT --rounds 4 --steps 30      # nanoGPT and nano only
    python benchmarks/peers.py --quick --out /tmp/peers                           # seconds: tiny config (the test)

The rows, each run in a fresh process of its own, at the comparison config (GPT-2 classic sizes: 6 layers, 384
wide, 6 heads, T=256, vocab 8192, batch 8, dropout 0, AdamW), on the same seeded batch of random tokens (speed does
not depend on the text):
  nanoGPT fp32, nanoGPT + bf16 autocast   the user's nanoGPT model.py (--nanogpt), its GPT, GPTConfig and
                                          configure_optimizers in train.py's loop (benchmarks/peers_workers.py says
                                          line by line what is followed); --nanogpt-compile adds train.py's
                                          torch.compile (its GPU default; a CPU needs a C++ compiler for it)
  mlx-examples transformer_lm (compiled)  the user's transformer_lm directory (--transformer-lm): its TransformerLM
                                          and main.py's compiled AdamW step, OpenBLAS preloaded as for nano's MLX
  nano torch fp32, nano torch --dtype auto, nano mlx fp32
                                          benchmarks/step_speed.py: the training CLI's own step (auto = what
                                          `--dtype auto` resolves to on this CPU: bf16 autocast where it is fast)
Each run: --warmup untimed steps, then --steps steps, each timed until its loss has been read on the host;
tok/s = B x T / the median step time. --rounds rounds run every row once, in turns (the order reverses every
round, so that a drift of the machine's load falls on all rows alike); the table shows each round, the median over
rounds, and nano's ratio to the matching peer (nano torch fp32 / nanoGPT fp32, nano torch auto / nanoGPT + bf16,
nano mlx / transformer_lm). Shared cores move single figures by tens of percent (docs/benchmarks.md): compare
rounds before trusting a ratio, and figures only with figures taken under a similar load (recorded).

A peer left out (no --nanogpt / --transformer-lm) is one notice line naming the flag; nano's rows always run. A
path that is not the peer it should be is a one-line error before anything runs. Output in --out: peers.md (the
table, the machine, the load average), peers.json (every run's record and result), peers.png (median tok/s per
row, each round a dot), and logs/ with every child's output.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

from harness import (ROOT, StepError, child_env, fmt_load, last_json, machine, pyplot, run_child, save_figure,
                     save_json, save_text)
from peers_workers import PeerError, nanogpt_source, transformer_lm_source
from step_speed import COMPARE_CONFIG

DIMS = ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size")
COMPARE = {k: COMPARE_CONFIG[k] for k in DIMS}  # 6 x 384, 6 heads, T=256, V=8192
QUICK = dict(n_layer=1, n_head=2, n_embd=32, seq_len=16, vocab_size=64)
NANOGPT_FP32, NANOGPT_BF16, TLM = "nanoGPT fp32", "nanoGPT + bf16 autocast", "mlx-examples transformer_lm (compiled)"
CLONES = {"nanogpt": "git clone https://github.com/karpathy/nanoGPT",
          "transformer_lm": "git clone https://github.com/ml-explore/mlx-examples"}


class Row:
    """One implementation: how its child runs, and what its runs gave (a plain class, not a dataclass: the tests
    load this script without registering it as a module)."""

    def __init__(self, name: str, slug: str, framework: str, argv: list[str], peer: str | None = None,
                 result_file: bool = False):
        self.name, self.slug = name, slug  # slug: the name in file names
        self.framework = framework  # torch | mlx: the child's environment (OpenBLAS preloaded for mlx only)
        self.argv = argv  # the child's script and arguments, after the interpreter
        self.peer = peer  # nano rows: the peer row it is compared with
        self.result_file = result_file  # step_speed.py writes its JSON to --out; the workers print theirs
        self.tok_s: list = []  # per round; None where the run failed
        self.runs: list = []


# ----------------------------------------------------------------------------- the rows
def plan(args) -> tuple[list[Row], list[str]]:
    """The rows to run and the notices about those left out. PeerError for a path that is not its peer."""
    cfg = QUICK if args.quick else COMPARE
    common = ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    worker = [str(ROOT / "benchmarks" / "peers_workers.py")]
    have = {fw: importlib.util.find_spec(fw) is not None for fw in ("torch", "mlx")}
    rows, notices = [], []
    if args.nanogpt:
        src = str(nanogpt_source(args.nanogpt))
        compiled = ["--compile"] if args.nanogpt_compile else []
        suffix = " + torch.compile" if args.nanogpt_compile else ""
        nanogpt = worker + ["nanogpt", src, "--config", json.dumps(cfg), *common, *compiled]
        rows += [Row(NANOGPT_FP32 + suffix, "nanogpt-fp32", "torch", nanogpt),
                 Row(NANOGPT_BF16 + suffix, "nanogpt-bf16", "torch", nanogpt + ["--bf16"])]
    else:
        notices.append(f"notice: nanoGPT rows skipped; --nanogpt PATH/TO/nanoGPT/model.py supplies them "
                       f"({CLONES['nanogpt']})")
    if args.transformer_lm:
        src = str(transformer_lm_source(args.transformer_lm))
        tlm = worker + ["transformer_lm", src, "--config", json.dumps(cfg), *common]
        rows.append(Row(TLM, "transformer_lm", "mlx", tlm))
    else:
        notices.append(f"notice: transformer_lm row skipped; --transformer-lm PATH/TO/mlx-examples/transformer_lm "
                       f"supplies it ({CLONES['transformer_lm']})")
    step_speed = [str(ROOT / "benchmarks" / "step_speed.py")]
    quick = ["--config", json.dumps(QUICK)] if args.quick else []
    fp32_peer, bf16_peer = ([r.name for r in rows[:2]] if args.nanogpt else [NANOGPT_FP32, NANOGPT_BF16])
    for name, fw, dtype, peer in (("nano torch fp32", "torch", "fp32", fp32_peer),
                                  ("nano torch --dtype auto", "torch", "auto", bf16_peer),
                                  ("nano mlx fp32", "mlx", "fp32", TLM)):
        nano = step_speed + ["--backend", fw, "--dtype", dtype, *quick, *common]
        rows.append(Row(name, f"nano-{fw}-{dtype}", fw, nano, peer=peer, result_file=True))
    for fw, ok in have.items():
        if not ok:
            notices.append(f"notice: {fw} is not installed here; its rows are skipped (pip install -e '.[{fw}]')")
    return [r for r in rows if have[r.framework]], notices


def measure(row: Row, label: str, out: Path, timeout: float) -> dict:
    """One run of a row in a fresh process: the child's record (harness.run_child) with its result."""
    argv = list(row.argv)
    result_path = out / "runs" / f"{label}.json"
    if row.result_file:
        argv += ["--out", str(result_path)]
    record = run_child(label, [sys.executable, *argv], out / "logs" / f"{label}.log", child_env(row.framework),
                       timeout=timeout)
    if row.result_file:
        result = json.loads(result_path.read_text())
    else:
        result = last_json((out / "logs" / f"{label}.log").read_text(errors="replace"))
        if result is None:
            raise StepError(f"{label}: no result line in its output -- see {out / 'logs' / f'{label}.log'}")
    return {**record, "result": result}


def runs_as(result: dict) -> str:
    """What ran, in a few words, from a run's result."""
    if "backend" in result:  # step_speed.py
        how = "compiled" if result["compile"] else "eager"
        asked = " (--dtype auto)" if result.get("dtype_asked") == "auto" else ""
        framework, _, rest = result["runtime"].partition(", ")
        blas = f", {rest.split(' (')[0]}" if result["backend"] == "mlx" else ""
        return f"{framework}, {result['dtype']}{asked}, {result['attn_impl']} attention, {how}{blas}"
    rt = result["runtime"]
    if result["impl"] == "nanogpt":
        return (f"{rt['framework']}, {'bf16 autocast' if rt['autocast'] else 'fp32'}, "
                f"{'torch.compile' if rt['compile'] else 'eager'}")
    blas = "OpenBLAS" if rt["blas"].startswith("OpenBLAS") else rt["blas"].split(" (")[0]
    differs = f"; main.py differs: {len(rt['differs'])} statement(s) not found" if rt["differs"] else ""
    return f"{rt['framework']}, fp32, compiled, {blas}{differs}"


# ----------------------------------------------------------------------------- the report
def median(values) -> float | None:
    good = [v for v in values if v is not None]
    return statistics.median(good) if good else None


def ratios(rows: dict) -> dict:
    """{row name: (peer name, median / the peer's median)} for the rows with a peer measured."""
    out = {}
    for name, r in rows.items():
        peer = r.get("peer")
        if peer in rows and median(r["tok_s"]) and median(rows[peer]["tok_s"]):
            out[name] = (peer, median(r["tok_s"]) / median(rows[peer]["tok_s"]))
    return out


def table(rows: dict) -> str:
    """Markdown: implementation, tok/s of each round, the median, nano's ratio to its peer, what ran.
    `rows`: {name: {"tok_s": [per round, None = failed], "peer": name or None, "runs_as": text}}."""
    n = max((len(r["tok_s"]) for r in rows.values()), default=0)
    head = ["implementation", *[f"round {i} tok/s" for i in range(1, n + 1)], "median tok/s", "vs peer", "runs as"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (n + 2) + "---|"]
    rel = ratios(rows)

    def fmt(v):
        return "failed" if v is None else f"{v:,.0f}"

    for name, r in rows.items():
        cells = [fmt(v) for v in r["tok_s"]] + [""] * (n - len(r["tok_s"]))
        med = median(r["tok_s"])
        if name in rel:
            vs = f"{rel[name][1]:.3g}x {rel[name][0]}"
        elif r.get("peer"):
            vs = f"({r['peer']} not run)"
        else:
            vs = "peer"
        lines.append(f"| {name} | " + " | ".join([*cells, "failed" if med is None else f"**{med:,.0f}**", vs,
                                                   r.get("runs_as", "")]) + " |")
    return "\n".join(lines)


def plot(rows: dict, path: Path, title: str) -> None:
    """Median tok/s per row as bars (peers grey, nano blue), each round's figure a dot on its bar."""
    plt = pyplot()
    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(names) + 1.4))
    for i, name in enumerate(names):
        r = rows[name]
        med = median(r["tok_s"]) or 0
        ax.barh(i, med, color="C0" if r.get("peer") else "0.65")
        good = [v for v in r["tok_s"] if v is not None]
        ax.plot(good, [i] * len(good), "k.", ms=5)
        ax.text(med, i, f" {med:,.0f}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens / s (median over rounds; dots: each round)")
    top = max([v for r in rows.values() for v in r["tok_s"] if v is not None] + [1])
    ax.set_xlim(0, top * 1.18)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------- driver
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", default=None, help="nanoGPT's model.py (or its clone's directory)")
    p.add_argument("--transformer-lm", default=None, help="mlx-examples' transformer_lm directory (holding main.py)")
    p.add_argument("--nanogpt-compile", action="store_true",
                   help="torch.compile nanoGPT's model, as its train.py's compile=True (needs a C++ compiler)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per run (compilation, allocator)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument("--quick", action="store_true", help="a tiny config, 2 timed steps after 2 warm-up (the test)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peers")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.batch_size = 2, 2, 2  # warm-up 2: a compiled MLX step retraces once
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        sys.exit("error: --rounds, --steps and --batch-size take at least 1, --warmup at least 0")
    try:
        rows, notices = plan(args)
    except PeerError as e:
        sys.exit(f"error: {e}")
    for line in notices:
        print(line, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    load_start, failures = os.getloadavg(), []
    for rnd in range(args.rounds):
        for row in (rows if rnd % 2 == 0 else rows[::-1]):
            label = f"{row.slug}-r{rnd + 1}"
            try:
                run = measure(row, label, args.out, args.timeout)
                row.tok_s.append(run["result"]["tok_s"])
            except StepError as e:
                print(f"error: {e}", flush=True)
                failures.append(str(e))
                run = {"step": label, "error": str(e)}
                row.tok_s.append(None)
            row.runs.append(run)
    load_end = os.getloadavg()
    report_rows = {}
    for row in rows:
        done = [r["result"] for r in row.runs if "result" in r]
        report_rows[row.name] = {"tok_s": row.tok_s, "median": median(row.tok_s), "peer": row.peer,
                                 "runs_as": runs_as(done[-1]) if done else "", "runs": row.runs}
    for name, (peer, ratio) in ratios(report_rows).items():
        report_rows[name]["ratio"] = {"peer": peer, "value": ratio}
    cfg = QUICK if args.quick else COMPARE
    m = machine()
    setting = (f"{cfg['n_layer']} layers x {cfg['n_embd']}, {cfg['n_head']} heads, T={cfg['seq_len']}, "
               f"V={cfg['vocab_size']}, B={args.batch_size}; {args.warmup} warm-up + {args.steps} timed steps a run, "
               f"{args.rounds} round(s)")
    text = table(report_rows)
    print(text)
    md = [f"# Peers side by side ({time.strftime('%Y-%m-%d')})", "", setting, "", text, "",
          f"machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['platform']}, Python {m['python']}; {m['date']}",
          f"load average (1/5/15 min): {fmt_load(load_start)} at the start, {fmt_load(load_end)} at the end",
          *notices, *[f"error: {f}" for f in failures]]
    save_text(args.out / "peers.md", "\n".join(md))
    report = {"version": 1, "machine": m, "loadavg_start": load_start, "loadavg_end": load_end,
              "config": cfg, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
              "rounds": args.rounds, "quick": args.quick,
              "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
              "sources": {"nanogpt": args.nanogpt, "transformer_lm": args.transformer_lm}, "notices": notices,
              "failures": failures, "rows": report_rows}
    save_json(args.out / "peers.json", report)
    plot(report_rows, args.out / "peers.png", f"{m['cpu']}, {m['date']}\n{setting}\ngrey: the peers, blue: nano")
    print(f"wrote {args.out}/peers.md, peers.json and peers.png")
    if failures:
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
