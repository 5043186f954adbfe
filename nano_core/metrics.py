"""Training metrics, backend-free: MFU, bits per byte, the JSONL log, optional wandb, the loss-curve PNG.

MFU (model FLOPs utilisation) = achieved model FLOP/s / peak FLOP/s, where achieved = FLOPs per token (forward +
backward, from ModelConfig.estimate_flops) x tokens per second. The peak is whatever the backend measured or knew;
the startup line says which, because an MFU is only as honest as its denominator.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from nano_core.checkpoint import WriteError, emit
from nano_core.data import ShardLoader
from nano_core.data_dir import load_manifest
from nano_core.shards import read_shard
from nano_io.files import atomic_path, atomic_write

METRICS_FILE = "metrics.jsonl"
TASK_PREFIXES = ("hellaswag_", "wikitext2_", "bpb_")  # the --eval-tasks records (nano_core.eval.summary_metrics)
LOSS_CURVE_FILE = "loss_curve.png"

# What a start-up estimate assumes of the training speed (the expected time, the hub download's size): a typical
# fraction of the measured matmul peak. The progress bar's ETA and the time budget are measured, not assumed.
ASSUMED_MFU = 0.25


def expected_tokens_per_s(flops_per_token: float, peak_flops: float) -> float:
    """Training speed expected before the first step: the measured matmul peak at ASSUMED_MFU."""
    return max(peak_flops * ASSUMED_MFU, 1.0) / flops_per_token


# --- throughput ---------------------------------------------------------------------------------------------
def mfu(flops_per_token: float, tok_per_s: float, peak_flops: float) -> float:
    """Fraction of peak FLOP/s the model's own arithmetic achieves (0..1, can exceed 1 if the peak is wrong)."""
    return flops_per_token * tok_per_s / peak_flops if peak_flops > 0 else float("nan")


def probe_peak_flops(matmul, n: int, seconds: float = 0.5) -> float:
    """FLOP/s of a square n x n matmul: the fastest of the repetitions that fit in about `seconds`.

    `matmul()` must run ONE n x n @ n x n product and wait for it to finish (synchronise the device / mx.eval):
    the backend supplies it in the training dtype, this function only counts and times. The fastest repetition,
    not the mean, because a peak is the denominator of MFU: a probe slowed by a clock ramp or a busy core would
    understate it and flatter every MFU printed after it.
    """
    matmul()  # warm-up: first call pays for allocation, kernel selection, thread-pool start
    best, start = float("inf"), time.perf_counter()
    while True:
        t0 = time.perf_counter()
        matmul()
        t1 = time.perf_counter()
        best = min(best, t1 - t0)
        if t1 - start >= seconds:
            return 2.0 * n ** 3 / best


def recheck_peak(peak: float, flops_per_token: float, tok_per_s: float, remeasure):
    """(peak, remeasure) to use from now on. An MFU above 100% normally means the startup probe ran while other
    work had the cores (it happens on a shared machine: docs/benchmarks.md), so measure again and keep the
    larger value rather than print a flattering MFU for the rest of the run. At most once per run -- `remeasure`
    comes back as None -- so a run that truly beats the probe never pays for a probe at every log line."""
    if remeasure is None or mfu(flops_per_token, tok_per_s, peak) <= 1.0:
        return peak, remeasure
    return max(peak, remeasure()), None


def format_flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP"


