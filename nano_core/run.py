"""From a TrainConfig to a run ready to train: the config completed once, its data, model and run dir, its plan.

Everything here is backend-free and happens before a framework builds anything, so a bad flag or a missing file
is a one-line error before any work is done. The steps (prepare_run):
1. the config: the device's recipe and preset for a fresh run (nano_core/settings.py; --resume's settings came
   first, in resolve_resume), checked;
2. the run dir: named, checked writable, locked by rank 0 (nano_core/rundir.py);
3. the model and its data: the checkpoint's model (--resume), the starting weights' (--init-from), or the flags'
   on the shards of --data / --source (nano_core/data_cache.py), or instruction rows;
4. LoRA adapters and their frozen base (--lora-rank);
5. the plan: steps, warm-up, batch, time budget (nano_core/plan.py).

Names: `config` is a TrainConfig, `model_config` a ModelConfig, `plan` a Plan.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nano_core.checkpoint import checkpoint_tokenizer_dir, code_version
from nano_core.cli import TrainConfig
from nano_core.config import ModelConfig
from nano_core.data_dir import load_manifest
from nano_core.data_cache import resolve_data, resolve_model_config
from nano_core.instruct_rows import encode_rows
from nano_core.lora import LoraConfig
from nano_core.model_flags import apply as apply_model_flags
from nano_core.plan import Plan, make_plan
from nano_core.pretrained import InitFrom, fit_context, load_init_from, load_lora_base, weights_hash
from nano_core.rundir import LOCK_FILE, RunLock, check_run_dir, claim_run_dir, default_run_dir, undo_start
from nano_core.settings import check_config, resolve_defaults
from tokenizer import load_tokenizer


@dataclass
class Run:
    """A run ready to train: what was asked (`config`), what nano made of it (`plan`), and the live objects that
    go with them."""
    config: TrainConfig
    plan: Plan                                                # replaced (never written) when a horizon is fixed
    resume_path: Path | None = None
    start_step: int = 0                                       # the checkpoint's step on --resume
    trained_s: float = 0.0                                    # ... and its training time (a time budget's clock)
    lock: "RunLock | None" = field(default=None, repr=False)
    init: "InitFrom | None" = field(default=None, repr=False)  # --init-from: the starting weights
    base: dict | None = field(default=None, repr=False)       # LoRA's frozen base (weights, canonical names)
    base_info: dict | None = None                             # {"source", "hash"} of that base, for meta.json
    instruct_rows: list | None = field(default=None, repr=False)  # --instruct-data, encoded (ids, mask) rows
    rank: int = 0        # this process, under torchrun / mlx.launch (nano_core/distributed.py)
    # rank 0: releases the lock and removes what this start created (rundir.undo_start), for a start refused after
    # prepare_run (the model or optimizer refusing the settings): it leaves nothing behind either
    abandon: "Callable[[], None] | None" = field(default=None, repr=False)


def prepare_run(config: TrainConfig, backend: str, device: str, resume: tuple[Path | None, dict | None],
                log=print, rank: int = 0, world_size: int = 1, barrier=lambda: None,
                typed: set[str] = frozenset(), peak_flops=None) -> Run:
    """The run of `config` (with --resume's settings already in it: nano_core.settings.resolve_resume).
    Under several processes (rank, world_size, and `barrier` waiting for all of them), rank 0 owns the run dir and
    prepares the data while the others wait, then they read what it made."""
    resume_path, resume_meta = resume
    config = resolve_defaults(config, device, typed, resuming=resume_meta is not None, log=log)
    check_config(config)
    if world_size > 1:
        check_distributed(config, world_size)
    name = (config.recipe if config.recipe not in (None, "none") else None) or config.preset or \
        ("init" if config.init_from else None)
    run_dir = Path(config.out) if config.out else resume_path.parent if resume_path else \
        default_run_dir(backend, name)
    args = (config, typed, device, resume_path, resume_meta, run_dir, log, rank, world_size, peak_flops)
    if rank != 0:  # the run dir and its lock are rank 0's; the data is there once rank 0 has passed the barrier
        barrier()
        return _prepare(*args, lock=None)
    made = check_run_dir(run_dir)
    lock_was_there, lock = (run_dir / LOCK_FILE).exists(), None

    def abandon():
        if lock is not None:
            lock.release()
        if lock is not None or made:  # never another holder's lock: only once ours was taken
            undo_start(run_dir, made, lock_was_there)

    try:
        lock = RunLock(run_dir)  # held until the run ends (Run.lock.release()) or the process does
        run = _prepare(*args, lock=lock)
    except BaseException:
        abandon()
        raise
    run.abandon = abandon
    barrier()
    return run


def check_distributed(config: TrainConfig, world_size: int) -> None:
    """What several processes cannot do yet, as one-line errors before any work."""
    if config.instruct_data:
        raise ValueError(f"--instruct-data trains in one process (instruction sets are small); run it without "
                         f"torchrun / mlx.launch (this launch has {world_size} processes)")


def _prepare(config: TrainConfig, typed: set[str], device: str, resume_path, resume_meta, run_dir: Path, log,
             rank: int, world_size: int, peak_flops=None, *, lock) -> Run:
    if rank == 0:
        claim_run_dir(run_dir, fresh=resume_meta is None, overwrite=config.overwrite, log=log)
    init = load_init_from(config.init_from, log) if config.init_from and resume_meta is None else None
    model_config = (ModelConfig.from_dict(resume_meta["model_config"]) if resume_meta is not None
                    else apply_model_flags(fit_context(init, config.seq_len), config.model_overrides)
                    if init is not None else None)
    rows = None
    if config.instruct_data:
        if model_config is None:
            raise ValueError("--instruct-data needs --init-from: a trained model and the tokenizer its rows "
                             "are encoded with")
        tok = init.tokenizer if init is not None else load_tokenizer(checkpoint_tokenizer_dir(resume_path))
        data_dir, rows = resolve_instruct(config, model_config, tok, run_dir, log)
        train_tokens = int(0.9 * sum(len(ids) - 1 for ids, _ in rows))
    else:
        data_dir = resolve_data(config, log, tokenizer=init.tokenizer if init else None, peak_flops=peak_flops)
        manifest = load_manifest(data_dir)
        if resume_meta is not None:
            check_resume_data(resume_meta, model_config, manifest, data_dir, typed_data="data" in typed)
        elif init is not None:
            check_init_data(init, manifest, data_dir)
        else:
            model_config = resolve_model_config(config, int(manifest["vocab_size"]))
        train_tokens = sum(s["tokens"] for s in manifest.get("shards", []) if s.get("split") == "train")
    if init is not None:
        log(f"init: weights from {init.describe}; a fresh optimizer and schedule")
    lora, base, base_info = resolve_lora(config, model_config, init, resume_meta, log)
    plan = make_plan(config, typed, model_config=model_config, lora=lora, run_dir=run_dir, data_dir=data_dir,
                     train_tokens=train_tokens, device=device, world_size=world_size, resume_meta=resume_meta,
                     log=log)
    start, trained_s = (int(resume_meta["step"]), float(resume_meta.get("trained_s", 0.0))) if resume_meta else (0, 0.0)
    return Run(config, plan, resume_path, start, trained_s, lock, init, base, base_info, rows, rank=rank)


# --- fine-tuning: LoRA and instruction data ----------------------------------------------------------------------
def resolve_lora(config: TrainConfig, model_config: ModelConfig, init, resume_meta: dict | None, log=print):
    """(LoraConfig, base weights, base info) for a LoRA run (new or resumed), else (None, None, None)."""
    if resume_meta is not None and resume_meta.get("lora"):
        info = resume_meta["base"]
        return LoraConfig.from_dict(resume_meta["lora"]), load_lora_base(info, model_config.seq_len, log), info
    if resume_meta is not None or not config.lora_rank:
        return None, None, None
    if init is None:
        raise ValueError("--lora-rank needs --init-from: LoRA adapts a trained base model")
    lora = LoraConfig(config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets,
                      config.lora_layers).check(model_config)
    return lora, init.weights, {"source": init.source, "hash": weights_hash(init.weights)}


def resolve_instruct(config: TrainConfig, model_config: ModelConfig, tok, run_dir: Path,
                     log=print) -> tuple[Path, list]:
    """Instruction rows encoded with the model's tokenizer; the tokenizer is kept in RUN_DIR/tokenizer (what
    checkpoints copy), which then serves as the run's data dir."""
    rows = encode_rows(config.instruct_data, tok, model_config.seq_len, skip_bad_rows=config.skip_bad_rows, log=log)
    if not (run_dir / "tokenizer").is_dir():
        tok.save(run_dir / "tokenizer")
    targets = sum(int(m.sum()) for _, m in rows)
    log(f"data: {len(rows):,} instruction rows from {config.instruct_data} ({targets:,} trained targets)")
    return run_dir, rows


