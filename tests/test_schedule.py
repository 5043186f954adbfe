"""Learning-rate schedules: warmup, cosine and linear decay to the floor, WSD's stable and decay phases, constant."""
import math
from types import SimpleNamespace

import pytest

from nano_core.schedule import TimeBudget, check_schedule, lr_at


def cfg(**kw):
    base = dict(lr=1e-3, min_lr_frac=0.1, warmup_steps=10, max_steps=100, schedule="cosine", decay_frac=0.2)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
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


def test_linear_falls_in_a_straight_line_from_the_peak_to_the_floor():
    c = cfg(schedule="linear")  # warm-up 10, horizon 100, floor 1e-4
    assert lr_at(10, c) == pytest.approx(1e-3)
    assert lr_at(55, c) == pytest.approx(1e-3 - 0.5 * 9e-4)
    assert lr_at(91, c) == pytest.approx(1e-3 - 0.9 * 9e-4)
    assert lr_at(100, c) == pytest.approx(1e-4) and lr_at(300, c) == pytest.approx(1e-4)
    diffs = [lr_at(s, c) - lr_at(s + 1, c) for s in range(10, 100)]
    assert min(diffs) > 0 and max(diffs) == pytest.approx(min(diffs))  # every step down by the same amount
    assert lr_at(30, c) < lr_at(30, cfg(schedule="cosine"))  # not the cosine: below it in the first half


def test_linear_to_a_zero_floor_is_transformers_default_after_the_warmup():
    c = cfg(schedule="linear", min_lr_frac=0.0)
    for step in range(10, 101):  # get_linear_schedule_with_warmup's factor: (total - step) / (total - warmup)
        assert lr_at(step, c) == pytest.approx(1e-3 * (100 - step) / (100 - 10), abs=1e-15)


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


@pytest.mark.parametrize("bad, msg", [(dict(schedule="exponential"), "unknown schedule"), (dict(lr=0), "--lr"),
                                      (dict(min_lr_frac=2), "--min-lr-frac"), (dict(warmup_steps=-1), "--warmup"),
                                      (dict(schedule="wsd", decay_frac=0), "--decay-frac")])
def test_bad_schedule_settings_get_one_line_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        check_schedule(cfg(**bad))


# ---------------------------------------------------------------------------------------------- --max-time
def test_until_a_time_budget_fixes_the_horizon_the_rate_is_the_warmup_then_the_peak():
    c = cfg(max_steps=None)
    assert [lr_at(s, c) for s in (0, 9)] == [pytest.approx(1e-4), pytest.approx(1e-3)]
    assert lr_at(10, c) == lr_at(37, c) == 1e-3  # no decay can start before its horizon is known
    c.max_steps = 100  # fixed: from here it is the ordinary schedule of that horizon
    assert lr_at(55, c) == pytest.approx(1e-4 + 0.5 * 9e-4)


def test_time_budget_measures_the_second_half_of_the_warmup_and_fills_the_rest_of_the_budget():
    b = TimeBudget(60.0, warmup_steps=50)
    assert (b.clock_from, b.fix_at) == (25, 50)
    assert [s for s in range(1, 100) if b.clock_points(s)] == [25, 50]
    clock = {s: 3.0 + 0.2 * s for s in range(1, 51)}  # a slow first step, then 0.2 s/step
    plans = [b.observe(s, clock[s]) for s in range(1, 51)]
    assert plans[:-1] == [None] * 49
    steps, per_step = plans[-1]
    assert per_step == pytest.approx(0.2)
    assert steps == 50 + int((60.0 - clock[50]) / 0.2)  # 235: the steps that fit in what is left
    assert b.limit(fixed=False) == 60.0 and b.limit(fixed=True) == 60.0 * TimeBudget.OVERRUN


def test_time_budget_measures_at_least_a_few_steps_and_after_a_resume_starts_there():
    assert TimeBudget(10.0, warmup_steps=0).fix_at == TimeBudget.MIN_TIMED_STEPS
    resumed = TimeBudget(10.0, warmup_steps=50, start_step=40)  # a checkpoint from before the horizon was fixed
    assert (resumed.clock_from, resumed.fix_at) == (45, 50)
    late = TimeBudget(10.0, warmup_steps=5, start_step=7)
    assert late.fix_at == 9 and late.clock_from == 8
    with pytest.raises(ValueError, match="--max-time must be positive"):
        TimeBudget(0, warmup_steps=5)


def test_time_budget_revises_the_horizon_to_the_rate_since_its_last_reading():
    b = TimeBudget(60.0, warmup_steps=50)
    clock = {s: 3.0 + 0.2 * s for s in range(1, 51)}
    for s in range(1, 51):
        fixed = b.observe(s, clock[s])
    assert fixed[0] == 285 and b.revise_steps == ()  # nothing to revise before the run follows a horizon
    b.planned(285)
    assert b.revise_steps == (109, 168, 226)  # 1/4, 1/2 and 3/4 of the way from step 50 to 285
    assert [s for s in range(51, 400) if b.clock_points(s)] == [109, 168, 226]
    assert b.observe(108, 20.0) is None and b.observe(50, clock[50]) is None  # fixed once; read again only there
    # the machine slowed to 0.25 s/step after the horizon was fixed: the time left fits fewer steps
    t109 = clock[50] + 59 * 0.25
    steps, per_step = b.observe(109, t109)
    assert per_step == pytest.approx(0.25) and b.measured == (51, 109)
    assert steps == 109 + int((60.0 - t109) / 0.25) < 285
    b.planned(steps)  # the steps to read at are laid out once, from the first horizon
    assert b.revise_steps == (109, 168, 226)
    # ... then sped up to 0.1 s/step: the next reading moves it out again, over the steps since the last one
    t168 = t109 + 59 * 0.1
    steps, per_step = b.observe(168, t168)
    assert per_step == pytest.approx(0.1) and b.measured == (110, 168)
    assert steps == 168 + int((60.0 - t168) / 0.1)


def test_a_budget_spent_before_the_horizon_is_fixed_gives_the_steps_done():
    b = TimeBudget(1.0, warmup_steps=6)
    b.observe(3, 0.5)
    assert b.observe(6, 2.0) == (6, pytest.approx(0.5))  # nothing left: the schedule ends where it is
