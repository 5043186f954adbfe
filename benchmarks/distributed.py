"""Training on several processes: what 2 processes buy on this machine, and what the gradient all-reduce costs.

    python benchmarks/distributed.py                   # tiny preset on the FineWeb-Edu sample, torch and mlx
    python benchmarks/distributed.py --quick           # a micro model and a few steps (< 60 s): a smoke run
    python benchmarks/distributed.py --backends torch --steps 40 --out runs/dist

What it measures, each backend's processes started by that engine's own launcher, in their own subprocesses, from
the repository root, every rank on 127.0.0.1:
1. Training tokens/s at 1 and 2 processes: `python -m nano_{backend}.train` alone, then
   `torchrun --nproc-per-node 2 -m nano_torch.train` / `mlx.launch -n 2 -- python -m nano_mlx.train` with the same
   per-process batch, so the global batch doubles (--total-batch-tokens = batch x seq x processes: no
   accumulation). tok/s is the median of the run's metrics.jsonl `tok_per_s` train records after --warmup steps;
   the loop logs it from rank 0 over the global batch (`Run.tokens_per_step` counts every process), so it is the
   whole run's rate. Three layouts: 1 process x all the cores' threads and 2 processes x half as many each
   (OMP_NUM_THREADS and OPENBLAS_NUM_THREADS): the same cores either way; and 1 process x 1 thread, because on a
   machine shared with other work a process's threads wait for each other whenever one is descheduled (PyTorch's
   1 x 2 measured 3.7x slower than 1 x 1 here under load), which the 1 x 1 row exposes.
2. The all-reduce: seconds per all-reduce of a float32 buffer, median of --reps after warm-up, with each engine's
   own collective between 2 processes (torch.distributed.all_reduce over gloo under torchrun; mx.distributed.all_sum
   over the ring under mlx.launch), for 4 bytes (the latency of one collective: the loop does two of those per
   step, the mean loss and the stop agreement), for the bytes of the benchmarked model's gradients and for
   gpt2-124m's (--quick: 16 MiB instead, enough to show the bandwidth). Data parallelism all-reduces every
   trainable parameter's fp32 gradient once per optimizer step:
   4 x trainable parameters bytes. Neither engine changes that: DDP packs the gradients into ~25 MiB buckets
   (one all-reduce each, started as soon as a bucket's gradients are ready, so they overlap the backward pass) and
   mlx.nn.average_gradients concatenates them into >= 32 MiB groups; the bucket sizes add up to the same bytes
   (the torch worker checks that with DDP's own record of its buckets). The worker also counts the trainable
   parameters of the real nano_torch / nano_mlx model.
   Bandwidth: algbw = bytes / time; busbw = algbw x 2(N-1)/N (the NCCL-tests convention: what each link carries in a
   ring all-reduce; equal to algbw at N=2).
3. On paper: a ring all-reduce moves 2(N-1)/N x bytes over each link, so its time is at least that over the link's
   bandwidth. The table gives it for gpt2-124m's gradients over the links people connect machines with (nominal
   figures, sources in LINKS below): N processes give N x (step time) / (step time + exposed all-reduce time) times
   one process's tokens/s, the exposed part being what does not overlap the backward pass.

Why 2 processes cannot be faster here: this machine has 2 cores. 2 ranks x 1 thread use the same 2 cores as 1 rank
x 2 threads, so the compute per token is the same at best, and the all-reduce (over loopback, itself on those cores)
comes on top. The measurement is of the overhead, not of a speed-up; a speed-up needs more hardware per rank.

Out (--out, default runs/distributed_bench): distributed.json (every figure, the machine, the load average before
and after each part: this machine is shared, so compare figures taken under similar load), distributed.md (the
tables), distributed.png (tok/s per backend and process count; all-reduce time against bytes), logs/ (each
subprocess's output).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from harness import (ROOT, child_env, free_ports, machine, pyplot, read_jsonl, run_child, save_figure, save_json,
                     save_text)

BIN = Path(sys.executable).parent  # torchrun and mlx.launch of this environment

BACKENDS = ("torch", "mlx")
SOURCE = "../shared/data/fineweb_edu/sample-10BT-281docs.jsonl"  # from ROOT, as the documented commands say
FIXTURE_SOURCE = "tests/fixtures/data/fineweb_edu/sample-10BT-281docs.jsonl"  # the excerpt in a bare clone
# the --quick model: tests/test_train.py's MICRO (137k parameters) on shards of vocab 512
MICRO = {"vocab_size": 512, "n_layer": 2, "n_head": 2, "n_embd": 64, "seq_len": 64}
GPT2 = "gpt2-124m"
QUICK_BIG_ELEMENTS = 4 * 2**20  # --quick's bandwidth buffer: 16 MiB of fp32

# Nominal link bandwidths, in bits per second per direction (a ring all-reduce sends and receives at once, so the
# one-way figure is the one that bounds it). Sources:
# - Thunderbolt 4: 40 Gb/s (Intel, "Thunderbolt 4" technology brief / thunderbolttechnology.net; Apple's Mac spec
#   pages list "Thunderbolt / USB 4 ... up to 40Gb/s").
# - Thunderbolt 5: 80 Gb/s in each direction, up to 120 Gb/s in one direction with Bandwidth Boost (then 40 Gb/s
#   back) (Intel, Thunderbolt 5 announcement, Sept 2023; Apple's MacBook Pro M4 Pro/Max and Mac Studio spec pages:
#   "Thunderbolt 5 ... up to 120Gb/s"). Boost is for displays: an all-reduce sends as much as it receives, so
#   80 Gb/s is the figure that bounds it; the 120 row is the optimistic ceiling.
# - 10 GbE: 10 Gb/s (IEEE 802.3ae; the 10Gb Ethernet option of Mac mini / Mac Studio).
# - NVLink 4 on H100 / H200 SXM: 900 GB/s per GPU, both directions together, so 450 GB/s each way (NVIDIA H100 and
#   H200 product pages / datasheets, "NVLink: 900GB/s"); PCIe Gen5 x16: 128 GB/s both directions, 64 GB/s each way
#   (same datasheets, "PCIe Gen5: 128GB/s").
# Signs of a failed rank in a launcher's log: mlx.launch itself exits 0 whatever its ranks did.
FAILED = ("Traceback", "exited with code")
LINKS = [  # (name, bytes/s one way per process, processes: 2 machines, or the 8 GPUs of one CUDA node)
    ("Thunderbolt 4 (40 Gb/s)", 40e9 / 8, 2),
    ("Thunderbolt 5 (80 Gb/s)", 80e9 / 8, 2),
    ("Thunderbolt 5, Bandwidth Boost (120 Gb/s one way)", 120e9 / 8, 2),
    ("10 GbE", 10e9 / 8, 2),
    ("PCIe Gen5 x16, 8 GPUs (64 GB/s each way)", 64e9, 8),
    ("NVLink 4, H100/H200 SXM, 8 GPUs (450 GB/s each way)", 450e9, 8),
]


def ring_bytes(nbytes: int, n: int) -> float:
    """Bytes each process sends (and receives) in a ring all-reduce of `nbytes` over `n` processes."""
    return 2 * (n - 1) / n * nbytes


# ============================================================================= the all-reduce worker (one per rank)
def worker(args) -> None:
    """Runs inside torchrun / mlx.launch: times the engine's all-reduce on float32 buffers of each size, and counts
    the real model's trainable parameters. Rank 0 writes --result."""
    sizes = [int(s) for s in args.sizes.split(",")]
    cfg = model_config(args.model)
    if args.worker == "torch":
        out = torch_worker(sizes, args.reps, args.warmup, cfg, args.ddp_check)
    else:
        out = mlx_worker(sizes, args.reps, args.warmup, cfg)
    if out is not None:  # rank 0
        Path(args.result).write_text(json.dumps(out, indent=1))


