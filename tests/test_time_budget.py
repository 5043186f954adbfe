"""--max-time without --max-steps, end to end (CPU, a micro model): the schedule is laid out over the steps that fit
in the budget, measured over the warm-up, recorded in the run, and it ends annealed; a resumed run recomputes the
same schedule bit for bit from the recorded number; a budget that runs out during the warm-up is a documented stop.
(The arithmetic of the estimate is in tests/test_schedule.py.)"""
import json
from types import SimpleNamespace

import pytest

from nano_core import metrics
from nano_core.schedule import TimeBudget, lr_at
from helpers import micro_setup, train_args, train_main

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop


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


def test_a_corpus_too_small_to_measure_the_rate_spans_its_passes_annealed(shared_data, tmp_path, capsys):
    """--max-time on a corpus whose 3 passes end before the warm-up would: the schedule spans exactly those passes
    (the step cap), with the warm-up shrunk to a tenth of them, says so in one notice, and ends annealed."""
    from nano_core.prepare import prepare
    from nano_core.run import DEFAULT_EPOCHS

    text = tmp_path / "small.txt"
    text.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:24_000])
    manifest = prepare([text], tmp_path / "shards", vocab_size=300, val_tokens=2_000, num_workers=1, progress=False)
    train_tokens = sum(s["tokens"] for s in manifest["shards"] if s["split"] == "train")
    _, config = micro_setup(shared_data)
    out = tmp_path / "run"
    args = train_args(tmp_path / "shards", config, out, **{"max-steps": None, "warmup-steps": 1000, "ckpt-every": 0,
                                                           "log-every": 1, "eval-every": 0, "sample-every": 0})
    train_main("torch")(args + ["--max-time", "3600"])
    cap = DEFAULT_EPOCHS * train_tokens // (4 * 64)  # batch 4 x the micro model's 64 tokens
    assert 10 < cap < 1000  # the case under test: fewer steps than the warm-up asked for
    said = capsys.readouterr().out
    assert (f"notice: the data allows {cap:,} steps ({DEFAULT_EPOCHS} passes), fewer than the --max-time budget "
            f"needs to measure its rate: the schedule spans those steps, with a warm-up of {cap // 10} instead of "
            f"1000") in said
    lrs = records(out, "lr")
    assert max(lrs) == cap  # it ran every step of the 3 passes, and no more
    schedule = SimpleNamespace(lr=3e-3, min_lr_frac=0.1, warmup_steps=cap // 10, max_steps=cap, schedule="cosine",
                               decay_frac=0.2)
    assert all(lrs[s] == pytest.approx(lr_at(s - 1, schedule), rel=1e-12) for s in lrs)
    assert lrs[cap] == min(v for s, v in lrs.items() if s > cap // 10)  # annealed at the end
    last = json.loads((out / f"ckpt_{cap:07d}" / "meta.json").read_text())
    assert last["train_config"]["max_steps"] == cap and last["train_config"]["warmup_steps"] == cap // 10
