"""The resolved plan of a training run: everything nano works out from the TrainConfig, computed once.

The TrainConfig is what was asked and is never written (nano_core/settings.py). The Plan is what nano made of it:
the model, the adapters, where the data and the run live, the batch and its accumulation, how many steps, the
warm-up, the time budget, the learning-rate schedule's numbers (nano_core.schedule.lr_at reads them). It is built
in one place (make_plan), and changes only in its horizon, when a time budget fixes it during training and
revises it at three later steps (with_horizon: a new Plan, never a written config).

Checkpoints record both: `train_config` (asked) and `plan` (resolved; the model and LoRA configs stay in their own
keys, where every reader of a checkpoint finds them). A resumed run continues the saved plan, so a run resumed
during a time budget's warm-up is the run that was interrupted; a checkpoint written before plans were recorded
resumes with its plan derived from `train_config`, which then held the resolved numbers.

Names: `config` is a TrainConfig, `model_config` a ModelConfig, `plan` a Plan.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from nano_core.cli import DEFAULT_MAX_STEPS, TrainConfig
from nano_core.config import ModelConfig
from nano_core.lora import LoraConfig
from nano_core.schedule import TimeBudget
from nano_core.settings import MAX_STEPS_ENV, device_kind

DEFAULT_EPOCHS = 3  # the default step budget never goes past this many passes over the training data
# The plan's numbers a resumed run takes from its checkpoint unless the flag is typed again (--max-steps to train
# longer, --max-time for this session's budget): the rest of the schedule follows the resumed TrainConfig.
RESUMED_NUMBERS = ("total_batch_tokens", "max_steps", "warmup_steps")


@dataclass(frozen=True)
class Plan:
    # what trains
    model_config: ModelConfig
    lora: LoraConfig | None
    recipe: str | None          # the recipe whose settings filled the config (None: no recipe)
    # where
    run_dir: Path
    data_dir: Path
    # the batch: one optimizer step is grad_accum micro-batches of batch_size x seq_len on each of world_size ranks
    batch_size: int
    grad_accum: int
    world_size: int
    total_batch_tokens: int
    # how long
    max_steps: int | None       # the schedule's horizon; None while a time budget measures the rate
    max_time: float | None      # seconds of training: the budget the horizon is measured for, or a stop
    step_cap: int | None        # DEFAULT_EPOCHS passes over the data: a time budget never plans past it
    # the learning-rate schedule (nano_core.schedule.lr_at)
    lr: float
    min_lr_frac: float
    warmup_steps: int
    schedule: str
    decay_frac: float

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over all processes (the global batch)."""
        return self.grad_accum * self.batch_size * self.model_config.seq_len * self.world_size

    def with_horizon(self, steps: int) -> "Plan":
        """The plan once a time budget has fixed the schedule's horizon at `steps`."""
        return replace(self, max_steps=steps)

    def to_dict(self) -> dict:
        """The plan as meta.json records it (the model and LoRA configs are meta.json's own keys)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model_config", "lora")}
        return {**d, "run_dir": str(self.run_dir), "data_dir": str(self.data_dir)}


def saved_numbers(meta: dict) -> dict:
    """The resolved numbers of a checkpoint's run: its plan, or for a checkpoint written before plans were
    recorded, its train_config (which then held them: the default max_steps, total_batch_tokens, a warm-up
    shortened for a small corpus)."""
    saved = meta.get("plan") or meta.get("train_config", {})
    numbers = {k: saved.get(k) for k in RESUMED_NUMBERS}
    # a time budget whose horizon was not fixed yet goes on (an older checkpoint never recorded it: measured again
    # only with --max-time typed, as before)
    numbers["max_time"] = saved.get("max_time") if meta.get("plan") and saved.get("max_steps") is None else None
    return numbers


def grad_accum_steps(total_batch_tokens: int | None, batch_size: int, seq_len: int,
                     world_size: int = 1) -> tuple[int, int]:
    """(the global batch in tokens, micro-batches per optimizer step on each process). --total-batch-tokens is the
    global batch; when it is not given it is one micro-batch per process, and the plan records it: a run resumed on
    another number of processes keeps its global batch, with the accumulation adapted."""
    micro = batch_size * seq_len * world_size
    total = micro if total_batch_tokens is None else total_batch_tokens
    if total % micro:
        procs = f" x {world_size} processes" if world_size > 1 else ""
        raise ValueError(f"--total-batch-tokens {total} is not a multiple of batch-size x seq-len{procs} = {micro}; "
                         f"use a multiple such as {max(1, round(total / micro)) * micro}"
                         + (" or another --batch-size" if world_size > 1 else ""))
    return total, total // micro


def default_max_steps(device: str, train_tokens: int, tokens_per_step: int, log=print) -> int:
    """--max-steps when neither it nor --max-time is given: the device's budget, but no more than DEFAULT_EPOCHS
    passes over a small corpus (more would only memorise it)."""
    budget = int(os.environ.get(MAX_STEPS_ENV, DEFAULT_MAX_STEPS[device_kind(device)]))
    steps = min(budget, max(1, DEFAULT_EPOCHS * train_tokens // tokens_per_step))
    if steps < budget:
        log(f"notice: {steps} steps by default ({DEFAULT_EPOCHS} passes over {train_tokens:,} training "
            f"tokens); set --max-steps to train longer")
    return steps


def epoch_steps(epochs: float, train_tokens: int, tokens_per_step: int, log=print) -> int:
    """--epochs N as optimizer steps: N passes over the training tokens, in whole steps (at least one). The loader
    cuts each shard into windows of seq_len, dropping a shard's last partial window, so its own epoch ends up to
    that many tokens per shard sooner."""
    steps = max(1, int(epochs * train_tokens // tokens_per_step))
    log(f"plan: --epochs {epochs:g} = {steps:,} steps of {tokens_per_step:,} tokens over {train_tokens:,} training "
        f"tokens")
    return steps


def make_plan(config: TrainConfig, typed: set[str], *, model_config: ModelConfig, lora: LoraConfig | None,
              run_dir: Path, data_dir: Path, train_tokens: int, device: str, world_size: int = 1,
              resume_meta: dict | None = None, log=print) -> Plan:
    """The plan of a run (fresh, or resumed from `resume_meta`), in the order its numbers depend on each other."""
    # 1. what a resumed run continues: its checkpoint's resolved numbers, except the flags typed again
    start = int(resume_meta["step"]) if resume_meta is not None else 0
    saved = saved_numbers(resume_meta) if resume_meta is not None else {}
    asked = {name: getattr(config, name) for name in (*RESUMED_NUMBERS, "max_time")}
    numbers = {k: asked[k] if k in typed or k not in saved else saved[k] for k in asked}
    if "epochs" in typed:  # typed again on --resume: the passes replace the saved length
        numbers["max_steps"] = numbers["max_time"] = None
    if numbers["warmup_steps"] is None:
        numbers["warmup_steps"] = config.warmup_steps

    # 2. the batch, and the step cap it implies for this corpus
    total, grad_accum = grad_accum_steps(numbers["total_batch_tokens"], config.batch_size, model_config.seq_len,
                                         world_size)
    step_cap = max(1, DEFAULT_EPOCHS * train_tokens // total)

    # 3. the length: typed or saved steps; else --epochs passes over the data; else the time budget's horizon,
    # measured during training; else the device's default number of steps
    max_steps, max_time, warmup = numbers["max_steps"], numbers["max_time"], numbers["warmup_steps"]
    if max_steps is None and max_time is None and config.epochs is not None:
        max_steps = epoch_steps(config.epochs, train_tokens, total, log)
    if max_steps is None and max_time is None:
        max_steps = default_max_steps(device, train_tokens, total, log)
    if max_steps is None and step_cap <= TimeBudget.fix_step(warmup, start):
        # a corpus too small to need the clock: its passes end before the rate would be measured
        max_steps = max(step_cap, start + 1)
        shorter = min(warmup, max(1, max_steps // 10))
        log(f"notice: the data allows {max_steps:,} steps ({DEFAULT_EPOCHS} passes), fewer than the --max-time "
            f"budget needs to measure its rate: the schedule spans those steps"
            + (f", with a warm-up of {shorter} instead of {warmup}" if shorter < warmup else "")
            + "; more data (--source) makes a longer run")
        warmup = shorter

    # 4. the plan
    recipe = config.recipe if config.recipe not in (None, "none") else None
    return Plan(model_config=model_config, lora=lora, recipe=recipe, run_dir=Path(run_dir), data_dir=Path(data_dir),
                batch_size=config.batch_size, grad_accum=grad_accum, world_size=world_size,
                total_batch_tokens=total, max_steps=max_steps, max_time=max_time, step_cap=step_cap, lr=config.lr,
                min_lr_frac=config.min_lr_frac, warmup_steps=warmup, schedule=config.schedule,
                decay_frac=config.decay_frac)