# --- what the data must be ------------------------------------------------------------------------------------------
def check_init_data(init: InitFrom, manifest: dict, data_dir: Path) -> None:
    """Starting weights train only on data encoded by their own tokenizer."""
    if manifest.get("tokenizer_hash") != init.tokenizer.hash:
        raise ValueError(f"{data_dir} was encoded with another tokenizer than --init-from {init.source}; give "
                         f"--source (it is encoded with the model's tokenizer) or shards made with "
                         f"`python -m nano_core.prepare --tokenizer` and that model's tokenizer")


def check_resume_data(meta: dict, model_config: ModelConfig, manifest: dict, data_dir: Path,
                      typed_data: bool = False) -> None:
    """A checkpoint continues only on data encoded by the tokenizer it was trained with, and a typed --data only
    where the checkpoint's own shards are no longer (a run moved to another machine)."""
    if model_config.vocab_size != int(manifest["vocab_size"]):
        raise ValueError(f"checkpoint has vocab_size {model_config.vocab_size} but {data_dir} has "
                         f"{manifest['vocab_size']}; resume on the data it was trained on ({meta.get('data_dir')})")
    saved, now = meta.get("tokenizer_hash"), manifest.get("tokenizer_hash")
    if saved and now and saved != now:
        raise ValueError(f"checkpoint was trained with tokenizer {saved[:12]} but {data_dir} was made with {now[:12]}: "
                         f"the token ids mean other things; resume on the data it was trained on "
                         f"({meta.get('data_dir')})")
    trained_on = meta.get("data_dir")
    if typed_data and trained_on and Path(trained_on).is_dir() and Path(trained_on).resolve() != data_dir.resolve():
        raise ValueError(f"--data {data_dir} conflicts with the checkpoint, which trains on the shards in "
                         f"{trained_on}; a resumed run keeps its data: drop --data, or start a new run from its "
                         f"weights with --init-from")


