"""Faults injected on purpose into the train and generate commands of both backends: a NaN at a chosen step, a
diverging learning rate, two runs into one directory, SIGTERM, a fresh run over an old one, a full disk, Ctrl-C
during data preparation, and bad input. Each ends in a clear outcome: the last good checkpoint kept and named, or a
one-line error before any work -- never a traceback, never a non-finite or mixed-up checkpoint.
(Checkpoint/metrics corruption: test_faults_checkpoint.py; data-side faults: test_faults_data.py.)"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nano_core import checkpoint as ck
from nano_core import metrics
from helpers import REPO, losses, micro_setup, reference_run, train_args, train_main

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

QUICK = {"eval-every": 0, "sample-every": 0, "eval-steps": 1, "sample-tokens": 1}


@pytest.fixture(params=["torch", "mlx"])
def backend(request) -> str:
    return request.param


def backend_class(name: str):
    return __import__(f"nano_{name}.backend", fromlist=["Backend"]).Backend


def fails_with(capsys, fn, *words, code=None) -> str:
    """Run fn, which must exit with an error; return its one-line message after checking it names `words`."""
    with pytest.raises(SystemExit) as exit_info:
        fn()
    err = exit_info.value.code if isinstance(exit_info.value.code, str) else capsys.readouterr().err.strip()
    if code is not None:
        assert exit_info.value.code == code
    else:
        assert isinstance(exit_info.value.code, str) and exit_info.value.code.startswith("error: ")
    assert "\n" not in err.strip() and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def all_finite(ckpt: Path) -> bool:
    weights, state, _ = ck.load_checkpoint(ckpt)
    return all(np.isfinite(a).all() for a in [*weights.values(), *[v for k, v in state.items() if k != "step"]])


# ----------------------------------------------------------------------------- NaN and divergence
def test_nan_at_a_chosen_step_stops_there_and_keeps_the_last_good_checkpoint(backend, shared_data, tmp_path,
                                                                            monkeypatch, capsys):
    """A NaN loss at step 5, with losses read only every 10 steps: detected at step 5 exactly, checkpoints 2 and 4
    stay, nothing later is written, and the message names step 5 and the checkpoint to resume from."""
    cls = backend_class(backend)
    real = cls.make_train_step

    def poisoned(self, model, optimizer, *args, **kw):
        step = real(self, model, optimizer, *args, **kw)
        return lambda batch, lr, index, mask=None: step(batch, lr, index, mask=mask) * (
            float("nan") if index == 4 else 1.0)

    monkeypatch.setattr(cls, "make_train_step", poisoned)
    data, config = micro_setup(shared_data)
    out = tmp_path / "nan"
    msg = fails_with(capsys, lambda: train_main(backend)(train_args(data, config, out, **{
        **QUICK, "max-steps": 10, "log-every": 10, "ckpt-every": 2, "keep": 5})), "diverged", "at step 5",
        f"--resume {out / 'ckpt_0000004'}")
    assert "lower --lr" in msg.lower()
    assert [p.name for p in ck.list_checkpoints(out)] == ["ckpt_0000002", "ckpt_0000004"]
    assert all(all_finite(p) for p in ck.list_checkpoints(out))
    assert ck.load_checkpoint(ck.latest_checkpoint(out))[2]["step"] == 4


def test_a_diverging_learning_rate_never_writes_a_non_finite_checkpoint(backend, shared_data, tmp_path, capsys):
    """The issue's reproduction: --lr 1e4, constant, checkpoints every 3 steps, losses logged every 10."""
    data, config = micro_setup(shared_data)
    out = tmp_path / "diverge"
    fails_with(capsys, lambda: train_main(backend)(train_args(data, config, out, **{
        **QUICK, "max-steps": 30, "lr": 1e4, "warmup-steps": 0, "schedule": "constant", "log-every": 10,
        "ckpt-every": 3, "keep": 3})), "diverged")
    kept = ck.list_checkpoints(out)
    assert all(all_finite(p) for p in kept)  # possibly none at all: then nothing bad was written either
    if kept:
        ck.load_checkpoint(ck.latest_checkpoint(out))


