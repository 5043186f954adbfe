"""Learning-rate schedules: linear warmup, then cosine or linear decay to a floor, warmup-stable-decay (WSD), or
constant.

`lr_at(step, plan)` is a pure function of the step and the run's plan, so a resumed run recomputes exactly the
rate an uninterrupted run would have used: the schedule itself holds no state that a checkpoint has to carry.

`plan` is the run's resolved plan (nano_core/plan.py), or anything with these attributes (a SimpleNamespace):
  lr            peak learning rate
  min_lr_frac   floor as a fraction of lr (cosine and linear end there, WSD decays to it)
  warmup_steps  steps of linear warmup from lr/warmup_steps up to lr
  max_steps     the horizon the schedule is laid out over; None while a time budget has not fixed it yet
                (TimeBudget below): the warm-up ramp, then the peak rate, which is where every schedule starts
  schedule      "cosine" | "linear" | "wsd" | "constant"
  decay_frac    WSD only: the last decay_frac of max_steps decay linearly to the floor
"""
from __future__ import annotations

import math


def _warmup(step: int, plan) -> float:
    # (step + 1) so that step 0 already trains with a non-zero rate.
    return plan.lr * (step + 1) / plan.warmup_steps


def _progress(step: int, plan) -> float:
    """How far the decay after the warm-up has gone: 0 at the end of the warm-up, 1 at max_steps."""
    span = max(1, plan.max_steps - plan.warmup_steps)
    return min(1.0, max(0.0, (step - plan.warmup_steps) / span))


def _cosine(step: int, plan) -> float:
    floor = plan.lr * plan.min_lr_frac
    return floor + 0.5 * (plan.lr - floor) * (1.0 + math.cos(math.pi * _progress(step, plan)))


def _linear(step: int, plan) -> float:
    # A straight line from the peak to the floor: with --min-lr-frac 0 the decay of Transformers' default
    # (get_linear_schedule_with_warmup: lr x (max_steps - step) / (max_steps - warmup)). Its warm-up differs by
    # one step: nano's first step already trains at lr / warmup (_warmup), Transformers' at 0.
    floor = plan.lr * plan.min_lr_frac
    return plan.lr + (floor - plan.lr) * _progress(step, plan)


def _wsd(step: int, plan) -> float:
    # Stable at the peak, then a straight line down to the floor over the last decay_frac of the run: the stable
    # phase can be cut anywhere and decayed later, which is why WSD suits runs whose length is not known upfront.
    floor = plan.lr * plan.min_lr_frac
    decay_steps = max(1, round(plan.decay_frac * plan.max_steps))
    decay_start = plan.max_steps - decay_steps
    if step < decay_start:
        return plan.lr
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return plan.lr + (floor - plan.lr) * progress


def _constant(step: int, plan) -> float:
    return plan.lr


SCHEDULES = {"cosine": _cosine, "linear": _linear, "wsd": _wsd, "constant": _constant}


def check_schedule(config) -> None:
    """One-line errors for settings that would make a nonsensical schedule."""
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if config.lr <= 0:
        raise ValueError(f"--lr must be positive, got {config.lr}")
    if not 0.0 <= config.min_lr_frac <= 1.0:
        raise ValueError(f"--min-lr-frac must be in [0, 1], got {config.min_lr_frac}")
    if config.warmup_steps < 0:
        raise ValueError(f"--warmup-steps must be >= 0, got {config.warmup_steps}")
    if config.schedule == "wsd" and not 0.0 < config.decay_frac <= 1.0:
        raise ValueError(f"--decay-frac must be in (0, 1] for the wsd schedule, got {config.decay_frac}")


def lr_at(step: int, plan) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < plan.warmup_steps:
        return _warmup(step, plan)
    if plan.max_steps is None:  # a time budget still measuring: the horizon comes before any decay would start
        return plan.lr
    return SCHEDULES[plan.schedule](step, plan)


