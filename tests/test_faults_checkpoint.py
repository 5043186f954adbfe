"""What a crash, a kill, a damaged file or a full disk can do to checkpoints and metrics.jsonl, and what nano does
about it: a damaged checkpoint fails to load with one line naming it; `latest` falls back past it with a notice;
temp dirs of killed saves are ignored and then removed; retention keeps good checkpoints; a torn metrics line is
dropped with a notice; a failed write leaves nothing behind and says, in one line, where and how to fix it.
Numpy weights only: no framework needed."""
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from safetensors import SafetensorError

from nano_core import checkpoint as ck
from nano_core.checkpoint import verify as ck_verify, write as ck_write
from nano_io import dirs
from nano_core import metrics


def state(seed=0):
    rng = np.random.default_rng(seed)
    weights = {"wte.weight": rng.standard_normal((64, 16)).astype(np.float32),
               "ln_f.weight": rng.standard_normal(16).astype(np.float32)}
    optim = {f"{k}.{m}": rng.standard_normal(v.shape).astype(np.float32)
             for k, v in weights.items() for m in ("exp_avg", "exp_avg_sq")}
    optim["step"] = 3
    return weights, optim


META = {"model_config": {"n_layer": 1}, "train_config": {"lr": 1e-3}, "loader_state": {"epoch": 0, "pos": 0}}


HINT = "; name the run dir instead to use its newest good checkpoint"  # a checkpoint named explicitly


def save(run, step, keep=10, **kw):
    return ck.save_checkpoint(run, step, *state(step), META, keep=keep, **kw)


def names(run):
    return sorted(p.name for p in run.iterdir())


def forget_hashes():
    """A later process (e.g. the resume after a crash) has hashed nothing yet. Within one process, a file changed
    in the same clock tick as it was hashed could otherwise hit the digest cache."""
    ck_verify._DIGESTS.clear()


def truncate(path, keep_bytes=None):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep_bytes is None else keep_bytes])
    forget_hashes()


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    forget_hashes()


DAMAGE = {
    "truncated model": (lambda c: truncate(c / "model.safetensors"),
                        r"model.safetensors is \d+ bytes, checksums.json records \d+ \(truncated or overwritten\)$"),
    "bit flip in model": (lambda c: flip_byte(c / "model.safetensors"),
                          r"model.safetensors does not match its sha256 in checksums.json \(damaged since it was "
                          r"written\)$"),
    "truncated optimizer": (lambda c: truncate(c / "optimizer.safetensors"),
                            r"optimizer.safetensors is \d+ bytes, checksums.json records \d+ "),
    "missing optimizer": (lambda c: (c / "optimizer.safetensors").unlink(), r"optimizer.safetensors is missing$"),
    "empty meta": (lambda c: (c / "meta.json").write_text("{}"),
                   r"meta.json lacks step, model_config, train_config, loader_state$"),
    "invalid JSON meta": (lambda c: truncate(c / "meta.json", 40),
                          r"meta.json is not valid JSON \(.*line \d+ column \d+.*\): truncated or damaged$"),
    "binary meta": (lambda c: (c / "meta.json").write_bytes(b"\xff\xfe\x00garbage"), r"meta.json is not text"),
    "list meta": (lambda c: (c / "meta.json").write_text("[]"), r"meta.json holds a list, not an object$"),
    "bad step": (lambda c: (c / "meta.json").write_text(json.dumps({**META, "step": "ten"})),
                 r"meta.json step is 'ten', not an integer$"),
    "missing meta": (lambda c: (c / "meta.json").unlink(), r"meta.json is missing$"),
    "missing model": (lambda c: (c / "model.safetensors").unlink(), r"model.safetensors is missing$"),
    "invalid checksums": (lambda c: truncate(c / "checksums.json", 5), r"checksums.json is not valid JSON \("),
    "damaged tokenizer copy": (lambda c: truncate(c / "tokenizer" / "tokenizer.json", 3),
                               r"tokenizer/tokenizer.json is 3 bytes, checksums.json records \d+ "),
}


