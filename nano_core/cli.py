"""The one command-line definition shared by `python -m nano_{mlx,torch}.train` and `... .generate`.

Both backends build their parser here, so the flags, defaults and help text cannot drift apart; only the
`--device` choices differ (mlx: auto|gpu|cpu, torch: auto|mps|cuda|cpu). The backend-free plumbing both training
loops need (where the data comes from, which config, which run dir, what goes into a checkpoint's meta) lives here
too, so the two train.py files hold only what really differs: the device, the step and the arrays.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nano_core.config import PRESETS

DEVICES = {"mlx": ("auto", "gpu", "cpu"), "torch": ("auto", "mps", "cuda", "cpu")}
NAMES = {"mlx": "MLX", "torch": "PyTorch"}
DTYPES = ("auto", "fp32", "bf16", "fp16")
SCHEDULE_CHOICES = ("cosine", "wsd", "constant")

# The no-argument run: which preset on which kind of device, and how many steps (bounded: minutes, not hours).
ATTN_IMPLS = ("auto", "sdpa", "eager", "flash")
DEFAULT_PRESET = {"cpu": "tiny", "accelerator": "small"}
DEFAULT_MAX_STEPS = {"cpu": 300, "accelerator": 2000}
# Tests (and impatient people) can shrink the no-argument run without touching the flags' documented defaults.
MAX_STEPS_ENV = "NANO_DEFAULT_MAX_STEPS"
BUILTIN_NOTICE = ("notice: the FineWeb-Edu hub is not reachable, so training on the small builtin text; point it at "
                  "real data with --source (text files, dirs, .jsonl, .parquet), e.g. "
                  "--source ../shared/data/fineweb_edu/sample-10BT-281docs.jsonl --source ../shared/data/gutenberg")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default unless its help already says it, or there is none to show (None/False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _device_arg(p, backend: str) -> None:
    if backend not in DEVICES:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(DEVICES)}")
    p.add_argument("--device", default="auto", choices=DEVICES[backend],
                   help="where to run; auto picks the fastest available (default: auto)")


def build_parser(backend: str) -> argparse.ArgumentParser:
    """The training CLI. Every default here is the same for both backends."""
    if backend not in DEVICES:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(DEVICES)}")
    p = argparse.ArgumentParser(
        prog=f"python -m nano_{backend}.train",
        description=f"Train a GPT-style language model from scratch with {NAMES[backend]}. With no arguments: "
                    "prepare data, train the default preset for this device, evaluate, sample and checkpoint.",
        formatter_class=_HelpFormatter)
    g = p.add_argument_group("model")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--preset", default=None, choices=list(PRESETS), metavar="PRESET",
                   help=f"model preset: {', '.join(PRESETS)} "
                                                  "(default: small on a GPU, tiny on CPU)")
    m.add_argument("--config", default=None, metavar="FILE", help="model config JSON (ModelConfig fields)")
    g.add_argument("--seq-len", type=int, default=None, help="context length (default: the preset's)")
    g.add_argument("--grad-checkpoint", action="store_true", help="recompute each block in backward (less memory)")
    g.add_argument("--attn-impl", default="auto", choices=ATTN_IMPLS,
                   help="attention kernel; auto: the fastest measured for the device and dtype (flash: PyTorch on "
                        "CUDA with flash-attn installed)")

    g = p.add_argument_group("data")
    d = g.add_mutually_exclusive_group()
    d.add_argument("--data", default=None, metavar="SHARD_DIR", help="directory of prepared token shards")
    d.add_argument("--source", default=None, nargs="+", action="extend", metavar="SPEC",
                   help="text sources to prepare shards from (cached); repeatable. Default: FineWeb-Edu from the "
                        "hub when reachable, else the builtin text")
    g.add_argument("--vocab-size", type=int, default=8192, help="tokenizer vocabulary when preparing --source data")

    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory (default: runs/BACKEND-PRESET-TIME)")
    g.add_argument("--max-steps", type=int, default=None,
                   help=f"optimizer steps; the schedule spans them (default: {DEFAULT_MAX_STEPS['cpu']} on CPU, "
                        f"{DEFAULT_MAX_STEPS['accelerator']} on a GPU)")
    g.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="stop (and checkpoint) after this much training time")
    g.add_argument("--resume", default=None, metavar="CKPT",
                   help='continue exactly from a checkpoint dir, a run dir, or "latest" in --out')
    g.add_argument("--seed", type=int, default=0, help="seed for the init, the data order and dropout")
    _device_arg(g, backend)
    g.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="auto: bf16 where the hardware is fast at it, else fp32")
    g.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction,
                   help="compile the step (default: on for MLX, off for PyTorch)")
    g.add_argument("--memory-limit", type=float, default=None, metavar="GB",
                   help="cap accelerator memory (ignored, with a notice, on CPU)")

    g = p.add_argument_group("optimization")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch")
    g.add_argument("--total-batch-tokens", type=int, default=None,
                   help="tokens per optimizer step; gradient accumulation = this / (batch-size x seq-len) "
                        "(default: one micro-batch)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    g.add_argument("--min-lr-frac", type=float, default=0.1, help="final learning rate as a fraction of --lr")
    g.add_argument("--warmup-steps", type=int, default=50, help="linear warmup steps")
    g.add_argument("--schedule", default="cosine", choices=SCHEDULE_CHOICES, help="learning-rate schedule")
    g.add_argument("--decay-frac", type=float, default=0.2, help="wsd: fraction of the steps spent decaying")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay (on weights with >= 2 dims only)")
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.95)
    g.add_argument("--eps", type=float, default=1e-8)
    g.add_argument("--grad-clip", type=float, default=1.0, help="global grad-norm clip (0: off)")

    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval-every", type=int, default=100, help="validate every N steps (0: only at the end)")
    g.add_argument("--eval-steps", type=int, default=20, help="validation batches per evaluation")
    g.add_argument("--sample-every", type=int, default=200, help="print a sample every N steps (0: only at the end)")
    g.add_argument("--sample-prompt", default="The", help="prompt for the samples")
    g.add_argument("--sample-tokens", type=int, default=64, help="tokens per sample")
    g.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps (and always at the end)")
    g.add_argument("--keep", type=int, default=3, help="keep the last K checkpoints")
    g.add_argument("--log-every", type=int, default=10, help="write a train-loss record every N steps")
    g.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (needs `pip install wandb`)")
    return p


def build_generate_parser(backend: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m nano_{backend}.generate",
                                description="Sample text from a checkpoint (with the model's KV cache).",
                                formatter_class=_HelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint dir, or a run dir (its latest checkpoint)")
    p.add_argument("--prompt", default="The", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=50, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--seed", type=int, default=0)
    _device_arg(p, backend)
    return p


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """Destinations the user actually typed (so --resume can tell overrides from defaults)."""
    probe = argparse.ArgumentParser(add_help=False)
    for a in parser._actions:  # noqa: SLF001  (argparse has no public way to copy its actions)
        if a.option_strings and not isinstance(a, argparse._HelpAction):  # noqa: SLF001
            kw = {"dest": a.dest, "default": argparse.SUPPRESS}
            if isinstance(a, argparse._StoreTrueAction):  # noqa: SLF001
                probe.add_argument(*a.option_strings, action="store_true", **kw)
            elif isinstance(a, argparse.BooleanOptionalAction):
                probe.add_argument(*a.option_strings, action=argparse.BooleanOptionalAction, **kw)
            else:
                probe.add_argument(*a.option_strings, nargs=a.nargs, **kw)
    ns, _ = probe.parse_known_args(argv)
    return set(vars(ns))


# --- backend-free run plumbing ---------------------------------------------------------------------------------
def device_kind(device_name: str) -> str:
    return "cpu" if device_name == "cpu" else "accelerator"


def resolve_defaults(args, device_name: str) -> None:
    """Fill the defaults that depend on the device (preset, step budget), in place."""
    kind = device_kind(device_name)
    if args.preset is None and args.config is None:
        args.preset = DEFAULT_PRESET[kind]
    if args.max_steps is None:
        args.max_steps = int(os.environ.get(MAX_STEPS_ENV, DEFAULT_MAX_STEPS[kind]))


def _source_cache_dir(specs: list[str], vocab_size: int) -> Path:
    from nano_core.data import default_data_dir

    # Key the cache on what the shards depend on: the sources (resolved, in order) and the vocabulary. The
    # well-known single sources keep their plain name (fineweb-edu-v8192, builtin-v8192).
    if len(specs) == 1 and not Path(specs[0]).exists():
        return default_data_dir(specs[0], vocab_size)
    resolved = [str(Path(s).resolve()) if Path(s).exists() else s for s in specs]
    key = hashlib.sha256(json.dumps(resolved).encode()).hexdigest()[:8]
    slug = "+".join(Path(s).name or s for s in specs)[:60]
    return default_data_dir(f"{slug}-{key}", vocab_size)


def val_tokens_for(specs: list[str]) -> int:
    """A validation shard of ~10% of a small corpus (at ~3.5 bytes/token), 1M tokens for big or unknown ones."""
    from nano_core.sources import open_sources

    size = sum(s.num_bytes() for s in open_sources(specs))
    return 1_000_000 if size == 0 else int(min(1_000_000, max(16_384, size / 3.5 / 10)))


def resolve_data(args, log=print) -> Path:
    """A shard directory to train on: --data as given, or --source prepared once into a cache directory."""
    if args.data is not None:
        data = Path(args.data)
        if not (data / "manifest.json").is_file():
            raise FileNotFoundError(f"--data {data} holds no manifest.json; prepare shards with "
                                    f"`python -m nano_core.prepare` or pass --source instead")
        return data
    specs = args.source
    if not specs:
        from nano_core.sources import hub_reachable

        specs = ["fineweb-edu"] if hub_reachable() else ["builtin"]
        if specs == ["builtin"]:
            log(BUILTIN_NOTICE)
    max_docs = HUB_MAX_DOCS if specs == ["fineweb-edu"] else None
    out = _source_cache_dir(specs, args.vocab_size)
    if (out / "manifest.json").is_file() and json.loads((out / "manifest.json").read_text()).get("complete", True):
        log(f"data: cached shards {out}")
        return out
    from nano_core.prepare import prepare

    log(f"data: preparing {' + '.join(specs)} (vocab {args.vocab_size}) into {out}")
    prepare(sources=specs, out_dir=out, vocab_size=args.vocab_size, progress=True, max_docs=max_docs,
            val_tokens=val_tokens_for(specs))
    return out


def resolve_model_config(args, vocab_size: int):
    from nano_core.config import ModelConfig

    overrides = {"vocab_size": vocab_size}
    if args.seq_len is not None:
        overrides["seq_len"] = args.seq_len
    if args.config is not None:
        base = json.loads(Path(args.config).read_text()) if Path(args.config).is_file() else None
        if base is None:
            raise FileNotFoundError(f"--config {args.config} not found")
        return ModelConfig.from_dict({**base, **overrides})
    return ModelConfig.from_preset(args.preset, **overrides)


def grad_accum_steps(args, seq_len: int) -> int:
    micro = args.batch_size * seq_len
    total = args.total_batch_tokens or micro
    if total % micro:
        raise ValueError(f"--total-batch-tokens {total} is not a multiple of batch-size x seq-len = {micro}; "
                         f"use a multiple such as {max(1, round(total / micro)) * micro}")
    return total // micro


def check_args(args) -> None:
    from nano_core.schedule import check_schedule

    check_schedule(args)
    if args.config is not None and args.resume is None and not Path(args.config).is_file():  # before any data
        raise FileNotFoundError(f"--config {args.config} not found; give a ModelConfig JSON file or use --preset")
    for name in ("max_steps", "batch_size", "eval_steps", "sample_tokens", "log_every"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("eval_every", "sample_every", "ckpt_every", "keep"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")


def default_run_dir(backend: str, preset: str | None) -> Path:
    return Path("runs") / f"{backend}-{preset or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"


# On --resume every setting comes from the checkpoint unless typed again, except these, which belong to the
# session or the machine (and --device values differ between backends, so a checkpoint can change backend).
NOT_RESUMED = ("resume", "out", "device", "compile", "memory_limit", "attn_impl", "wandb", "max_time")


def apply_resume_args(args, saved: dict, typed: set[str]) -> None:
    """Take the checkpoint's run settings for every flag the user did not type again."""
    for name, value in saved.items():
        if hasattr(args, name) and name not in typed and name not in NOT_RESUMED:
            setattr(args, name, value)


