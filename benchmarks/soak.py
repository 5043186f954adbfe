"""Does a long run leak? A micro model trained for many steps on each backend, through the real training command,
with the process's resident memory and the step time compared early and late in the run.

    python benchmarks/soak.py                     # 20,000 steps per backend (a few minutes each on 2 cores)
    python benchmarks/soak.py --steps 400 --quick # seconds: does it run (the test suite's check)

What can grow over a long run: MLX's compile cache (a retrace per new shape would add a graph every step), MLX's
buffer cache, PyTorch's caching allocator, Python objects kept per step (metrics, the progress bar, the loader),
and open files (checkpoints, metrics.jsonl). The child is `python -m nano_{backend}.train` with periodic evaluation,
sampling and checkpoints, so every part of the loop runs many times. The parent samples the child's resident set
(/proc/PID/status VmRSS) every 0.2 s and pairs it with the step the child last logged; the step time comes
from the child's own tokens/s records. "Early" is the window ending at --early (default 2,000 steps), "late" the
last window of the same length; growth = late / early - 1, and the verdict line says whether both stay within
--tolerance (5%). "2nd half" is the resident set's growth from the window ending at the middle step to the late
one: a leak keeps growing there, while buffers the allocator keeps after the first evaluation or checkpoint are a
one-off step before it.

Outputs in --out: soak.json, soak.md (the table) and soak.png (resident memory and step time against the step).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from harness import ROOT, child_env, machine, pyplot, read_jsonl, run_child, save_figure, save_json, save_text

MICRO = {"n_layer": 2, "n_head": 2, "n_embd": 64, "seq_len": 64, "mlp": "relu2", "norm": "rmsnorm", "pos": "rope",
         "bias": False, "tie_embeddings": False, "qk_norm": True}
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare"
if not DATA.is_dir():  # a bare clone: the excerpt under the same name
    DATA = ROOT / "tests" / "fixtures" / "data" / "tinyshakespeare"


def rss_bytes(pid: int) -> int | None:
    """The resident set of a live process (Linux); None when it cannot be read."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Sampler:
    """Called at every poll of the child: (step the child last logged, its resident set)."""

    def __init__(self, metrics: Path):
        self.metrics, self.samples, self._seen, self._step = metrics, [], 0, 0

    def __call__(self, pid: int) -> None:
        try:
            size = self.metrics.stat().st_size
        except OSError:
            size = 0
        if size != self._seen:  # read the records only when the file grew
            self._seen = size
            steps = [r["step"] for r in read_jsonl(self.metrics) if "train_loss" in r]
            self._step = steps[-1] if steps else 0
        rss = rss_bytes(pid)
        if rss is not None and self._step:
            self.samples.append((self._step, rss))


def window(pairs: list[tuple[int, float]], lo: int, hi: int, nearest: bool = False) -> float:
    """The median of the values logged at steps in (lo, hi]. With `nearest`, a window no sample fell in (a short run
    faster than the sampling: --quick on a fast machine) takes the sample closest to it instead of no value."""
    values = [v for s, v in pairs if lo < s <= hi]
    if not values and nearest and pairs:
        values = [min(pairs, key=lambda sv: min(abs(sv[0] - lo), abs(sv[0] - hi)))[1]]
    return statistics.median(values) if values else float("nan")