@pytest.fixture
def tok(tmp_path):
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps({"vocab": list(range(50))}))
    return d


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_checkpoint_fails_to_load_with_one_line_naming_it(tmp_path, tok, damage):
    path = save(tmp_path / "run", 10, tokenizer_dir=tok)
    ck.load_checkpoint(path)  # fine before
    do, expected = DAMAGE[damage]
    do(path)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_checkpoint(path)
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in msg
    assert msg.startswith(f"checkpoint {path}: "), msg
    assert re.search(expected, msg.split(": ", 1)[1].removesuffix(HINT)), msg
    with pytest.raises(ck.CheckpointError):
        ck.verify_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncated model", "truncated optimizer", "empty meta", "invalid JSON meta"])
def test_checkpoint_without_checksums_loads_unverified_but_truncation_and_bad_meta_are_caught(tmp_path, damage):
    """Checkpoints written before checksums.json existed still load; their safetensors headers still catch a cut."""
    path = save(tmp_path / "run", 10)
    (path / "checksums.json").unlink()
    w, o, meta = ck.load_checkpoint(path)
    assert meta["step"] == 10 and np.array_equal(w["wte.weight"], state(10)[0]["wte.weight"]) and o["step"] == 3
    DAMAGE[damage][0](path)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_checkpoint(path)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"checkpoint {path}: ")


def test_latest_falls_back_past_damaged_checkpoints_with_a_notice_each(tmp_path):
    run = tmp_path / "run"
    for step in (10, 20, 30):
        save(run, step)
    truncate(run / "ckpt_0000030" / "model.safetensors")
    (run / "ckpt_0000020" / "meta.json").write_text("{}")
    notices = []
    assert ck.latest_checkpoint(run, notices) == run / "ckpt_0000010"
    assert len(notices) == 2 and all("\n" not in n for n in notices)
    assert notices[0].startswith(f"skipping checkpoint {run / 'ckpt_0000030'}: model.safetensors is ")
    assert notices[1] == f"skipping checkpoint {run / 'ckpt_0000020'}: meta.json lacks step, model_config, " \
                         f"train_config, loader_state"
    for spec, run_dir in (("latest", run), (run, None)):
        seen = []
        assert ck.resolve_checkpoint(spec, run_dir, notices=seen) == run / "ckpt_0000010"
        assert seen == notices
    seen = []
    assert ck.load_checkpoint(run, notices=seen.append)[2]["step"] == 10  # a callable works too (the loop's log)
    assert seen == notices
    # Named explicitly, a damaged checkpoint is an error (no silent substitution), with the way out in it.
    with pytest.raises(ck.CheckpointError, match="name the run dir instead") as e:
        ck.resolve_checkpoint(run / "ckpt_0000030")
    assert "\n" not in str(e.value)


def test_no_notice_list_prints_to_stderr(tmp_path, capsys):
    run = tmp_path / "run"
    save(run, 10)
    save(run, 20)
    (run / "ckpt_0000020" / "meta.json").write_text("not json")
    assert ck.resolve_checkpoint(run) == run / "ckpt_0000010"
    assert capsys.readouterr().err == f"skipping checkpoint {run / 'ckpt_0000020'}: meta.json is not valid JSON " \
                                      f"(Expecting value: line 1 column 1 (char 0)): truncated or damaged\n"


def test_when_no_checkpoint_verifies_resume_says_so(tmp_path):
    run = tmp_path / "run"
    save(run, 10)
    truncate(run / "ckpt_0000010" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .* verifies \(1 skipped as damaged\); drop "
                                                r"--resume to start fresh"):
        ck.resolve_checkpoint("latest", run, notices=[])
    with pytest.raises(FileNotFoundError, match=r"verifies \(1 skipped"):
        ck.load_checkpoint(run, notices=[])


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_orphaned_temp_dir_is_never_picked_and_the_next_save_removes_it(tmp_path):
    run = tmp_path / "run"
    good = save(run, 10)
    # A save killed after writing everything but before the rename: complete-looking, newer, and never published.
    orphan = run / f".tmp_ckpt_0000020_pid{dead_pid()}_x1y2"
    shutil.copytree(good, orphan)
    live = run / f".tmp_ckpt_0000020_pid{os.getppid()}_busy"  # another process's save in progress
    live.mkdir()
    old_style_recent, old_style_stale = run / ".tmp_ckpt_0000005_abc", run / ".tmp_ckpt_0000006_def"  # no pid
    old_style_recent.mkdir()
    old_style_stale.mkdir()
    hours_ago = time.time() - 2 * ck.ORPHAN_AGE_S
    os.utime(old_style_stale, (hours_ago, hours_ago))
    assert ck.orphaned_temp_dirs(run) == [old_style_stale, orphan]
    notices = []
    assert ck.latest_checkpoint(run, notices) == good
    assert notices == [f"ignoring {p}: left by an interrupted checkpoint save (the next save removes it)"
                       for p in (old_style_stale, orphan)]
    notices = []
    save(run, 30, notices=notices)
    assert notices == [f"removed {p}: left by an interrupted checkpoint save" for p in (old_style_stale, orphan)]
    assert names(run) == [old_style_recent.name, live.name, "ckpt_0000010", "ckpt_0000030"]