def torch_worker(sizes, reps, warmup, cfg, ddp_check: list[str]) -> dict | None:
    import torch
    import torch.distributed as dist

    from nano_torch.backend import LossModule
    from nano_torch.model import GPT

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    timings = {}
    for n in sizes:
        buf = torch.ones(n, dtype=torch.float32)
        times = []
        for i in range(warmup + reps):
            dist.barrier()  # start together: the time is the collective's, not a late peer's
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            times.append(time.perf_counter() - t0)
        timings[n] = times[warmup:]
        del buf
    # What DDP really reduces: the train step's wrapper (LossModule) of the real model, then DDP's own record of its
    # buckets. DDP starts with one assignment and rebuilds its buckets in the order the gradients arrived during the
    # first backward (at the start of the second iteration); three backward passes show both.
    models = {}
    for name in ["bench", *ddp_check]:
        c = cfg if name == "bench" else model_config(name)
        model = GPT(c)
        ddp = torch.nn.parallel.DistributedDataParallel(LossModule(model))
        x = torch.randint(0, c.vocab_size, (1, 9))
        for _ in range(3):
            ddp(x[:, :-1], x[:, 1:]).backward()
        info = ddp._get_ddp_logging_data()

        def sizes_of(key):
            return [int(b) for b in str(info.get(key) or "").split(",") if b.strip()]

        models[name] = {"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                        "ddp_initial_bucket_bytes": sizes_of("bucket_sizes"),
                        "ddp_bucket_bytes": sizes_of("rebuilt_bucket_sizes") or sizes_of("bucket_sizes"),
                        "ddp_bucket_cap_bytes": int(info.get("bucket_cap_bytes", 0)),
                        "ddp_broadcast_buffers": bool(info.get("broadcast_buffers", 0)),
                        "buffers": [b for b, _ in model.named_buffers()]}
        del ddp, model
    dist.barrier()
    dist.destroy_process_group()
    if rank != 0:
        return None
    return {"engine": "torch.distributed.all_reduce (gloo)", "world_size": world,
            "seconds": {str(n): t for n, t in timings.items()}, "models": models}


