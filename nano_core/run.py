"""From a TrainConfig to a concrete run: resume settings, device-dependent defaults, data, model config, run dir.

Everything here is backend-free and happens before a framework builds anything, so a bad flag or a missing file
is a one-line error before any work is done.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from nano_core.checkpoint import checkpoint_tokenizer_dir, code_version, list_checkpoints, read_meta, resolve_checkpoint
from nano_core.cli import DEFAULT_MAX_STEPS, DEFAULT_PRESET, TrainConfig
from nano_core.config import ModelConfig
from nano_core.data import default_data_dir, drop_stale_cache, load_manifest
from nano_core.eval import EvalSettings, check_settings, parse_tasks
from nano_core.instruct import encode_rows
from nano_core.lora import LoraConfig
from nano_core.metrics import ASSUMED_MFU
from nano_core.muon import check_muon_args
from nano_core.pretrained import InitFrom, fit_context, load_init_from, load_lora_base, weights_hash
from nano_core.prepare import prepare
from nano_core.recipes import DEFAULT_RECIPE, RECIPES, Recipe
from nano_core.schedule import check_schedule
from tokenizer import load_tokenizer
from tokenizer.bpe import check_vocab_size
from tokenizer.sources import hub_reachable

# Tests (and impatient people) can shrink the no-argument run without touching the flags' documented defaults.
MAX_STEPS_ENV = "NANO_DEFAULT_MAX_STEPS"
DEFAULT_EPOCHS = 3  # the default step budget never goes past this many passes over the training data
# The no-argument FineWeb-Edu download is sized for one pass over the time budget at the expected speed (hub_documents):
# a smaller corpus would end the run early at its DEFAULT_EPOCHS passes. Bounds: at least HUB_MIN_DOCS, at most
# HUB_MAX_DOCS; counts are rounded up to HUB_DOCS_STEP so that runs on one machine share one cache entry.
HUB_MIN_DOCS, HUB_MAX_DOCS, HUB_DOCS_STEP = 20_000, 500_000, 10_000
HUB_TOKENS_PER_DOC = 1_050  # the mean FineWeb-Edu document at a vocabulary of 8192 (docs/mac.md: how it was measured)
BUILTIN_NOTICE = ("notice: the FineWeb-Edu hub is not reachable, so training on the small builtin text; point it at "
                  "real data with --source (text files, dirs, .jsonl, .parquet), e.g. "
                  "--source ../shared/data/fineweb_edu/sample-10BT-281docs.jsonl --source ../shared/data/gutenberg")
# On --resume every setting comes from the checkpoint unless typed again, except these, which belong to the
# session or the machine (and --device values differ between backends, so a checkpoint can change backend).
NOT_RESUMED = ("resume", "out", "device", "compile", "memory_limit", "attn_impl", "wandb", "max_time", "overwrite",
               "init_from", "dist_timeout")  # a resumed run continues from its checkpoint, never from its starting weights again
# What a run writes into its directory (and --overwrite deletes): never anything else the user keeps there.
RUN_FILES = ("metrics.jsonl", "samples.txt", "loss_curve.png")
LOCK_FILE = ".lock"


@dataclass
class Run:
    config: TrainConfig
    run_dir: Path
    data_dir: Path
    model_config: ModelConfig
    grad_accum: int
    resume_path: Path | None = None
    lock: "RunLock | None" = field(default=None, repr=False)
    init: "InitFrom | None" = field(default=None, repr=False)  # --init-from: the starting weights
    lora: LoraConfig | None = None                            # --lora-rank: adapters on a frozen base ...
    base: dict | None = field(default=None, repr=False)       # ... which is this (weights, canonical names)
    base_info: dict | None = None                             # {"source", "hash"} of that base, for meta.json
    instruct_rows: list | None = field(default=None, repr=False)  # --instruct-data, encoded (ids, mask) rows
    step_cap: int | None = None  # a time budget never plans more than DEFAULT_EPOCHS passes over the data
    rank: int = 0        # this process, under torchrun / mlx.launch (nano_core/distributed.py)
    world_size: int = 1  # the processes training together; each reads its own windows

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over all processes (the global batch)."""
        return self.grad_accum * self.config.batch_size * self.model_config.seq_len * self.world_size