def test_resaving_a_step_replaces_it_and_leaves_nothing_else(tmp_path):
    run = tmp_path / "run"
    save(run, 10)
    path = ck.save_checkpoint(run, 10, *state(99), META)
    assert names(run) == ["ckpt_0000010"]
    assert np.array_equal(ck.load_checkpoint(path)[0]["wte.weight"], state(99)[0]["wte.weight"])


def test_retention_counts_only_verifying_checkpoints(tmp_path):
    run = tmp_path / "run"
    save(run, 10, keep=2)
    save(run, 20, keep=2)
    truncate(run / "ckpt_0000020" / "model.safetensors")
    save(run, 30, keep=2)  # good ones: 30 and 10; the damaged 20 is not one of the two, so 10 stays
    assert names(run) == ["ckpt_0000010", "ckpt_0000020", "ckpt_0000030"]
    save(run, 40, keep=2)  # good ones: 40 and 30; everything older goes, damaged or not
    assert names(run) == ["ckpt_0000030", "ckpt_0000040"]


def test_retention_with_fewer_good_checkpoints_than_keep_deletes_nothing(tmp_path):
    run = tmp_path / "run"
    for step in (10, 20, 30):
        save(run, step, keep=0)
    for step in (20, 30):
        (run / f"ckpt_{step:07d}" / "meta.json").write_text("{")
    save(run, 40, keep=3)  # good: 40, 10 -> fewer than 3, so nothing is deleted
    assert names(run) == ["ckpt_0000010", "ckpt_0000020", "ckpt_0000030", "ckpt_0000040"]
    assert ck.latest_checkpoint(run, []) == run / "ckpt_0000040"


# --- full disk, read-only file system, no permission -------------------------------------------------------------
def one_line_error(e, what, path, reason, fix):
    assert str(e) == f"could not write {what} {path}: {reason}; {fix}"
    assert isinstance(e, OSError) and e.filename == str(path) and e.strerror == reason


@pytest.mark.parametrize("where", ["model", "optimizer", "safetensors error", "checksums", "fsync", "mkdtemp"])
def test_checkpoint_write_failure_leaves_nothing_and_says_where_and_what_to_do(tmp_path, monkeypatch, where):
    run = tmp_path / "run"
    save(run, 10, keep=1)
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_save_file, calls = ck_write.save_file, []

    def save_file(arrays, filename):
        calls.append(filename)
        target = {"model": 1, "optimizer": 2, "safetensors error": 2}.get(where)
        if len(calls) == target:
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)  # a part of the file made it to disk before the disk filled up
            if where == "safetensors error":  # what safetensors really raises on a full disk
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            raise enospc
        real_save_file(arrays, filename)

    monkeypatch.setattr(ck_write, "save_file", save_file)
    if where == "checksums":
        monkeypatch.setattr(ck_write, "write_manifest", lambda ckpt: (_ for _ in ()).throw(enospc))
    if where == "fsync":
        monkeypatch.setattr(dirs, "sync_tree", lambda root: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    if where == "mkdtemp":
        monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: (_ for _ in ()).throw(
            OSError(errno.EROFS, os.strerror(errno.EROFS))))
    with pytest.raises(ck.WriteError) as e:
        save(run, 20, keep=1)
    final = run / "ckpt_0000020"
    if where == "fsync":
        one_line_error(e.value, "checkpoint", final, "I/O error", "fix that and --resume latest")
    elif where == "mkdtemp":
        one_line_error(e.value, "checkpoint", final, os.strerror(errno.EROFS),
                       "the file system is read-only: make it writable and --resume latest")
    else:
        one_line_error(e.value, "checkpoint", final, os.strerror(errno.ENOSPC), "free space and --resume latest")
        assert e.value.errno == errno.ENOSPC
    assert names(run) == ["ckpt_0000010"]  # no temp dir, no half ckpt_0000020, and retention never ran
    monkeypatch.undo()
    assert ck.latest_checkpoint(run, []) == run / "ckpt_0000010"


