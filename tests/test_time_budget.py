"""--max-time without --max-steps, end to end (CPU, a micro model): the schedule is laid out over the steps that fit
in the budget, measured over the warm-up, recorded in the run, and it ends annealed; a resumed run recomputes the
same schedule bit for bit from the recorded number; a budget that runs out during the warm-up is a documented stop.
(The arithmetic of the estimate is in tests/test_schedule.py.)"""
import hashlib
import json
import shutil
from pathlib import Path
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


def rewrite_meta_without_plan(ckpt: Path, **train_config):
    """meta.json as versions before the plan wrote it: no `plan`, no `trained_s`, and the resolved numbers in
    train_config (its checksum updated, as that version's checkpoints have one)."""
    meta = json.loads((ckpt / "meta.json").read_text())
    for key in ("plan", "trained_s"):
        del meta[key]
    meta["train_config"].update(train_config)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    sums = json.loads((ckpt / "checksums.json").read_text())
    data = (ckpt / "meta.json").read_bytes()
    sums["files"]["meta.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "checksums.json").write_text(json.dumps(sums))


def records(run, key):
    return {r["step"]: r[key] for r in metrics.read_metrics(run) if key in r}


HORIZON = 14
# where the horizon is recorded: fixed at step 5 (the end of a 4-step warm-up), then read again at 1/4, 1/2 and 3/4
# of the way to it (round(9 / 2) = 4: Python rounds halves to even)
PLANNED = {5: HORIZON, 7: HORIZON, 9: HORIZON, 12: HORIZON}


@pytest.fixture
def steady_machine(monkeypatch):
    """Whatever this machine's load does to the throughput: the estimate runs for real, but its answer is replaced
    by HORIZON steps, and the run ends at the planned step, never at the safety stop for a machine gone slow. (The
    estimate's arithmetic is tested in tests/test_schedule.py; what is tested here is everything around it.)"""
    real = TimeBudget.observe

    def observe(self, step, seconds):  # the fix and every revision
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
    assert plan == PLANNED  # fixed at the end of the warm-up, revised (the same answer here), recorded
    horizon = plan[5]
    lrs, losses = records(full, "lr"), records(full, "train_loss")
    assert max(lrs) == horizon  # it ran to the planned step ...
    schedule = SimpleNamespace(lr=3e-3, min_lr_frac=0.1, warmup_steps=4, max_steps=horizon, schedule="cosine",
                               decay_frac=0.2)
    assert all(lrs[s] == pytest.approx(lr_at(s - 1, schedule), rel=1e-12) for s in lrs)  # ... on that schedule
    assert lrs[horizon] == min(lrs.values())  # ending at its lowest rate: annealed at the deadline
    last = json.loads((full / f"ckpt_{horizon:07d}" / "meta.json").read_text())
    assert last["plan"]["max_steps"] == horizon  # recorded in the plan: what a resume reads
    assert last["train_config"]["max_steps"] is None  # what was asked stays as asked

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
    assert meta["plan"]["max_steps"] is None  # no horizon was fixed: a resume measures again, for the budget left
    assert meta["plan"]["max_time"] == 0.05 and meta["trained_s"] > 0
    assert "schedule_steps" not in {k for r in metrics.read_metrics(out) for k in r}


def test_max_time_must_be_positive(shared_data, tmp_path):
    with pytest.raises(SystemExit, match="--max-time must be a finite number > 0"):
        train_main("torch")(budget_args(shared_data, tmp_path / "bad", -1))


def test_a_corpus_too_small_to_measure_the_rate_spans_its_passes_annealed(shared_data, tmp_path, capsys):
    """--max-time on a corpus whose 3 passes end before the warm-up would: the schedule spans exactly those passes
    (the step cap), with the warm-up shrunk to a tenth of them, says so in one notice, and ends annealed."""
    from nano_core.prepare import prepare
    from nano_core.plan import DEFAULT_EPOCHS

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
    assert last["plan"]["max_steps"] == cap and last["plan"]["warmup_steps"] == cap // 10
    assert last["train_config"]["max_steps"] is None and last["train_config"]["warmup_steps"] == 1000  # as asked


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_run_interrupted_during_the_warmup_resumes_as_the_same_time_budgeted_run(backend, shared_data, tmp_path,
                                                                                   steady_machine):
    """Issue 23 item 8: the checkpoint of a --max-time run written before its horizon is fixed (here at step 2 of a
    4-step warm-up; a Ctrl-C there leaves the same checkpoint) resumes with --resume latest into the run that was
    interrupted: the same budget measured again for what is left, the same horizon, the same rates and losses --
    not the CPU's default number of steps."""
    full = tmp_path / "full"
    train_main(backend)(budget_args(shared_data, full, 600.0, **{"warmup-steps": 4, "ckpt-every": 2}))
    lrs, losses = records(full, "lr"), records(full, "train_loss")
    assert records(full, "schedule_steps") == PLANNED and max(lrs) == HORIZON
    early = json.loads((full / "ckpt_0000002" / "meta.json").read_text())
    assert early["plan"]["max_steps"] is None and early["plan"]["max_time"] == 600.0  # the horizon still open

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copytree(full / "ckpt_0000002", interrupted / "ckpt_0000002")
    train_main(backend)(["--resume", "latest", "--out", str(interrupted)])
    assert records(interrupted, "schedule_steps") == PLANNED  # measured again, over the warm-up left
    again_lr, again_loss = records(interrupted, "lr"), records(interrupted, "train_loss")
    assert sorted(again_lr) == list(range(3, HORIZON + 1))
    assert all(again_lr[s] == lrs[s] for s in again_lr)  # the uninterrupted run's schedule, bit for bit
    assert all(again_loss[s] == losses[s] for s in again_loss)
    last = json.loads((interrupted / f"ckpt_{HORIZON:07d}" / "meta.json").read_text())
    assert last["plan"]["max_steps"] == HORIZON and last["plan"]["max_time"] == 600.0


def test_a_resume_before_the_horizon_keeps_the_budget_left():
    """The training time a checkpoint records is spent: the horizon is laid out over what is left of the budget."""
    budget = TimeBudget(100.0, warmup_steps=4, start_step=2, spent=60.0)
    assert (budget.clock_from, budget.fix_at) == (3, 5)
    budget.observe(3, 1.0)
    assert budget.observe(5, 3.0) == (5 + int((100.0 - 60.0 - 3.0) / 1.0), 1.0)
    assert budget.limit(fixed=False) == 40.0


def test_a_checkpoint_written_before_plans_resumes_from_its_train_config(shared_data, tmp_path):
    """meta.json of an older version has no `plan`: its train_config held the resolved numbers (max_steps, the
    global batch), and the resumed run is derived from them, as before."""
    full = tmp_path / "full"
    data, config = micro_setup(shared_data)
    train_main("torch")(train_args(data, config, full, **{"max-steps": 6, "ckpt-every": 3, "eval-every": 0,
                                                          "sample-every": 0, "total-batch-tokens": 512}))
    old = tmp_path / "old"
    old.mkdir()
    shutil.copytree(full / "ckpt_0000003", old / "ckpt_0000003")
    rewrite_meta_without_plan(old / "ckpt_0000003", max_steps=6, total_batch_tokens=512)
    train_main("torch")(["--resume", "latest", "--out", str(old)])
    want, got = records(full, "train_loss"), records(old, "train_loss")
    assert sorted(got) == [4, 5, 6] and all(got[s] == want[s] for s in got)  # 6 steps, 2 micro-batches each
    meta = json.loads((old / "ckpt_0000006" / "meta.json").read_text())
    assert meta["plan"]["max_steps"] == 6 and meta["plan"]["grad_accum"] == 2