def mlx_worker(sizes, reps, warmup, cfg) -> dict | None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from nano_mlx.model import GPT

    group = mx.distributed.init()
    rank, world = group.rank(), group.size()

    def barrier():
        mx.eval(mx.distributed.all_sum(mx.array(0), group=group, stream=mx.cpu))

    timings = {}
    for n in sizes:
        buf = mx.ones(n, dtype=mx.float32)
        mx.eval(buf)
        times = []
        for i in range(warmup + reps):
            barrier()
            t0 = time.perf_counter()
            mx.eval(mx.distributed.all_sum(buf, group=group, stream=mx.cpu))  # the CPU stream: no GPU here
            times.append(time.perf_counter() - t0)
        timings[n] = times[warmup:]
        del buf
    model = GPT(cfg)
    params = sum(p.size for _, p in tree_flatten(model.trainable_parameters()))
    barrier()
    if rank != 0:
        return None
    return {"engine": "mx.distributed.all_sum (ring)", "world_size": world,
            "seconds": {str(n): t for n, t in timings.items()},
            "models": {"bench": {"trainable_params": params}}}


def model_config(name: str):
    """A ModelConfig from a preset name or 'micro' (--quick's model)."""
    from nano_core.config import ModelConfig

    return ModelConfig.from_dict(MICRO) if name == "micro" else ModelConfig.from_preset(name)


# ============================================================================= the parent: launches and reports
def launcher(backend: str, n: int) -> list[str]:
    """The engine's own launcher for n processes on this machine, as a user would type it."""
    if backend == "torch":
        return [str(BIN / "torchrun"), "--nproc-per-node", str(n), "--master-addr", "127.0.0.1", "--master-port",
                str(free_ports())]
    return [str(BIN / "mlx.launch"), "-n", str(n), "--starting-port", str(free_ports(n)), "--", sys.executable]


def train_records(run: Path) -> list[dict]:
    """The train records of a run's metrics.jsonl (val records repeat the last tok_per_s: not a new measurement)."""
    return [r for r in read_jsonl(run / "metrics.jsonl") if "train_loss" in r and "tok_per_s" in r]