def format_count(x: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


# --- evaluation maths ---------------------------------------------------------------------------------------
def bits_per_byte(nats: np.ndarray, targets: np.ndarray, token_byte_lengths: np.ndarray) -> float:
    """Bits per UTF-8 byte of text: summed loss (nats) over target tokens, divided by ln 2 x their byte count.

    Tokens with no bytes (special tokens such as <|endoftext|>) are left out of both sums, so the figure compares
    across tokenizers of any vocabulary size — unlike a per-token loss.
    """
    nats = np.asarray(nats, dtype=np.float64).reshape(-1)
    nbytes = np.asarray(token_byte_lengths)[np.asarray(targets).reshape(-1)]
    counted = nbytes > 0
    total_bytes = int(nbytes[counted].sum())
    if total_bytes == 0:
        return float("nan")
    return float(nats[counted].sum() / (math.log(2) * total_bytes))


def unigram_val_loss(data_dir, max_tokens: int = 50_000_000) -> float:
    """Cross-entropy (nats/token) of the val split under the train split's unigram distribution (add-one smoothed).

    This is the val loss of a model that ignores context, i.e. the bar a *val* loss has to beat. It sits above the
    train split's unigram entropy by however much the val documents differ from the training ones (prepare
    interleaves the sources by size, so the val shard mixes them as the training shards do).
    """
    vocab = int(load_manifest(data_dir)["vocab_size"])

    def counts(split: str) -> np.ndarray:
        c, seen = np.zeros(vocab, dtype=np.float64), 0
        for f in ShardLoader(data_dir, 1, 1, split=split, shuffle=False, verbose=False).files:
            toks = read_shard(f)[: max_tokens - seen]
            c += np.bincount(toks, minlength=vocab)[:vocab]
            seen += len(toks)
            if seen >= max_tokens:
                break
        return c

    train, val = counts("train") + 1.0, counts("val")
    return float(-(val * np.log(train / train.sum())).sum() / val.sum())


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp overflows float64 past ~709


def val_metrics(nats: list, targets: list, token_byte_lengths: np.ndarray) -> dict:
    """val_loss (mean nats/token), val_ppl and val_bpb from per-token losses and targets of the eval batches."""
    nats = np.concatenate([np.asarray(n, dtype=np.float64).reshape(-1) for n in nats])
    targets = np.concatenate([np.asarray(t).reshape(-1) for t in targets])
    loss = float(nats.mean())
    return {"val_loss": loss, "val_ppl": perplexity(loss), "val_bpb": bits_per_byte(nats, targets, token_byte_lengths)}


# --- logging ------------------------------------------------------------------------------------------------
class MetricsLogger:
    """Appends one JSON record per event to run_dir/metrics.jsonl (written through at each line), mirrors it to
    wandb. A write that fails (full disk, ...) is undone -- no half line is left -- and raises WriteError (an OSError,
    one line naming the file and the fix)."""

    def __init__(self, run_dir, wandb_run=None):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.wandb_run = wandb_run

    def truncate_after(self, step: int, notices=None) -> None:
        """On resume: drop records past the checkpoint's step (they belong to the interrupted tail of the run), and
        lines that are not records -- a torn last line from a kill mid-write, a damaged line -- with one notice each
        (`notices`: a list, a callable such as the loop's log, or None for stderr)."""
        if not self.path.is_file():
            return
        records, changed = _read_records(self.path, notices)
        keep = [ln for ln, rec in records if rec["step"] <= step]
        if changed or len(keep) < len(records):
            try:
                atomic_write(self.path, "".join(ln + "\n" for ln in keep))
            except OSError as e:
                raise WriteError("metrics", self.path, e) from e

    def log(self, record: dict) -> None:
        record = {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in record.items()}
        data = (json.dumps(record) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as e:
            raise WriteError("metrics", self.path, e) from e
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, max(start - 1, 0), os.SEEK_SET)  # writes still go to the end (O_APPEND)
            if start and os.read(fd, 1) != b"\n":
                data = b"\n" + data  # a torn last line from a killed run: never glue a record onto it
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as e:
                try:
                    os.ftruncate(fd, start)  # take back the part that was written: no torn line
                except OSError:
                    pass
                raise WriteError("metrics", self.path, e) from e
        finally:
            os.close(fd)
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


class NullLogger:
    """MetricsLogger's interface, writing nothing: the ranks other than 0 of a multi-process run (rank 0 logs)."""

    wandb_run = None

    def truncate_after(self, step: int, notices=None) -> None:
        pass

    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _read_records(path: Path, notices=None) -> tuple[list[tuple[str, dict]], bool]:
    """([(line, record)], whether any line was dropped or the file lacks its final newline). A line that is not a
    JSON object with a numeric step is dropped with a notice: the last one as torn (a kill mid-write), any other
    by its line number."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    out, changed = [], not text.endswith("\n") and text != ""
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except ValueError:
            rec = None
        step = rec.get("step") if isinstance(rec, dict) else None
        if isinstance(step, (int, float)) and not isinstance(step, bool):
            out.append((ln, rec))
            continue
        changed = True
        if i == len(lines) and not text.endswith("\n"):
            emit(notices, f"{path}: dropped a torn last line (a write cut off by a kill or a crash)")
        else:
            emit(notices, f"{path}: dropped line {i}, not a metrics record (damaged)")
    return out, changed


def read_metrics(run_dir, notices=None) -> list[dict]:
    """The records of run_dir/metrics.jsonl; lines that are not records are skipped with a notice each."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [rec for _, rec in _read_records(path, notices)[0]]


def init_wandb(project: str, run_dir, config: dict, resume_id: str | None = None):
    """Start a wandb run (imported here, only when --wandb asks for it)."""
    try:
        import wandb
    except ImportError as e:
        raise ValueError("--wandb needs the wandb package: pip install wandb") from e
    return wandb.init(project=project, dir=str(run_dir), config=config, id=resume_id,
                      resume="allow" if resume_id else None, name=Path(run_dir).name)


def plot_loss_curve(run_dir, unigram_entropy: float | None = None, unigram_val: float | None = None,
                    title: str = "") -> Path | None:
    """run_dir/loss_curve.png: train and val loss against step (nats/token), plus the two unigram bars."""
    records = read_metrics(run_dir)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Benchmark figures of --eval-tasks (hellaswag_acc, wikitext2_bpb, ...) get a panel of their own: accuracies
    # on the left axis, bits per byte on the right.
    tasks = sorted({k for r in records for k in r if k.startswith(TASK_PREFIXES) and k.endswith(("acc", "acc_norm",
                                                                                                  "bpb"))})
    if tasks:
        fig, (ax, task_ax) = plt.subplots(2, 1, figsize=(7, 7), height_ratios=(3, 2), sharex=True)
        bpb_ax = None
        for i, key in enumerate(tasks):
            points = [(r["step"], r[key]) for r in records if key in r]
            if key.endswith("bpb"):
                bpb_ax = bpb_ax or task_ax.twinx()
                bpb_ax.plot(*zip(*points), "s--", color=f"C{i}", ms=3, lw=1, label=key)
            else:
                task_ax.plot(*zip(*points), "o-", color=f"C{i}", ms=3, lw=1, label=key)
        task_ax.set_ylabel("accuracy")
        task_ax.set_xlabel("step")
        task_ax.grid(alpha=0.3)
        handles = [h for a in (task_ax, bpb_ax) if a is not None for h in a.get_legend_handles_labels()[0]]
        task_ax.legend(handles, [h.get_label() for h in handles], fontsize=8)
        if bpb_ax is not None:
            bpb_ax.set_ylabel("bits per byte")
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.0, alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", lw=1.5, ms=3)
    if unigram_entropy:
        # In nats, the loss's unit: a model below this line has learned to use the context.
        ax.axhline(unigram_entropy, color="C0", ls="--", lw=1, label="unigram entropy (train)")
    if unigram_val:
        ax.axhline(unigram_val, color="C1", ls=":", lw=1, label="unigram loss on val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / LOSS_CURVE_FILE
    try:
        with atomic_path(out, suffix=".png") as tmp:  # savefig picks the format from the extension
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return out