def run_meta(run: Run, backend, step: int, loader_state: dict, metrics: dict, trained_s: float = 0.0) -> dict:
    """meta.json of a checkpoint: everything needed to resume exactly, and to know what made it: what was asked
    (train_config) and what nano made of it (plan)."""
    plan = run.plan
    manifest = load_manifest(plan.data_dir) if run.instruct_rows is None else {"tokenizer_hash": None}
    return {
        "backend": backend.name, "device": backend.device, "dtype": backend.dtype,
        "model_config": plan.model_config.to_dict(),
        "train_config": run.config.to_dict(),
        "plan": plan.to_dict(),
        "step": step, "tokens_seen": step * plan.tokens_per_step, "grad_accum": plan.grad_accum,
        "world_size": plan.world_size, "trained_s": trained_s,
        "loader_state": loader_state,
        "rng": "dropout is seeded per step from (seed, step): nano_core.backend.step_seed",
        "metrics": metrics,
        "data_dir": str(Path(plan.data_dir).resolve()), "tokenizer_hash": manifest.get("tokenizer_hash"),
        "tokenizer_dir": str((Path(plan.data_dir) / "tokenizer").resolve()),
        "init_from": run.init.source if run.init else run.config.init_from,
        **({"lora": plan.lora.to_dict(), "base": run.base_info} if plan.lora else {}),
        "code_version": code_version(),
    }