def measure_training(backend: str, n: int, threads: int, args, data_args: list[str], seq_len: int) -> dict:
    """One training run of args.steps steps on n processes of `threads` threads; tok/s from its metrics.jsonl."""
    run = args.out / "runs" / f"{backend}-{n}x{threads}"
    train = ["-m", f"nano_{backend}.train", *data_args, "--batch-size", str(args.batch_size),
             "--total-batch-tokens", str(args.batch_size * seq_len * n), "--max-steps", str(args.steps),
             "--log-every", "1", "--eval-every", "0", "--eval-steps", "1", "--sample-every", "0", "--sample-tokens",
             "4", "--ckpt-every", str(10 * args.steps), "--dtype", args.dtype, "--device", "cpu", "--seed", "0",
             "--warmup-steps", "2", "--out", str(run), "--overwrite"]
    cmd = ([sys.executable] if n == 1 else launcher(backend, n)) + train
    (run / "metrics.jsonl").unlink(missing_ok=True)  # a previous run's records would show as progress (--overwrite
    # clears them too, but only once the run has started)
    child = run_child(f"train {backend} {n}x{threads}", cmd, args.out / "logs" / f"train-{backend}-{n}x{threads}.log",
                      child_env(backend, threads), timeout=args.timeout, every=10,
                      progress=lambda: f"step {len(train_records(run))}/{args.steps}", fail_markers=FAILED)
    records = train_records(run)
    timed = [r["tok_per_s"] for r in records if r["step"] > args.warmup]
    if not timed:
        raise RuntimeError(f"train {backend} {n}x{threads}: no tok_per_s records after step {args.warmup} in {run}")
    meta = json.loads(max(run.glob("ckpt_*")).joinpath("meta.json").read_text())
    return {"backend": backend, "processes": n, "threads_per_process": threads,
            "batch_per_process": args.batch_size, "seq_len": seq_len,
            "global_batch_tokens": args.batch_size * seq_len * n, "grad_accum": meta["grad_accum"],
            "world_size_in_checkpoint": meta["world_size"], "steps": args.steps, "timed_steps": len(timed),
            "tok_per_s": statistics.median(timed), "tok_per_s_min": min(timed), "tok_per_s_max": max(timed),
            "step_seconds": args.batch_size * seq_len * n / statistics.median(timed),
            "command": " ".join(cmd[:cmd.index("-m") + 2] if n > 1 else ["python", *train[:2]]),
            "seconds": child["seconds"], "loadavg_before": child["loadavg_before"],
            "loadavg_after": child["loadavg_after"]}


def measure_allreduce(backend: str, args, sizes: list[int]) -> dict:
    """The all-reduce worker (this file, --worker) on 2 processes under the engine's launcher."""
    result = args.out / "logs" / f"allreduce-{backend}.json"
    result.unlink(missing_ok=True)
    worker_args = [str(Path(__file__).resolve()), "--worker", backend, "--sizes", ",".join(map(str, sizes)),
                   "--reps", str(args.reps), "--warmup", str(args.reps_warmup), "--model", args.model,
                   "--result", str(result), *(["--ddp-check", GPT2] if backend == "torch" and not args.quick else [])]
    cmd = launcher(backend, 2) + worker_args
    child = run_child(f"all-reduce {backend} x2", cmd, args.out / "logs" / f"allreduce-{backend}.log",
                      child_env(backend, 1), timeout=args.timeout, every=10, fail_markers=FAILED)
    raw = json.loads(result.read_text())
    rows = []
    for n in sizes:
        times = raw["seconds"][str(n)]
        sec = statistics.median(times)
        nbytes = 4 * n
        rows.append({"bytes": nbytes, "elements": n, "seconds_median": sec, "seconds_min": min(times),
                     "seconds_max": max(times), "reps": len(times), "algbw_GBps": nbytes / sec / 1e9,
                     "busbw_GBps": ring_bytes(nbytes, raw["world_size"]) / sec / 1e9})
    return {"backend": backend, "engine": raw["engine"], "world_size": raw["world_size"], "sizes": rows,
            "models": raw["models"], "loadavg_before": child["loadavg_before"], "loadavg_after": child["loadavg_after"]}