def fail(msg) -> "NoReturn":  # noqa: F821
    sys.exit(f"error: {msg}")


# --- one place that turns parsed flags into a concrete run (both train.py files call it) -------------------------
HUB_MAX_DOCS = 20_000  # the no-argument FineWeb-Edu download: ~20k documents (~20M tokens), enough for a first run


@dataclass
class Run:
    args: argparse.Namespace
    run_dir: Path
    data_dir: Path
    model_config: object          # nano_core.config.ModelConfig
    grad_accum: int
    resume_path: Path | None = None
    resume_meta: dict | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.grad_accum * self.args.batch_size * self.model_config.seq_len


def prepare_run(args, typed: set[str], backend: str, device_name: str, log=print) -> Run:
    """Resolve resume, device-dependent defaults, data, model config and run dir. Raises one-line errors."""
    from nano_core.checkpoint import META_FILE, resolve_checkpoint
    from nano_core.config import ModelConfig

    resume_path, resume_meta = None, None
    if args.resume:
        resume_path = resolve_checkpoint(args.resume, args.out)
        resume_meta = json.loads((resume_path / META_FILE).read_text())
        apply_resume_args(args, resume_meta.get("train_config", {}), typed)
        if args.out is None:
            args.out = str(resume_path.parent)
    resolve_defaults(args, device_name)
    check_args(args)
    data_dir = resolve_data(args, log)
    from nano_core.data import load_manifest

    vocab = int(load_manifest(data_dir)["vocab_size"])
    if resume_meta is not None:
        cfg = ModelConfig.from_dict(resume_meta["model_config"])
        if cfg.vocab_size != vocab:
            raise ValueError(f"checkpoint has vocab_size {cfg.vocab_size} but {data_dir} has {vocab}; resume on the "
                             f"data it was trained on")
    else:
        cfg = resolve_model_config(args, vocab)
    run_dir = Path(args.out) if args.out else default_run_dir(backend, args.preset)
    args.out = str(run_dir)
    return Run(args, run_dir, data_dir, cfg, grad_accum_steps(args, cfg.seq_len), resume_path, resume_meta)