def soak(backend: str, args, out: Path) -> dict:
    run_dir = out / f"run-{backend}"
    config = out / "micro.json"
    config.write_text(json.dumps(MICRO))
    every = max(1, args.steps // 200)  # about 200 train records however long the run
    cmd = [sys.executable, "-m", f"nano_{backend}.train", "--source", str(DATA), "--vocab-size", "512",
           "--config", str(config), "--max-steps", str(args.steps), "--batch-size", "4", "--dtype", "fp32",
           "--device", "cpu", "--lr", "3e-3", "--warmup-steps", "20", "--log-every", str(every),
           "--eval-every", str(max(1, args.steps // 10)), "--eval-steps", "2", "--sample-every",
           str(max(1, args.steps // 10)), "--sample-tokens", "8", "--ckpt-every", str(max(1, args.steps // 4)),
           "--keep", "2", "--out", str(run_dir), "--overwrite"]
    sampler = Sampler(run_dir / "metrics.jsonl")
    env = child_env(backend)
    env["NANO_CACHE"] = str(out / "cache")
    record = run_child(f"soak {backend} ({args.steps:,} steps)", cmd, out / f"soak-{backend}.log", env,
                       watch=sampler, poll_s=0.2)
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "tok_per_s" in r and "train_loss" in r]
    tokens_per_step = 4 * MICRO["seq_len"]
    step_ms = [(r["step"], 1000 * tokens_per_step / r["tok_per_s"]) for r in records if r["tok_per_s"] > 0]
    early_hi, late_lo = args.early, args.steps - args.early
    first_lo = max(every, args.early // 2)  # skip the very first records: compilation and warm-up
    result = {"backend": backend, "steps": args.steps, "seconds": record["seconds"],
              "rss_early": window(sampler.samples, first_lo, early_hi, nearest=True),
              "rss_late": window(sampler.samples, late_lo, args.steps, nearest=True),
              "ms_early": window(step_ms, first_lo, early_hi), "ms_late": window(step_ms, late_lo, args.steps),
              "peak_rss_bytes": record["peak_rss_bytes"], "rss_samples": sampler.samples[::10], "step_ms": step_ms,
              "load_before": record["loadavg_before"], "load_after": record["loadavg_after"]}
    result["rss_growth"] = result["rss_late"] / result["rss_early"] - 1
    # the second half alone: a leak keeps growing there, while the first evaluation's and checkpoint's buffers, kept
    # by the allocator, are a one-off step before it
    result["rss_mid"] = window(sampler.samples, args.steps // 2 - args.early, args.steps // 2, nearest=True)
    result["rss_growth_2nd_half"] = result["rss_late"] / result["rss_mid"] - 1
    result["ms_growth"] = result["ms_late"] / result["ms_early"] - 1
    return result


def table(results: list[dict], tolerance: float) -> str:
    rows = ["| backend | steps | RSS early | RSS late | growth | 2nd half | ms/step early | ms/step late | growth "
            "| verdict |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        ok = r["rss_growth"] <= tolerance and r["ms_growth"] <= tolerance
        half = r.get("rss_growth_2nd_half", float("nan"))
        rows.append(f"| {r['backend']} | {r['steps']:,} | {r['rss_early'] / 2**20:,.1f} MiB | "
                    f"{r['rss_late'] / 2**20:,.1f} MiB | {r['rss_growth']:+.1%} | {half:+.1%} | {r['ms_early']:.2f} | "
                    f"{r['ms_late']:.2f} | {r['ms_growth']:+.1%} | {'within' if ok else 'OVER'} {tolerance:.0%} |")
    return "\n".join(rows)


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        steps, rss = zip(*r["rss_samples"]) if r["rss_samples"] else ((), ())
        a.plot(steps, [x / 2**20 for x in rss], label=r["backend"])
        s, ms = zip(*r["step_ms"]) if r["step_ms"] else ((), ())
        b.plot(s, ms, label=r["backend"], linewidth=0.8)
    a.set(xlabel="step", ylabel="resident memory (MiB)", title="process RSS")
    b.set(xlabel="step", ylabel="ms per step", title="step time (from the run's tok/s)")
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20_000, help="training steps per backend")
    p.add_argument("--early", type=int, default=None, help="the early window's last step and every window's "
                   "length (default: a tenth of --steps)")
    p.add_argument("--backends", default="torch,mlx", help="comma-separated: torch, mlx")
    p.add_argument("--tolerance", type=float, default=0.05, help="growth allowed late vs early")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak")
    p.add_argument("--quick", action="store_true", help="does it run: the --steps given, no figures claimed")
    args = p.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.steps < 100 or any(b not in ("torch", "mlx") for b in backends) or not backends:
        sys.exit("error: --steps must be >= 100 and --backends a list of torch, mlx")
    args.early = args.early or args.steps // 10
    args.out.mkdir(parents=True, exist_ok=True)
    results = [soak(b, args, args.out) for b in backends]
    text = table(results, args.tolerance)
    print(text)
    save_text(args.out / "soak.md", f"{text}\n\nmachine: {machine()}; {time.strftime('%Y-%m-%d')}")
    save_json(args.out / "soak.json", {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                       "results": results})
    plot(results, args.out / "soak.png")
    print(f"wrote {args.out}/soak.json, soak.md and soak.png")
    return results


if __name__ == "__main__":
    main()