# --- resume ------------------------------------------------------------------------------------------------------
def apply_resume_args(config: TrainConfig, saved: dict, typed: set[str]) -> None:
    """Take the checkpoint's run settings for every flag the user did not type again."""
    for name, value in saved.items():
        if hasattr(config, name) and name not in typed and name not in NOT_RESUMED:
            setattr(config, name, value)


def resolve_resume(config: TrainConfig, typed: set[str], log=print) -> tuple[Path | None, dict | None]:
    """(checkpoint, its meta) for --resume, with the checkpoint's settings applied to `config`; (None, None) when
    starting fresh. Runs before the backend is built: the checkpoint's dtype decides the backend's. "latest" and a
    run dir fall back past damaged checkpoints, with a notice for each one skipped."""
    if not config.resume:
        return None, None
    path = resolve_checkpoint(config.resume, config.out, notices=log)
    meta = read_meta(path)
    apply_resume_args(config, meta.get("train_config", {}), typed)
    if config.out is None:
        config.out = str(path.parent)
    return path, meta


# --- defaults and checks -------------------------------------------------------------------------------------------
def device_kind(device: str) -> str:
    return "cpu" if device == "cpu" else "accelerator"


def resolve_defaults(config: TrainConfig, device: str, typed: set[str] = frozenset(), resuming: bool = False,
                     log=print) -> None:
    """Fill the defaults that depend on the device, in place: with no model given, the device's recipe
    (nano_core/recipes.py), which sets the preset and the training settings left at nano's defaults; the step
    budget also depends on the data and is set by default_max_steps once the data is known. A resumed run keeps
    what its checkpoint recorded."""
    if resuming:
        return
    no_model = config.preset is None and config.config is None and config.init_from is None
    if config.recipe is None and no_model:
        config.recipe = DEFAULT_RECIPE[device_kind(device)]
    if config.recipe not in (None, "none"):
        apply_recipe(config, RECIPES[config.recipe], typed, log)
    if config.preset is None and config.config is None and config.init_from is None:
        config.preset = DEFAULT_PRESET[device_kind(device)]


def apply_recipe(config: TrainConfig, recipe: Recipe, typed: set[str], log=print) -> None:
    """The recipe's model and settings, for every one the user neither typed nor changed from nano's default."""
    defaults = TrainConfig()
    if config.preset is None and config.config is None and config.init_from is None:
        config.preset = recipe.preset
    for name, value in recipe.train.items():
        if name not in typed and getattr(config, name) == getattr(defaults, name):
            setattr(config, name, value)
    # its time budget, unless the run has a length already (typed, or shrunk for tests through MAX_STEPS_ENV)
    if config.max_steps is None and config.max_time is None and MAX_STEPS_ENV not in os.environ:
        config.max_time = recipe.budget_s
    log(recipe.describe())


