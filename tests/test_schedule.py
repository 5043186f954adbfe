"""Learning-rate schedules: warmup, cosine to the floor, WSD's stable and decay phases, constant."""
import math
from types import SimpleNamespace

import pytest

from nano_core.schedule import check_schedule, lr_at


def cfg(**kw):
    base = dict(lr=1e-3, min_lr_frac=0.1, warmup_steps=10, max_steps=100, schedule="cosine", decay_frac=0.2)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_warmup_is_linear_and_reaches_peak(schedule):
    c = cfg(schedule=schedule)
    assert lr_at(0, c) == pytest.approx(1e-4)
    assert lr_at(4, c) == pytest.approx(5e-4)
    assert lr_at(9, c) == pytest.approx(1e-3)
    assert all(lr_at(s, c) < lr_at(s + 1, c) for s in range(9))


def test_cosine_starts_at_peak_ends_at_floor_and_decreases():
    c = cfg()
    assert lr_at(10, c) == pytest.approx(1e-3)
    assert lr_at(55, c) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way: midpoint of peak and floor
    assert lr_at(100, c) == pytest.approx(1e-4)
    assert lr_at(500, c) == pytest.approx(1e-4)  # past the horizon it stays at the floor
    lrs = [lr_at(s, c) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_wsd_is_flat_then_decays_linearly_to_floor():
    c = cfg(schedule="wsd")  # decay over the last 20 of 100 steps
    assert [lr_at(s, c) for s in (10, 50, 79)] == [1e-3] * 3
    assert lr_at(80, c) < 1e-3
    assert lr_at(89, c) == pytest.approx(1e-3 + (1e-4 - 1e-3) * 10 / 20)
    assert lr_at(99, c) == pytest.approx(1e-4)
    steps = [lr_at(s, c) for s in range(80, 100)]
    diffs = [a - b for a, b in zip(steps, steps[1:])]
    assert max(diffs) == pytest.approx(min(diffs))  # a straight line


def test_constant_after_warmup_and_no_warmup_starts_at_peak():
    assert {lr_at(s, cfg(schedule="constant")) for s in range(10, 200)} == {1e-3}
    assert lr_at(0, cfg(warmup_steps=0)) == pytest.approx(1e-3)


def test_lr_is_a_pure_function_of_step():
    c = cfg(schedule="cosine")
    forward = [lr_at(s, c) for s in range(100)]
    assert [lr_at(s, c) for s in reversed(range(100))][::-1] == forward
    assert not any(math.isnan(x) for x in forward)


@pytest.mark.parametrize("bad, msg", [(dict(schedule="linear"), "unknown schedule"), (dict(lr=0), "--lr"),
                                      (dict(min_lr_frac=2), "--min-lr-frac"), (dict(warmup_steps=-1), "--warmup"),
                                      (dict(schedule="wsd", decay_frac=0), "--decay-frac")])
def test_bad_schedule_settings_get_one_line_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        check_schedule(cfg(**bad))