def prepare_quick_data(args) -> Path:
    """--quick's shards: the FineWeb-Edu sample at vocab 512, prepared once into OUT/data-micro (as
    tests/test_train.py's micro_setup does)."""
    from nano_core.prepare import prepare

    out = args.out / "data-micro"
    if not (out / "manifest.json").is_file():
        print("  preparing micro shards (vocab 512) ...", flush=True)
        prepare([str(args.source)], out, vocab_size=512, val_tokens=32768, progress=False)
    return out


def on_paper(grad_bytes: int) -> list[dict]:
    """The least time a ring all-reduce of `grad_bytes` takes over each link of LINKS at its nominal bandwidth."""
    return [{"link": name, "processes": n, "GBps_per_direction": bw / 1e9, "seconds": ring_bytes(grad_bytes, n) / bw}
            for name, bw, n in LINKS]


# ----------------------------------------------------------------------------- report
def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_seconds(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def tables(report: dict) -> str:
    lines = [f"Measured {report['date']} on {report['machine']['cpu']} ({report['machine']['cpu_count']} cores), "
             f"load average {'/'.join(f'{x:.2f}' for x in report['loadavg_start'])} at the start (a shared "
             f"machine: figures are noisy). Model: {report['model']} ({report['model_params']:,} parameters), "
             f"{report['dtype']}.", "",
             "| backend | processes | threads each | global batch (tokens) | tok/s (median) | min-max | s/step |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["training"]:
        lines.append(f"| {r['backend']} | {r['processes']} | {r['threads_per_process']} | {r['global_batch_tokens']:,} "
                     f"| {r['tok_per_s']:,.0f} | {r['tok_per_s_min']:,.0f}-{r['tok_per_s_max']:,.0f} "
                     f"| {r['step_seconds']:.3f} |")
    lines.append("")
    for b, s in report["speedup"].items():
        rows = {(r["processes"], r["threads_per_process"]): r["tok_per_s"] for r in report["training"]
                if r["backend"] == b}
        single = rows.get((1, 1))
        versus_one_thread = ""
        if single:
            versus_one_thread = f" (/ 1 process x 1 thread: {rows[max(k for k in rows if k[0] == 2)] / single:.2f}x)"
        lines.append(f"{b}: 2 processes / 1 process on the same cores = {s:.2f}x tok/s{versus_one_thread}.  ")
    lines.append(f"Why no speed-up here: {report['why_no_speedup']}")
    if any(s > 1.1 for s in report["speedup"].values()):
        lines.append("A ratio above 1 here comes from the other work on these cores, not from the second process: "
                     "the scheduler gives 2 processes a larger share of contended cores than 1, and a process's 2 "
                     "threads wait for each other whenever one is descheduled (compare the 1 x 1 row).")
    lines += ["", "| engine (2 processes, 127.0.0.1) | buffer | bytes | all-reduce (median) | min-max | algbw GB/s "
                  "| busbw GB/s |", "|---|---|---:|---:|---:|---:|---:|"]
    for a in report["allreduce"]:
        for r in a["sizes"]:
            what = {4: "one scalar", report["grad_bytes"]: f"{report['model']} gradients",
                    report["gpt2_grad_bytes"]: f"{GPT2} gradients"}.get(r["bytes"], "bandwidth probe")
            lines.append(f"| {a['engine']} | {what} | {r['bytes']:,} | {fmt_seconds(r['seconds_median'])} | "
                         f"{fmt_seconds(r['seconds_min'])}-{fmt_seconds(r['seconds_max'])} | {r['algbw_GBps']:.2f} | "
                         f"{r['busbw_GBps']:.2f} |")
    lines.append("")
    for a in report["allreduce"]:
        for name, m in a["models"].items():
            if "ddp_bucket_bytes" in m:
                what = report["model"] if name == "bench" else name
                lines.append(f"DDP on {what}: {len(m['ddp_bucket_bytes'])} bucket(s) (cap "
                             f"{m['ddp_bucket_cap_bytes'] / 2**20:.0f} MiB) holding {sum(m['ddp_bucket_bytes']):,} "
                             f"bytes = "
                             f"4 x {m['trainable_params']:,} trainable parameters.  ")
    lines += ["", f"On paper: a ring all-reduce of {GPT2}'s fp32 gradients ({fmt_bytes(report['gpt2_grad_bytes'])}) "
                  f"moves 2(N-1)/N x bytes over each link; at the links' nominal bandwidth, at least:", "",
              "| link | processes | GB/s each way per process | all-reduce time |", "|---|---:|---:|---:|"]
    for r in report["on_paper"]:
        lines.append(f"| {r['link']} | {r['processes']} | {r['GBps_per_direction']:.2f} | "
                     f"{fmt_seconds(r['seconds'])} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    backends = list(dict.fromkeys(r["backend"] for r in report["training"]))
    layouts = list(dict.fromkeys((r["processes"], r["threads_per_process"]) for r in report["training"]))
    width = 0.8 / len(layouts)
    for i, (n, t) in enumerate(layouts):
        vals = [next((r["tok_per_s"] for r in report["training"] if r["backend"] == b and r["processes"] == n
                      and r["threads_per_process"] == t), 0) for b in backends]
        xs = [j + (i - (len(layouts) - 1) / 2) * width for j in range(len(backends))]
        ax1.bar(xs, vals, width, label=f"{n} process{'es' if n > 1 else ''} x {t} thread{'s' if t > 1 else ''}")
        for x, v in zip(xs, vals):
            ax1.text(x, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    ax1.set_xticks(range(len(backends)), backends)
    ax1.set_ylabel("training tokens/s (global)")
    ax1.set_title(f"{report['model']}, {report['machine']['cpu_count']} cores")
    ax1.legend(fontsize=8)
    for a in report["allreduce"]:
        xs = [r["bytes"] for r in a["sizes"]]
        ax2.loglog(xs, [r["seconds_median"] for r in a["sizes"]], "o-", label=a["engine"])
    ax2.set_xlabel("bytes all-reduced (fp32)")
    ax2.set_ylabel("seconds (median)")
    ax2.set_title("all-reduce between 2 processes on 127.0.0.1")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="micro model, micro data, few steps (< 60 s)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: torch,mlx")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "distributed_bench")
    p.add_argument("--source", type=Path, default=None, help=f"text to train on (default {SOURCE}, or the "
                                                             f"excerpt in tests/fixtures in a bare clone)")
    p.add_argument("--preset", default="tiny", help="model preset of the full run (default tiny)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 30; --quick 8)")
    p.add_argument("--warmup", type=int, default=None, help="steps left out of the median (default 5; --quick 3)")
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch (default 8; --quick 4)")
    p.add_argument("--dtype", default="fp32", help="training dtype (fp32: the same arithmetic on both backends)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads in all (default: the cores)")
    p.add_argument("--reps", type=int, default=None, help="timed all-reduces per size (default 20; --quick 5)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per subprocess before it is stopped")
    # the all-reduce worker, started by the launchers (not for users)
    p.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--sizes", help=argparse.SUPPRESS)
    p.add_argument("--warmup-reps", dest="reps_warmup", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--ddp-check", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.warmup = args.reps_warmup
        worker(args)
        return {}

    q = args.quick
    args.steps = args.steps or (8 if q else 30)
    args.warmup = args.warmup if args.warmup is not None else (3 if q else 5)
    args.batch_size = args.batch_size or (4 if q else 8)
    args.reps = args.reps or (5 if q else 20)
    args.reps_warmup = 2 if q else 3
    args.model = "micro" if q else args.preset
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.source is None:
        args.source = ROOT / SOURCE if (ROOT / SOURCE).is_file() else ROOT / FIXTURE_SOURCE
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    cfg, gpt2 = model_config(args.model), model_config(GPT2)
    params, gpt2_params = cfg.num_params(), gpt2.num_params()
    grad_bytes, gpt2_bytes = 4 * params, 4 * gpt2_params  # fp32 gradients: 4 bytes per trainable parameter
    report = {
        "date": machine()["date"], "quick": q, "machine": machine(),
        "loadavg_start": os.getloadavg(), "model": args.model, "model_params": params, "dtype": args.dtype,
        "grad_bytes": grad_bytes, "gpt2_params": gpt2_params, "gpt2_grad_bytes": gpt2_bytes,
        "why_no_speedup": ("2 ranks x 1 thread run on the same 2 cores as 1 rank x 2 threads: the compute per token "
                           "cannot fall, and the gradient all-reduce (over loopback, on those same cores) comes on "
                           "top. A speed-up needs more hardware per rank: another machine or another GPU."),
        "training": [], "allreduce": [], "speedup": {},
    }
    print(f"distributed benchmark: {args.model} ({params:,} parameters, {fmt_bytes(grad_bytes)} of fp32 gradients), "
          f"{', '.join(backends)}; out {args.out}")
    print(f"note: {report['why_no_speedup']}")

    if q:
        data_args = ["--data", str(prepare_quick_data(args)), "--config", str(write_micro_config(args.out))]
    else:  # the shards are prepared once by the first run (rank 0 of a launch would do it too) and cached
        data_args = ["--source", str(args.source), "--preset", args.preset]
    # 4 bytes: one collective's latency; the model's gradients; and a big buffer for the bandwidth: gpt2-124m's
    # gradients (--quick: 16 MB, which already shows the bandwidth and takes a second, not half a minute)
    big = QUICK_BIG_ELEMENTS if q else gpt2_params
    sizes = [1, params, big]
    report["bandwidth_buffer_bytes"] = 4 * big
    # (processes, threads each): all the cores in one process, one core in one process, the cores split over 2
    layouts = list(dict.fromkeys([(1, args.threads), (1, 1), (2, max(1, args.threads // 2))]))
    for backend in backends:
        for n, threads in layouts:
            report["training"].append(measure_training(backend, n, threads, args, data_args, cfg.seq_len))
        rows = {(r["processes"], r["threads_per_process"]): r for r in report["training"] if r["backend"] == backend}
        # the fair comparison: the same cores, in one process or in two
        report["speedup"][backend] = rows[layouts[-1]]["tok_per_s"] / rows[layouts[0]]["tok_per_s"]
        report["allreduce"].append(measure_allreduce(backend, args, sizes))
    report["loadavg_end"] = os.getloadavg()

    # the per-step communication of this model: its gradients' bytes, and what the measured all-reduce of those
    # bytes costs next to the measured 2-process step
    for a in report["allreduce"]:
        row = next(r for r in a["sizes"] if r["bytes"] == grad_bytes)
        two = next(r for r in report["training"] if r["backend"] == a["backend"] and r["processes"] == 2)
        a["grad_allreduce_seconds"] = row["seconds_median"]
        a["grad_allreduce_fraction_of_step"] = row["seconds_median"] / two["step_seconds"]
        a["busbw_GBps"] = a["sizes"][-1]["busbw_GBps"]  # from the biggest buffer: the least latency-bound
        a["bytes_per_step"] = grad_bytes
        a["bytes_per_step_is_4x_params"] = all(m["trainable_params"] * 4 == grad_bytes
                                               for k, m in a["models"].items() if k == "bench")
    report["on_paper"] = on_paper(gpt2_bytes)

    text = tables(report)
    print("\n" + text)
    save_json(args.out / "distributed.json", report)
    save_text(args.out / "distributed.md", "# Distributed training benchmark\n\n" + text)
    plot(report, args.out / "distributed.png")
    print(f"wrote {args.out / 'distributed.json'}, distributed.md, distributed.png")
    return report


def write_micro_config(out: Path) -> Path:
    path = out / "micro.json"
    path.write_text(json.dumps({k: v for k, v in MICRO.items() if k != "vocab_size"}))
    return path


if __name__ == "__main__":
    main()
