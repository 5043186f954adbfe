"""One-line errors for numeric flags: finite, and inside the range the setting means something in.

argparse's `type=float` accepts "nan", "inf" and "1e999"; a comparison such as `lr <= 0` is false for NaN, so a NaN
went through every check and reached the framework (PyTorch's "Invalid learning rate: nan", MLX training NaN from
the first step). `check_number` is the one test; `TRAIN_RANGES` lists the train command's numeric flags with their
ranges, and `check_train_numbers(config)` applies them before anything is created or prepared.
"""
from __future__ import annotations

import math
import numbers


def _bound(value, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return not (high is not None and (value >= high if high_open else value > high))


def describe_range(low=None, high=None, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "a finite number"


def check_number(flag: str, value, low=None, high=None, low_open: bool = False, high_open: bool = False,
                 integer: bool = False, hint: str = "") -> None:
    """A one-line ValueError naming `flag` (e.g. "--lr") unless `value` is a finite number (an integer with
    `integer`) within the range: [low, high], an end left out is open-ended, `low_open`/`high_open` exclude it."""
    kind = "an integer" if integer else "a finite number"
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value) or not _bound(value, low, high, low_open, high_open):
        where = describe_range(low, high, low_open, high_open)
        must = kind if where == "a finite number" else f"{kind} {where}"
        raise ValueError(f"{flag} must be {must}, got {value!r}" + (f"; {hint}" if hint else ""))


# The train command's numeric flags that check_config does not test yet (TrainConfig field -> check_number's range):
# every float, the seed and the context length (ModelConfig's own error named `seq_len=0`, not the flag).
TRAIN_RANGES: dict[str, dict] = {
    "lr": dict(low=0, low_open=True, hint="e.g. --lr 1e-3"),
    "min_lr_frac": dict(low=0, high=1),
    "decay_frac": dict(low=0, high=1),
    "weight_decay": dict(low=0),
    "muon_lr": dict(low=0, low_open=True),
    "embed_lr": dict(low=0, low_open=True),
    "head_lr": dict(low=0, low_open=True),
    "muon_momentum": dict(low=0, high=1, high_open=True),
    "muon_momentum_warmup": dict(low=0, integer=True, hint="steps; 0 turns the warm-up off"),
    "beta1": dict(low=0, high=1, high_open=True),
    "beta2": dict(low=0, high=1, high_open=True),
    "eps": dict(low=0, low_open=True),
    "grad_clip": dict(low=0, hint="0 turns clipping off"),
    "lora_alpha": dict(low=0, low_open=True),
    "lora_dropout": dict(low=0, high=1, high_open=True),
    "max_time": dict(low=0, low_open=True, hint="seconds"),
    "memory_limit": dict(low=0, low_open=True, hint="GB"),
    "dist_timeout": dict(low=0, low_open=True, hint="seconds"),
    "seed": dict(low=0, integer=True),
    "seq_len": dict(low=1, integer=True, hint="the context length in tokens"),
}


def check_train_numbers(config) -> None:
    """check_number for every field of TRAIN_RANGES that `config` has and sets (None means: resolved later)."""
    for name, rule in TRAIN_RANGES.items():
        value = getattr(config, name, None)
        if value is not None:
            check_number("--" + name.replace("_", "-"), value, **rule)