class TimeBudget:
    """--max-time without --max-steps: lay the schedule out over the steps that fit in the budget.

    The rate is measured over the second half of the warm-up (the first steps pay for compilation, allocation and
    cold caches, and are slower than the rest), from `clock_from` to `fix_at`
    = max(warm-up, MIN_TIMED_STEPS); at `fix_at` the horizon becomes
        fix_at + (budget - the training time used so far) / (seconds per step)
    and becomes the plan's max_steps (nano_core/plan.py), so checkpoints carry it and a resumed run recomputes the
    same schedule (lr_at is a pure function of the step and that number). A run resumed before the horizon was
    fixed measures again from its resume step, for the budget it has left (`spent`: its training time so far).
    Until then lr_at gives the warm-up ramp and the peak, which do not depend on the horizon. The clock is training
    time: evaluations, samples and checkpoints are not counted (the loop pauses it around them), so the estimate is
    not thrown off by them.

    A machine's speed drifts over minutes (a shared VM's most of all), so a rate read over a few warm-up steps can
    leave part of the budget unused, or overrun it: at REVISE_AT (1/4, 1/2 and 3/4 of the way to the fixed horizon)
    `observe` measures the rate again over the steps since the last reading and moves the horizon to what the time
    left now fits (docs/training.md has what it changed). Each new horizon is the plan's max_steps from then on;
    the cosine's progress jumps by the correction, which is why it stops at 3/4 rather than chase the clock into the
    annealing. A run resumed after the horizon was fixed follows its checkpoint's horizon and revises nothing.

    A budget shorter than the warm-up: the run stops when it runs out, before the schedule could decay (the loop
    says so); documented, not an error, because how long the warm-up takes is only known by running it."""

    MIN_TIMED_STEPS = 5  # fewer steps than this make a throughput estimate too noisy to plan a schedule on
    OVERRUN = 1.25       # after the horizon is fixed, a hard stop if the machine slows down this much
    REVISE_AT = (0.25, 0.5, 0.75)  # fractions of the way from fix_at to the horizon at which it is measured again

    def __init__(self, seconds: float, warmup_steps: int, start_step: int = 0, spent: float = 0.0):
        if seconds <= 0:
            raise ValueError(f"--max-time must be positive, got {seconds}")
        self.seconds = float(seconds)
        self.spent = float(spent)  # training seconds of this run before `start_step` (a resumed run's earlier part)
        self.start = start_step
        self.fix_at = self.fix_step(warmup_steps, start_step)
        self.clock_from = start_step + max(1, (self.fix_at - start_step) // 2)
        self.first = None  # (step, training seconds) at clock_from, then at the last reading
        self.revise_steps = ()  # set when the horizon is fixed
        self.measured = None

    @classmethod
    def fix_step(cls, warmup_steps: int, start_step: int = 0) -> int:
        """The step at which a budget starting at `start_step` fixes the horizon."""
        return max(warmup_steps, cls.MIN_TIMED_STEPS, start_step + 2)

    def clock_points(self, step: int) -> bool:
        """Whether `step` is one the estimate reads the clock at (the loop syncs the device there first)."""
        return step in (self.clock_from, self.fix_at) or step in self.revise_steps

    def observe(self, step: int, seconds: float) -> tuple[int, float] | None:
        """After optimizer step `step` (1-based count of steps done) at `seconds` of training time since
        `start_step`: at fix_at, and once the run follows a horizon (`planned`) at the revise steps, (the horizon,
        seconds per step); else None. The revise steps come from the agreed horizon, so they are the same on every
        rank and the ranks agree on each new horizon together."""
        if self.revise_steps:
            return self._horizon(step, seconds) if step in self.revise_steps else None
        if step == self.clock_from:
            self.first = (step, seconds)
        if step != self.fix_at or self.first is None:
            return None
        return self._horizon(step, seconds)

    def _horizon(self, step: int, seconds: float) -> tuple[int, float]:
        """(the steps that fit, seconds per step) from the rate since the last reading; this step is the next one."""
        per_step = (seconds - self.first[1]) / max(1, step - self.first[0])
        left = max(0.0, self.seconds - self.spent - seconds)
        self.measured = (self.first[0] + 1, step)  # the steps the rate was read over (for the log)
        self.first = (step, seconds)
        return step + int(left / max(per_step, 1e-9)), per_step

    def planned(self, horizon: int) -> None:
        """The horizon the run now follows (every rank's agreed one): lays out the steps `observe` reads again at."""
        if not self.revise_steps:
            span = horizon - self.fix_at
            self.revise_steps = tuple(sorted({self.fix_at + round(span * f) for f in self.REVISE_AT} - {self.fix_at}))

    def limit(self, fixed: bool) -> float:
        """The training time at which the run stops regardless: the budget while measuring, OVERRUN x the budget
        once the horizon is set (the planned end is the horizon; this only guards against a machine gone slow);
        counted, like `observe`'s seconds, from `start_step`."""
        return self.seconds * (self.OVERRUN if fixed else 1.0) - self.spent