def run_meta(run: Run, backend: str, step: int, loader_state: dict, rng_state: dict, metrics: dict,
             device: str, dtype: str) -> dict:
    """meta.json of a checkpoint: everything needed to resume exactly, and to know what made it."""
    from nano_core.checkpoint import code_version
    from nano_core.data import load_manifest

    manifest = load_manifest(run.data_dir)
    return {
        "backend": backend, "device": device, "dtype": dtype,
        "model_config": run.model_config.to_dict(),
        "train_config": {k: v for k, v in vars(run.args).items()},
        "step": step, "tokens_seen": step * run.tokens_per_step, "grad_accum": run.grad_accum,
        "loader_state": loader_state, "rng_state": rng_state, "metrics": metrics,
        "data_dir": str(Path(run.data_dir).resolve()), "tokenizer_hash": manifest.get("tokenizer_hash"),
        "tokenizer_dir": str((Path(run.data_dir) / "tokenizer").resolve()),
        "code_version": code_version(),
    }


class StopFlag:
    """SIGINT (Ctrl-C) sets a flag that the loop checks between steps: it then checkpoints and exits cleanly.
    A second Ctrl-C interrupts at once (the default handler is back after the first)."""

    def __init__(self):
        import signal

        self.requested = False
        self._signal = signal
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        self._signal.signal(self._signal.SIGINT, self._previous)

    def restore(self):
        self._signal.signal(self._signal.SIGINT, self._previous)


