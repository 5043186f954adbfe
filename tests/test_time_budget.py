"""--max-time without --max-steps, end to end (CPU, a micro model): the schedule is laid out over the steps that fit
in the budget, measured over the warm-up, recorded in the run, and it ends annealed; a resumed run recomputes the
same schedule bit for bit from the recorded number; a budget that runs out during the warm-up is a documented stop.
(The arithmetic of the estimate is in tests/test_schedule.py.)"""
import json
from types import SimpleNamespace

import pytest

from nano_core import metrics
from nano_core.schedule import TimeBudget, lr_at
from tests.test_train import micro_setup, train_args, train_main


def budget_args(shared_data, out, seconds: float, **over) -> list[str]:
    data, config = micro_setup(shared_data)
    args = train_args(data, config, out, **{"max-steps": None, "warmup-steps": 10, "ckpt-every": 10, "keep": 100,
                                            "log-every": 1, "eval-every": 0, "sample-every": 0, **over})
    return args + ["--max-time", str(seconds)]


def records(run, key):
    return {r["step"]: r[key] for r in metrics.read_metrics(run) if key in r}


HORIZON = 14


@pytest.fixture
def steady_machine(monkeypatch):
    """Whatever this machine's load does to the throughput: the estimate runs for real, but its answer is replaced
    by HORIZON steps, and the run ends at the planned step, never at the safety stop for a machine gone slow. (The
    estimate's arithmetic is tested in tests/test_schedule.py; what is tested here is everything around it.)"""
    real = TimeBudget.observe

    def observe(self, step, seconds):
        plan = real(self, step, seconds)
        return None if plan is None else (HORIZON, plan[1])

    monkeypatch.setattr(TimeBudget, "observe", observe)
    monkeypatch.setattr(TimeBudget, "OVERRUN", 1000.0)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_time_budget_ends_annealed_and_a_resume_recomputes_the_same_schedule(backend, shared_data, tmp_path,
                                                                               steady_machine):
    full = tmp_path / "full"
    # warm-up 4: the rate is measured over steps 3-5 and the horizon fixed at step 5; a checkpoint at step 6
    train_main(backend)(budget_args(shared_data, full, 600.0, **{"warmup-steps": 4, "ckpt-every": 6}))
    plan = records(full, "schedule_steps")
    assert plan == {5: HORIZON}  # fixed once, at the end of the warm-up, and recorded
    horizon = plan[5]
    lrs, losses = records(full, "lr"), records(full, "train_loss")
    assert max(lrs) == horizon  # it ran to the planned step ...
    schedule = SimpleNamespace(lr=3e-3, min_lr_frac=0.1, warmup_steps=4, max_steps=horizon, schedule="cosine",
                               decay_frac=0.2)
    assert all(lrs[s] == pytest.approx(lr_at(s - 1, schedule), rel=1e-12) for s in lrs)  # ... on that schedule
    assert lrs[horizon] == min(lrs.values())  # ending at its lowest rate: annealed at the deadline
    last = json.loads((full / f"ckpt_{horizon:07d}" / "meta.json").read_text())
    assert last["train_config"]["max_steps"] == horizon  # recorded: what a resume reads

    resumed = tmp_path / "resumed"  # no --max-time: the schedule comes from the checkpoint alone
    train_main(backend)(["--resume", str(full / "ckpt_0000006"), "--out", str(resumed)])
    again_lr, again_loss = records(resumed, "lr"), records(resumed, "train_loss")
    assert sorted(again_lr) == list(range(7, horizon + 1))
    assert all(again_lr[s] == lrs[s] for s in again_lr)  # the same schedule, bit for bit
    assert all(again_loss[s] == losses[s] for s in again_loss)  # and so the same training


def test_a_budget_shorter_than_the_warmup_stops_with_a_notice_and_a_checkpoint(shared_data, tmp_path, capsys):
    out = tmp_path / "short"
    train_main("torch")(budget_args(shared_data, out, 0.05, **{"warmup-steps": 1000}))
    said = capsys.readouterr().out
    assert "notice: the --max-time budget (0 s) ran out during the warm-up" in said
    ckpts = sorted(out.glob("ckpt_*"))
    assert ckpts, "the run must still leave a checkpoint"
    meta = json.loads((ckpts[-1] / "meta.json").read_text())
    assert meta["train_config"]["max_steps"] is None  # no horizon was fixed: a resume with --max-time measures again
    assert "schedule_steps" not in {k for r in metrics.read_metrics(out) for k in r}


def test_max_time_must_be_positive(shared_data, tmp_path):
    with pytest.raises(SystemExit, match="--max-time must be positive"):
        train_main("torch")(budget_args(shared_data, tmp_path / "bad", -1))