# ----------------------------------------------------------------------------- one run per directory, signals
def test_a_second_run_into_a_busy_dir_is_refused_and_sigterm_saves_a_resumable_checkpoint(shared_data, tmp_path,
                                                                                          capsys):
    """torch trains in a subprocess; an MLX run into the same --out is refused naming the holder; SIGTERM then
    saves and exits 0, and the saved checkpoint continues bit for bit like an uninterrupted run."""
    data, config = micro_setup(shared_data)
    out = tmp_path / "busy"
    common = {**QUICK, "schedule": "constant", "warmup-steps": 2, "ckpt-every": 0}
    proc = subprocess.Popen([sys.executable, "-m", "nano_torch.train",
                             *train_args(data, config, out, **{**common, "max-steps": 100000})],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while len(losses(out)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert losses(out), "training never logged a step"
        fails_with(capsys, lambda: train_main("mlx")(train_args(data, config, out, **common)), "is in use by pid",
                   "choose another --out")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "interrupted (SIGTERM): saved" in output, output[-2000:]
    step = ck.load_checkpoint(ck.latest_checkpoint(out))[2]["step"]
    train_main("torch")(["--resume", "latest", "--out", str(out), "--max-steps", str(step + 2)])
    train_main("torch")(train_args(data, config, tmp_path / "straight", **{**common, "max-steps": step + 2}))
    resumed, straight = losses(out), losses(tmp_path / "straight")
    assert all(resumed[s] == straight[s] for s in (step + 1, step + 2)), (resumed, straight)


def test_a_second_signal_stops_at_once_with_one_line_and_the_last_checkpoint_intact(shared_data, tmp_path):
    """Ctrl-C then a SIGTERM before the first one's checkpoint (what a launcher does to every rank when one fails):
    exit 130 at once with one line that says the run had started, no traceback, and the last checkpoint loads."""
    data, config = micro_setup(shared_data)
    out = tmp_path / "twice"
    proc = subprocess.Popen([sys.executable, "-m", "nano_torch.train",
                             *train_args(data, config, out, **{**QUICK, "max-steps": 100000, "ckpt-every": 2})],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while max(losses(out), default=0) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert losses(out), "training never logged a step"
        # Python runs the handlers of pending signals in signal-number order: the SIGINT asks for a checkpoint and
        # puts the previous handlers back, so the SIGTERM right behind it is the second signal
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, output[-2000:]
    assert "interrupted again: stopped at once, without a new checkpoint; the last checkpoint is intact: " \
           f"continue with --resume latest --out {out}" in output, output[-2000:]
    assert "Traceback" not in output and "before training started" not in output
    step = ck.load_checkpoint(ck.latest_checkpoint(out))[2]["step"]
    assert step >= 2 and step % 2 == 0


def test_a_fresh_run_into_another_runs_dir_is_refused_unless_overwrite(backend, shared_data, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(reference_run(backend, shared_data), old)
    data, config = micro_setup(shared_data)
    args = train_args(data, config, old, **{**QUICK, "max-steps": 2, "ckpt-every": 1})
    fails_with(capsys, lambda: train_main(backend)(args), "already holds a run", "ckpt_0000008", "--resume latest",
               "--overwrite")
    assert [p.name for p in ck.list_checkpoints(old)] == ["ckpt_0000004", "ckpt_0000008"]  # untouched
    train_main(backend)(args + ["--overwrite"])
    assert [p.name for p in ck.list_checkpoints(old)] == ["ckpt_0000001", "ckpt_0000002"]
    assert sorted(losses(old)) == [1, 2]  # the old run's records went with it: no mix


# ----------------------------------------------------------------------------- I/O faults
def test_a_full_disk_at_checkpoint_time_is_one_line_naming_the_path(backend, shared_data, tmp_path, monkeypatch,
                                                                    capsys):
    from nano_core import trainer

    def no_space(run_dir, step, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(run_dir) / f"ckpt_{step:07d}"))

    monkeypatch.setattr(trainer, "save_checkpoint", no_space)
    data, config = micro_setup(shared_data)
    fails_with(capsys, lambda: train_main(backend)(train_args(data, config, tmp_path / "full", **{
        **QUICK, "max-steps": 2})), "No space left on device", "ckpt_0000002", "--resume latest")


def test_ctrl_c_during_data_preparation_is_one_line_and_exit_130(shared_data, tmp_path, monkeypatch, capsys):
    from nano_core import data_cache

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_cache, "prepare", interrupted)
    monkeypatch.setenv("NANO_CACHE", str(tmp_path / "cache"))
    fails_with(capsys, lambda: train_main("torch")(["--source", str(shared_data / "gutenberg"), "--out",
                                                    str(tmp_path / "out")]),
               "interrupted before training", "rerun the same command", code=130)


# ----------------------------------------------------------------------------- bad input, refused up front
def test_unusable_out_dirs_are_refused_before_any_data_is_prepared(shared_data, tmp_path, monkeypatch, capsys):
    from nano_core import data_cache

    monkeypatch.setattr(data_cache, "prepare", lambda *a, **k: pytest.fail("data prepared before --out was checked"))
    monkeypatch.setenv("NANO_CACHE", str(tmp_path / "cache"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    src = ["--source", str(shared_data / "gutenberg")]
    for out, words in [(a_file, ("is a file",)), (a_file / "run", ("is a file",))]:
        fails_with(capsys, lambda: train_main("torch")(src + ["--out", str(out)]), *words)
    if os.geteuid() == 0:  # root writes through file modes: use a read-only file system instead
        readonly = Path("/sys/nano-test-run")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        readonly = tmp_path / "ro" / "run"
    fails_with(capsys, lambda: train_main("mlx")(src + ["--out", str(readonly)]), "is not writable")


@pytest.mark.parametrize("content, words", [("[1, 2]", ("holds a JSON list", "object of ModelConfig")),
                                            ('{"n_layer": 2,', ("is not valid JSON", "line 1"))])
def test_config_files_that_are_not_a_json_object_are_one_line_errors(content, words, shared_data, tmp_path,
                                                                     capsys):
    data, _ = micro_setup(shared_data)
    config = tmp_path / "model.json"
    config.write_text(content)
    args = train_args(data, config, tmp_path / "run", **{**QUICK, "max-steps": 1})
    msg = fails_with(capsys, lambda: train_main("torch")(args), *words)
    assert str(config) in msg


def test_vocab_sizes_that_cannot_work_are_refused_before_any_data(tmp_path, monkeypatch, capsys):
    from nano_core import data_cache

    monkeypatch.setattr(data_cache, "prepare", lambda *a, **k: pytest.fail("data prepared with an impossible vocab"))
    for vocab, words in (("0", ">= 257"), ("200", ">= 257"), (str(2**31 + 1), "at most 2**31")):
        fails_with(capsys, lambda: train_main("torch")(["--source", "builtin", "--vocab-size", vocab, "--out",
                                                        str(tmp_path / "run")]), "--vocab-size", words)


def test_a_val_split_shorter_than_one_window_is_found_before_training(backend, shared_data, tmp_path, capsys):
    data, config = micro_setup(shared_data)
    val_tokens = int(json.loads((data / "manifest.json").read_text())["shards"][0]["tokens"])
    out = tmp_path / "run"
    fails_with(capsys, lambda: train_main(backend)(train_args(data, config, out, **{
        **QUICK, "max-steps": 1, "seq-len": val_tokens + 10})), "val split")
    assert not metrics.read_metrics(out) and not ck.list_checkpoints(out)  # not one step was trained


def test_resuming_on_data_of_another_tokenizer_is_refused(backend, shared_data, tmp_path, capsys):
    from nano_core.prepare import prepare

    other = tmp_path / "other"
    prepare([str(shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl")], other, vocab_size=512,
            val_tokens=16384, progress=False, max_docs=120)  # other documents: another tokenizer, same vocab size
    ref = reference_run(backend, shared_data)
    fails_with(capsys, lambda: train_main(backend)(["--resume", str(ref / "ckpt_0000004"), "--data", str(other),
                                                    "--out", str(tmp_path / "resumed")]),
               "trained with tokenizer", "resume on the data it was trained on")


@pytest.mark.parametrize("flag, value, words", [("--temperature", "-1", "finite number >= 0"),
                                                ("--temperature", "nan", "finite number >= 0"),
                                                ("--temperature", "inf", "finite number >= 0"),
                                                ("--top-p", "0", "in (0, 1]"), ("--top-p", "1.5", "in (0, 1]"),
                                                ("--top-k", "-3", ">= 0"), ("--max-new-tokens", "-5", ">= 0")])
def test_generate_refuses_sampling_settings_that_mean_nothing(flag, value, words, backend, shared_data, capsys):
    run = reference_run(backend, shared_data)
    mod = __import__(f"nano_{backend}.generate", fromlist=["main"])
    fails_with(capsys, lambda: mod.main(["--ckpt", str(run), flag, value]), flag, words)


# ----------------------------------------------------------------------------- damaged files on resume
def test_a_truncated_newest_checkpoint_makes_resume_latest_fall_back_with_a_notice(backend, shared_data, tmp_path,
                                                                                  capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run(backend, shared_data), run)
    weights = run / "ckpt_0000008" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a kill in the middle of a copy
    mod = __import__(f"nano_{backend}.generate", fromlist=["main"])
    capsys.readouterr()
    mod.main(["--ckpt", str(run), "--max-new-tokens", "4"])  # generate on the run dir falls back too
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and f"{run / 'ckpt_0000004'}: step 4" in err
    train_main(backend)(["--resume", "latest", "--out", str(run), "--max-steps", "8"])
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "ckpt_0000008" in out and "resuming from" in out
    assert f"resuming from {run / 'ckpt_0000004'} at step 4" in out
    want = losses(reference_run(backend, shared_data))
    got = losses(run)
    assert all(got[s] == want[s] for s in range(5, 9))  # the same run again from the good checkpoint


def test_a_torn_last_metrics_line_is_dropped_with_a_notice_and_resume_proceeds(backend, shared_data, tmp_path,
                                                                              capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run(backend, shared_data), run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "train_lo')  # a kill in the middle of a write
    capsys.readouterr()
    train_main(backend)(["--resume", str(run / "ckpt_0000004"), "--out", str(run), "--max-steps", "6"])
    assert "torn last line" in capsys.readouterr().out
    assert sorted(losses(run)) == list(range(1, 7))


def test_what_a_second_signal_says_depends_on_the_rank_and_the_checkpoints(tmp_path):
    from nano_core.stopping import StoppedAtOnce

    assert StoppedAtOnce(tmp_path, 0, 1).message().endswith(
        "no checkpoint had been written yet: rerun the same command to start again")  # nothing to resume from
    assert StoppedAtOnce(tmp_path, 1, 2).message() == \
        "rank 1 of 2: interrupted again: stopped at once, without a new checkpoint"  # rank 0 speaks of checkpoints