def test_write_error_names_the_fix_for_permissions(tmp_path):
    e = ck.WriteError("checkpoint", tmp_path / "ckpt_0000001", PermissionError(errno.EACCES, "Permission denied"))
    assert str(e) == f"could not write checkpoint {tmp_path / 'ckpt_0000001'}: Permission denied; fix the " \
                     f"permissions and --resume latest"


# --- metrics.jsonl -------------------------------------------------------------------------------------------------
def write_metrics(run, steps):
    log = metrics.MetricsLogger(run)
    for s in steps:
        log.log({"step": s, "train_loss": 1.0 / s})
    return log


def test_torn_last_metrics_line_is_dropped_with_a_notice_and_resume_truncation_works(tmp_path):
    log = write_metrics(tmp_path, range(1, 6))
    with open(log.path, "a") as f:
        f.write('{"step": 6, "train_lo')  # killed mid-write
    notices = []
    assert [r["step"] for r in metrics.read_metrics(tmp_path, notices)] == [1, 2, 3, 4, 5]
    assert notices == [f"{log.path}: dropped a torn last line (a write cut off by a kill or a crash)"]
    notices = []
    log.truncate_after(3, notices)
    assert notices == [f"{log.path}: dropped a torn last line (a write cut off by a kill or a crash)"]
    assert log.path.read_text() == "".join(json.dumps({"step": s, "train_loss": 1.0 / s}) + "\n" for s in (1, 2, 3))
    log.log({"step": 4, "train_loss": 0.25})
    assert [r["step"] for r in metrics.read_metrics(tmp_path, [])] == [1, 2, 3, 4]


def test_damaged_middle_metrics_line_is_dropped_naming_its_line(tmp_path):
    log = write_metrics(tmp_path, range(1, 5))
    lines = log.path.read_text().splitlines()
    lines[1] = "\0\0\0\0"  # what a crash can leave where a write never reached the disk
    lines.insert(3, '["not", "a", "record"]')
    log.path.write_text("\n".join(lines) + "\n")
    notices = []
    assert [r["step"] for r in metrics.read_metrics(tmp_path, notices)] == [1, 3, 4]
    assert notices == [f"{log.path}: dropped line 2, not a metrics record (damaged)",
                       f"{log.path}: dropped line 4, not a metrics record (damaged)"]
    log.truncate_after(100, notices := [])
    assert len(notices) == 2 and [r["step"] for r in metrics.read_metrics(tmp_path, [])] == [1, 3, 4]


def test_a_record_logged_after_a_torn_line_starts_its_own_line(tmp_path):
    log = write_metrics(tmp_path, [1])
    with open(log.path, "a") as f:
        f.write('{"step": 2, "tr')
    log.log({"step": 2, "train_loss": 0.5})  # e.g. a run that did not resume: never glue a record onto the tear
    notices = []
    assert [r["step"] for r in metrics.read_metrics(tmp_path, notices)] == [1, 2]
    assert notices == [f"{log.path}: dropped line 2, not a metrics record (damaged)"]


def test_metrics_write_failure_takes_back_the_half_line_and_says_what_to_do(tmp_path, monkeypatch):
    log = write_metrics(tmp_path, [1, 2])
    before = log.path.read_bytes()
    real_write, calls = os.write, []

    def write(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:7]))  # a short write: part of the line is on disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(metrics.os, "write", write)
    with pytest.raises(ck.WriteError) as e:
        log.log({"step": 3, "train_loss": 0.3})
    one_line_error(e.value, "metrics", log.path, os.strerror(errno.ENOSPC), "free space and --resume latest")
    assert log.path.read_bytes() == before


def test_metrics_truncation_failure_leaves_the_file_and_says_what_to_do(tmp_path, monkeypatch):
    log = write_metrics(tmp_path, [1, 2, 3])
    before = log.path.read_bytes()

    def atomic_write(path, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(metrics, "atomic_write", atomic_write)
    with pytest.raises(ck.WriteError) as e:
        log.truncate_after(1)
    one_line_error(e.value, "metrics", log.path, os.strerror(errno.EROFS),
                   "the file system is read-only: make it writable and --resume latest")
    assert log.path.read_bytes() == before
    log.truncate_after(3)  # nothing to drop: the file is not rewritten at all
