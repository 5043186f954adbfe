"""Learning-rate schedules: linear warmup, then cosine to a floor, warmup-stable-decay (WSD), or constant.

`lr_at(step, cfg)` is a pure function of the step, so a resumed run recomputes exactly the rate an uninterrupted
run would have used: the schedule itself holds no state that a checkpoint has to carry.

`cfg` is anything with these attributes (the train command's argparse namespace, a SimpleNamespace):
  lr            peak learning rate
  min_lr_frac   floor as a fraction of lr (cosine ends there, WSD decays to it)
  warmup_steps  steps of linear warmup from lr/warmup_steps up to lr
  max_steps     the horizon the schedule is laid out over; None while a time budget has not fixed it yet
                (TimeBudget below): the warm-up ramp, then the peak rate, which is where every schedule starts
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
    if cfg.max_steps is None:  # a time budget still measuring: the horizon comes before any decay would start
        return cfg.lr
    return SCHEDULES[cfg.schedule](step, cfg)


class TimeBudget:
    """--max-time without --max-steps: lay the schedule out over the steps that fit in the budget.

    The rate is measured over the second half of the warm-up (the first steps pay for compilation, allocation and
    cold caches, and are slower than the rest), from `clock_from` to `fix_at`
    = max(warm-up, MIN_TIMED_STEPS); at `fix_at` the horizon becomes
        fix_at + (budget - the training time used so far) / (seconds per step)
    and is written into the run's config as max_steps, so checkpoints carry it and a resumed run recomputes the
    same schedule (lr_at is a pure function of the step and that number). Until then lr_at gives the warm-up ramp
    and the peak, which do not depend on the horizon. The clock is training time: evaluations, samples and
    checkpoints are not counted (the loop pauses it around them), so the estimate is not thrown off by them.

    A budget shorter than the warm-up: the run stops when it runs out, before the schedule could decay (the loop
    says so); documented, not an error, because how long the warm-up takes is only known by running it."""

    MIN_TIMED_STEPS = 5  # fewer steps than this make a throughput estimate too noisy to plan a schedule on
    OVERRUN = 1.25       # after the horizon is fixed, a hard stop if the machine slows down this much

    def __init__(self, seconds: float, warmup_steps: int, start_step: int = 0):
        if seconds <= 0:
            raise ValueError(f"--max-time must be positive, got {seconds}")
        self.seconds = float(seconds)
        self.start = start_step
        self.fix_at = max(warmup_steps, self.MIN_TIMED_STEPS, start_step + 2)
        self.clock_from = start_step + max(1, (self.fix_at - start_step) // 2)
        self.first = None  # (step, training seconds) at clock_from

    def clock_points(self, step: int) -> bool:
        """Whether `step` is one the estimate reads the clock at (the loop syncs the device there first)."""
        return step in (self.clock_from, self.fix_at)

    def observe(self, step: int, seconds: float) -> tuple[int, float] | None:
        """After optimizer step `step` (1-based count of steps done) at `seconds` of training time: at fix_at,
        (the horizon, seconds per step); else None."""
        if step == self.clock_from:
            self.first = (step, seconds)
        if step != self.fix_at or self.first is None:
            return None
        per_step = (seconds - self.first[1]) / max(1, step - self.first[0])
        left = max(0.0, self.seconds - seconds)
        return step + int(left / max(per_step, 1e-9)), per_step

    def limit(self, fixed: bool) -> float:
        """The training time at which the run stops regardless: the budget while measuring, OVERRUN x the budget
        once the horizon is set (the planned end is the horizon; this only guards against a machine gone slow)."""
        return self.seconds * (self.OVERRUN if fixed else 1.0)