def startup_line(backend: str, device: str, dtype: str, cfg, params: int, data_tokens: int, entropy: float,
                 val_bar: float, peak: float, peak_source: str, grad_accum: int, batch_size: int) -> str:
    from nano_core.metrics import format_count, format_flops

    return (f"nano {backend} | device {device} | dtype {dtype} | params {format_count(params)} | "
            f"FLOPs/token {format_count(cfg.estimate_flops())} | batch {batch_size}x{cfg.seq_len}x{grad_accum} | "
            f"data {format_count(data_tokens)} train tokens | unigram entropy {entropy:.3f} nats/token on train, "
            f"{val_bar:.3f} on val (the losses to beat) | peak {format_flops(peak)}/s ({peak_source})")


def summary_line(step: int, last: dict, val_bar: float, run_dir) -> str:
    """The closing line of a training run, the same for both backends."""
    nan = float("nan")
    return (f"done at step {step}: train loss {last.get('train_loss', nan):.4f}, "
            f"val loss {last.get('val_loss', nan):.4f} (unigram on val {val_bar:.4f}), "
            f"bpb {last.get('val_bpb', nan):.4f}, {last.get('tok_per_s', 0):,.0f} tok/s, MFU {last.get('mfu', 0):.1%}, "
            f"peak memory {last.get('peak_memory_gb', nan):.2f} GB; checkpoint in {run_dir}")
