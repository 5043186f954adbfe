"""Learning-rate schedules: linear warmup, then cosine to a floor, warmup-stable-decay (WSD), or constant.

`lr_at(step, cfg)` is a pure function of the step, so a resumed run recomputes exactly the rate an uninterrupted
run would have used: the schedule itself holds no state that a checkpoint has to carry.

`cfg` is anything with these attributes (the train command's argparse namespace, a SimpleNamespace):
  lr            peak learning rate
  min_lr_frac   floor as a fraction of lr (cosine ends there, WSD decays to it)
  warmup_steps  steps of linear warmup from lr/warmup_steps up to lr
  max_steps     the horizon the schedule is laid out over
  schedule      "cosine" | "wsd" | "constant"
  decay_frac    WSD only: the last decay_frac of max_steps decay linearly to the floor
"""
from __future__ import annotations

import math


def _warmup(step: int, cfg) -> float:
    # (step + 1) so that step 0 already trains with a non-zero rate.
    return cfg.lr * (step + 1) / cfg.warmup_steps


def _cosine(step: int, cfg) -> float:
    floor = cfg.lr * cfg.min_lr_frac
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def _wsd(step: int, cfg) -> float:
    # Stable at the peak, then a straight line down to the floor over the last decay_frac of the run: the stable
    # phase can be cut anywhere and decayed later, which is why WSD suits runs whose length is not known upfront.
    floor = cfg.lr * cfg.min_lr_frac
    decay_steps = max(1, round(cfg.decay_frac * cfg.max_steps))
    decay_start = cfg.max_steps - decay_steps
    if step < decay_start:
        return cfg.lr
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return cfg.lr + (floor - cfg.lr) * progress


def _constant(step: int, cfg) -> float:
    return cfg.lr


SCHEDULES = {"cosine": _cosine, "wsd": _wsd, "constant": _constant}


def check_schedule(cfg) -> None:
    """One-line errors for settings that would make a nonsensical schedule."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if cfg.lr <= 0:
        raise ValueError(f"--lr must be positive, got {cfg.lr}")
    if not 0.0 <= cfg.min_lr_frac <= 1.0:
        raise ValueError(f"--min-lr-frac must be in [0, 1], got {cfg.min_lr_frac}")
    if cfg.warmup_steps < 0:
        raise ValueError(f"--warmup-steps must be >= 0, got {cfg.warmup_steps}")
    if cfg.schedule == "wsd" and not 0.0 < cfg.decay_frac <= 1.0:
        raise ValueError(f"--decay-frac must be in (0, 1] for the wsd schedule, got {cfg.decay_frac}")


def lr_at(step: int, cfg) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < cfg.warmup_steps:
        return _warmup(step, cfg)
    return SCHEDULES[cfg.schedule](step, cfg)