def default_max_steps(config: TrainConfig, device: str, train_tokens: int, tokens_per_step: int, log=print) -> None:
    """--max-steps when not given: the device's budget, but no more than DEFAULT_EPOCHS passes over a small corpus
    (more would only memorise it)."""
    if config.max_steps is not None or config.max_time is not None:  # --max-time: the loop fixes it (TimeBudget)
        return
    budget = int(os.environ.get(MAX_STEPS_ENV, DEFAULT_MAX_STEPS[device_kind(device)]))
    epochs_cap = max(1, DEFAULT_EPOCHS * train_tokens // tokens_per_step)
    config.max_steps = min(budget, epochs_cap)
    if config.max_steps < budget:
        log(f"notice: {config.max_steps} steps by default ({DEFAULT_EPOCHS} passes over {train_tokens:,} training "
            f"tokens); set --max-steps to train longer")


def check_config(config: TrainConfig) -> None:
    """One-line errors for settings that cannot run, before any data is prepared."""
    check_schedule(config)
    if config.optimizer == "muon":  # its settings before any data is prepared (LoRA is checked with the model)
        check_muon_args(config.lr, config.muon_lr, config.muon_momentum, None)
    if config.config is not None and config.resume is None:
        read_config_file(config.config)
    if config.data is None:
        check_vocab_size(config.vocab_size)
    for name in ("max_steps", "max_time", "batch_size", "eval_steps", "sample_tokens", "log_every"):
        if getattr(config, name) is not None and getattr(config, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if config.eval_tasks:  # every task known and its data file there before any work
        check_settings(eval_settings(config))
    if config.eval_limit is not None and config.eval_limit < 1:
        raise ValueError(f"--eval-limit must be >= 1, got {config.eval_limit}")
    for name in ("eval_every", "sample_every", "ckpt_every", "keep", "eval_tasks_every"):
        if getattr(config, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")


def eval_settings(config: TrainConfig) -> EvalSettings:
    """The benchmark tasks a training run evaluates (--eval-tasks), on their default data files."""
    return EvalSettings(parse_tasks(config.eval_tasks), limit=config.eval_limit)


def grad_accum_steps(config: TrainConfig, seq_len: int, world_size: int = 1) -> int:
    """Micro-batches per optimizer step on each process. --total-batch-tokens is the global batch; when it is not
    given it becomes one micro-batch per process, and is written into the config (so into the checkpoint): a run
    resumed on another number of processes keeps its global batch, with the accumulation adapted."""
    micro = config.batch_size * seq_len * world_size
    if config.total_batch_tokens is None:
        config.total_batch_tokens = micro
    total = config.total_batch_tokens
    if total % micro:
        procs = f" x {world_size} processes" if world_size > 1 else ""
        raise ValueError(f"--total-batch-tokens {total} is not a multiple of batch-size x seq-len{procs} = {micro}; "
                         f"use a multiple such as {max(1, round(total / micro)) * micro}"
                         + (" or another --batch-size" if world_size > 1 else ""))
    return total // micro


# --- data and model ------------------------------------------------------------------------------------------------
def _source_cache_dir(specs: list[str], vocab_size: int) -> Path:
    # Key the cache on what the shards depend on: the sources (resolved, in order) and the vocabulary. The
    # well-known single sources keep their plain name (fineweb-edu-v8192, builtin-v8192).
    if len(specs) == 1 and not Path(specs[0]).exists():
        return default_data_dir(specs[0], vocab_size)
    resolved = [str(Path(s).resolve()) if Path(s).exists() else s for s in specs]
    key = hashlib.sha256(json.dumps(resolved).encode()).hexdigest()[:8]
    slug = "+".join(Path(s).name or s for s in specs)[:60]
    return default_data_dir(f"{slug}-{key}", vocab_size)


def _usable_cache(out: Path) -> bool:
    """A cache entry that prepare finished and that holds training tokens (older versions could mark a single-
    document corpus complete with none: such an entry is prepared again), made from its source files as they are."""
    if drop_stale_cache(out) or not (out / "manifest.json").is_file():
        return False
    manifest = json.loads((out / "manifest.json").read_text())
    return bool(manifest.get("complete", True)) and any(
        s.get("split") == "train" and s.get("tokens", 0) > 0 for s in manifest.get("shards", []))


def expected_tokens_per_s(cfg: ModelConfig, peak_flops: float) -> float:
    """Training speed expected before the first step: the measured matmul peak at ASSUMED_MFU."""
    return peak_flops * ASSUMED_MFU / cfg.estimate_flops()


def hub_documents(budget_s: float | None, tokens_per_s: float | None) -> int:
    """FineWeb-Edu documents to download for a run of `budget_s` seconds at `tokens_per_s`: one pass of fresh text
    (so even a rate estimate 3x too low still fills the budget within DEFAULT_EPOCHS passes), within the bounds."""
    if not budget_s or not tokens_per_s:
        return HUB_MIN_DOCS
    docs = math.ceil(budget_s * tokens_per_s / HUB_TOKENS_PER_DOC / HUB_DOCS_STEP) * HUB_DOCS_STEP
    return int(min(max(docs, HUB_MIN_DOCS), HUB_MAX_DOCS))


def hub_download_size(config: TrainConfig, peak_flops) -> int:
    """hub_documents for this run: its --max-time, and the speed of its model on this machine (`peak_flops`: a
    callable that measures the matmul peak, called only here, when a download is planned)."""
    if getattr(config, "max_time", None) is None or peak_flops is None:
        return HUB_MIN_DOCS
    cfg = resolve_model_config(config, config.vocab_size)
    return hub_documents(config.max_time, expected_tokens_per_s(cfg, peak_flops()))


def resolve_data(config: TrainConfig, log=print, tokenizer=None, peak_flops=None) -> Path:
    """A shard directory to train on: --data as given, or --source prepared once into a cache directory (with
    `tokenizer` when the model brings its own, else a new one of --vocab-size). The hub source with no --source is
    sized by hub_download_size (`peak_flops` measures the machine)."""
    if config.data is not None:
        data = Path(config.data)
        if not (data / "manifest.json").is_file():
            raise FileNotFoundError(f"--data {data} holds no manifest.json; prepare shards with "
                                    f"`python -m nano_core.prepare` or pass --source instead")
        return data
    specs = config.source
    if not specs:
        specs = ["fineweb-edu"] if hub_reachable() else ["builtin"]
        if specs == ["builtin"]:
            log(BUILTIN_NOTICE)
    max_docs = None
    key = config.vocab_size if tokenizer is None else f"tok-{tokenizer.hash[:12]}"
    out = _source_cache_dir(specs, key)
    if specs == ["fineweb-edu"]:  # the download's size is part of the cache key
        max_docs = hub_download_size(config, peak_flops) if tokenizer is None else HUB_MIN_DOCS
        out = out.with_name(out.name.replace("fineweb-edu", f"fineweb-edu-{max_docs // 1000}k", 1))
        log(f"data: {max_docs:,} FineWeb-Edu documents, about {max_docs * HUB_TOKENS_PER_DOC / 1e6:,.0f}M tokens "
            f"(one pass of the time budget at the expected speed, within {HUB_MIN_DOCS:,}-{HUB_MAX_DOCS:,})")
    if _usable_cache(out):
        log(f"data: cached shards {out}")
        return out
    what = f"vocab {config.vocab_size}" if tokenizer is None else f"the starting model's tokenizer, vocab " \
                                                                  f"{tokenizer.vocab_size}"
    log(f"data: preparing {' + '.join(specs)} ({what}) into {out}")
    prepare(sources=specs, out_dir=out, vocab_size=None if tokenizer else config.vocab_size, tokenizer=tokenizer,
            progress=True, max_docs=max_docs)
    return out


def read_config_file(path) -> dict:
    """The ModelConfig fields in a --config JSON file, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path} not found; give a ModelConfig JSON file or use --preset")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
        raise ValueError(f"--config {path} is not valid JSON ({where})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} holds a JSON {type(data).__name__}; it must be an object of ModelConfig "
                         f'fields, e.g. {{"n_layer": 4, "n_embd": 256}}')
    return data


def resolve_model_config(config: TrainConfig, vocab_size: int) -> ModelConfig:
    overrides = {"vocab_size": vocab_size}
    if config.seq_len is not None:
        overrides["seq_len"] = config.seq_len
    if config.config is not None:
        return ModelConfig.from_dict({**read_config_file(config.config), **overrides})
    return ModelConfig.from_preset(config.preset, **overrides)


def default_run_dir(backend: str, preset: str | None) -> Path:
    return Path("runs") / f"{backend}-{preset or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"


# --- the run directory: usable, owned by one process, never silently mixed ---------------------------------------
def check_run_dir(run_dir: Path) -> None:
    """--out must be a directory this process can create and write: checked before any data is prepared."""
    for p in [run_dir, *run_dir.parents]:
        if p.exists() and not p.is_dir():
            raise ValueError(f"--out {run_dir}: {p} is a file, not a directory; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {run_dir} is not writable ({e.strerror}); choose another --out") from None


def claim_run_dir(run_dir: Path, fresh: bool, overwrite: bool, log=print) -> None:
    """A fresh run (no --resume) must not mix with another run's files: refuse unless --overwrite, which deletes
    only what a run writes (checkpoints, metrics, samples, the plot)."""
    ckpts = list_checkpoints(run_dir)
    found = [p for p in (run_dir / f for f in RUN_FILES) if p.exists()]
    if not fresh or not (ckpts or found):
        return
    what = f"checkpoints up to {ckpts[-1].name}" if ckpts else ", ".join(p.name for p in found)
    if not overwrite:
        raise ValueError(f"--out {run_dir} already holds a run ({what}); continue it with --resume latest, start "
                         f"over with --overwrite (deletes it), or choose another --out")
    for p in ckpts + [p for p in run_dir.glob(".tmp_ckpt_*")]:
        shutil.rmtree(p, ignore_errors=True)
    for p in found:
        p.unlink()
    log(f"notice: --overwrite: deleted the previous run in {run_dir} ({what})")


class RunLock:
    """An exclusive lock on a run directory for the life of this process (fcntl.flock on RUN_DIR/.lock): a second
    process training into the same --out is refused, naming the holder. The kernel drops the lock when the holder
    exits, however it exits, so a crash never leaves a stale lock. (No flock on Windows: no lock there.)"""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._file = None
        try:
            import fcntl
        except ImportError:  # Windows
            return
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ValueError(f"--out {run_dir} is in use by {holder}; wait for it to finish or choose another "
                             f"--out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None


# --- the run -------------------------------------------------------------------------------------------------------
def prepare_run(config: TrainConfig, backend: str, device: str, resume: tuple[Path | None, dict | None],
                log=print, rank: int = 0, world_size: int = 1, barrier=lambda: None,
                typed: set[str] = frozenset(), peak_flops=None) -> Run:
    """Resolve device-dependent defaults, data, model config and run dir (resume from resolve_resume).
    Under several processes (rank, world_size, and `barrier` waiting for all of them), rank 0 owns the run dir and
    prepares the data while the others wait, then they read what it made."""
    resume_path, resume_meta = resume
    resolve_defaults(config, device, typed, resuming=resume_meta is not None, log=log)
    check_config(config)
    if world_size > 1:
        check_distributed(config, world_size)
    name = (config.recipe if config.recipe not in (None, "none") else None) or config.preset or \
        ("init" if config.init_from else None)
    run_dir = Path(config.out) if config.out else default_run_dir(backend, name)
    config.out = str(run_dir)
    if rank != 0:  # the run dir and its lock are rank 0's; the data is there once rank 0 has passed the barrier
        barrier()
        return _prepare(config, device, resume_path, resume_meta, run_dir, None, log, rank, world_size, peak_flops)
    check_run_dir(run_dir)
    lock = RunLock(run_dir)  # held until the run ends (Run.lock.release()) or the process does
    try:
        run = _prepare(config, device, resume_path, resume_meta, run_dir, lock, log, rank, world_size, peak_flops)
    except BaseException:
        lock.release()
        raise
    barrier()
    return run


def check_distributed(config: TrainConfig, world_size: int) -> None:
    """What several processes cannot do yet, as one-line errors before any work."""
    if config.instruct_data:
        raise ValueError(f"--instruct-data trains in one process (instruction sets are small); run it without "
                         f"torchrun / mlx.launch (this launch has {world_size} processes)")


def _prepare(config: TrainConfig, device: str, resume_path, resume_meta, run_dir: Path, lock, log, rank: int,
             world_size: int, peak_flops=None) -> Run:
    if rank == 0:
        claim_run_dir(run_dir, fresh=resume_meta is None, overwrite=config.overwrite, log=log)
    init = load_init_from(config.init_from, log) if config.init_from and resume_meta is None else None
    cfg = (ModelConfig.from_dict(resume_meta["model_config"]) if resume_meta is not None
           else fit_context(init, config.seq_len) if init is not None else None)
    rows = None
    if config.instruct_data:
        if cfg is None:
            raise ValueError("--instruct-data needs --init-from: a trained model and the tokenizer its rows "
                             "are encoded with")
        tok = init.tokenizer if init is not None else load_tokenizer(checkpoint_tokenizer_dir(resume_path))
        data_dir, rows = resolve_instruct(config, cfg, tok, run_dir, log)
        train_tokens = int(0.9 * sum(len(ids) - 1 for ids, _ in rows))
    else:
        data_dir = resolve_data(config, log, tokenizer=init.tokenizer if init else None, peak_flops=peak_flops)
        manifest = load_manifest(data_dir)
        if resume_meta is not None:
            check_resume_data(resume_meta, cfg, manifest, data_dir)
        elif init is not None:
            check_init_data(init, manifest, data_dir)
        else:
            cfg = resolve_model_config(config, int(manifest["vocab_size"]))
        train_tokens = sum(s["tokens"] for s in manifest.get("shards", []) if s.get("split") == "train")
    if init is not None:
        log(f"init: weights from {init.describe}; a fresh optimizer and schedule")
    lora, base, base_info = resolve_lora(config, cfg, init, resume_meta, log)
    run = Run(config, run_dir, data_dir, cfg, grad_accum_steps(config, cfg.seq_len, world_size), resume_path,
              lock, init, lora, base, base_info, rows, rank=rank, world_size=world_size)
    default_max_steps(config, device, train_tokens, run.tokens_per_step, log)
    run.step_cap = max(1, DEFAULT_EPOCHS * train_tokens // run.tokens_per_step)
    return run


# --- fine-tuning: LoRA and instruction data ----------------------------------------------------------------------
def resolve_lora(config: TrainConfig, cfg: ModelConfig, init, resume_meta: dict | None, log=print):
    """(LoraConfig, base weights, base info) for a LoRA run (new or resumed), else (None, None, None)."""
    if resume_meta is not None and resume_meta.get("lora"):
        info = resume_meta["base"]
        return LoraConfig.from_dict(resume_meta["lora"]), load_lora_base(info, cfg.seq_len, log), info
    if resume_meta is not None or not config.lora_rank:
        return None, None, None
    if init is None:
        raise ValueError("--lora-rank needs --init-from: LoRA adapts a trained base model")
    lora = LoraConfig(config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets,
                      config.lora_layers).check(cfg)
    return lora, init.weights, {"source": init.source, "hash": weights_hash(init.weights)}


def resolve_instruct(config: TrainConfig, cfg: ModelConfig, tok, run_dir: Path, log=print) -> tuple[Path, list]:
    """Instruction rows encoded with the model's tokenizer; the tokenizer is kept in RUN_DIR/tokenizer (what
    checkpoints copy), which then serves as the run's data dir."""
    rows = encode_rows(config.instruct_data, tok, cfg.seq_len, skip_bad_rows=config.skip_bad_rows, log=log)
    if not (run_dir / "tokenizer").is_dir():
        tok.save(run_dir / "tokenizer")
    targets = sum(int(m.sum()) for _, m in rows)
    log(f"data: {len(rows):,} instruction rows from {config.instruct_data} ({targets:,} trained targets)")
    return run_dir, rows


def check_init_data(init: InitFrom, manifest: dict, data_dir: Path) -> None:
    """Starting weights train only on data encoded by their own tokenizer."""
    if manifest.get("tokenizer_hash") != init.tokenizer.hash:
        raise ValueError(f"{data_dir} was encoded with another tokenizer than --init-from {init.source}; give "
                         f"--source (it is encoded with the model's tokenizer) or shards made with "
                         f"`python -m nano_core.prepare --tokenizer` and that model's tokenizer")


def check_resume_data(meta: dict, cfg: ModelConfig, manifest: dict, data_dir: Path) -> None:
    """A checkpoint continues only on data encoded by the tokenizer it was trained with."""
    if cfg.vocab_size != int(manifest["vocab_size"]):
        raise ValueError(f"checkpoint has vocab_size {cfg.vocab_size} but {data_dir} has {manifest['vocab_size']}; "
                         f"resume on the data it was trained on ({meta.get('data_dir')})")
    saved, now = meta.get("tokenizer_hash"), manifest.get("tokenizer_hash")
    if saved and now and saved != now:
        raise ValueError(f"checkpoint was trained with tokenizer {saved[:12]} but {data_dir} was made with {now[:12]}: "
                         f"the token ids mean other things; resume on the data it was trained on "
                         f"({meta.get('data_dir')})")


def run_meta(run: Run, backend, step: int, loader_state: dict, metrics: dict) -> dict:
    """meta.json of a checkpoint: everything needed to resume exactly, and to know what made it."""
    manifest = load_manifest(run.data_dir) if run.instruct_rows is None else {"tokenizer_hash": None}
    return {
        "backend": backend.name, "device": backend.device, "dtype": backend.dtype,
        "model_config": run.model_config.to_dict(),
        "train_config": run.config.to_dict(),
        "step": step, "tokens_seen": step * run.tokens_per_step, "grad_accum": run.grad_accum,
        "world_size": run.world_size,
        "loader_state": loader_state,
        "rng": "dropout is seeded per step from (seed, step): nano_core.backend.step_seed",
        "metrics": metrics,
        "data_dir": str(Path(run.data_dir).resolve()), "tokenizer_hash": manifest.get("tokenizer_hash"),
        "tokenizer_dir": str((Path(run.data_dir) / "tokenizer").resolve()),
        "init_from": run.init.source if run.init else run.config.init_from,
        **({"lora": run.lora.to_dict(), "base": run.base_info} if run.lora else {}),
        "code_version": code_version(),
    }
