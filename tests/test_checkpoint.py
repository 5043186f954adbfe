"""Checkpoints: round trip, atomic write (a failed save leaves nothing behind; files are on disk before the
rename that publishes them, and the run dir after it), retention. Damaged checkpoints, full disks and torn metrics
lines: tests/test_faults_checkpoint.py."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from nano_core import checkpoint as ck


def state(seed=0):
    rng = np.random.default_rng(seed)
    weights = {"wte.weight": rng.standard_normal((16, 8)).astype(np.float32),
               "ln_f.weight": rng.standard_normal(8).astype(np.float32)}
    optim = {f"{k}.{m}": rng.standard_normal(v.shape).astype(np.float32)
             for k, v in weights.items() for m in ("exp_avg", "exp_avg_sq")}
    optim["step"] = 7
    return weights, optim


def meta(**extra):
    """The least meta.json a checkpoint may have: what a resume reads."""
    return {"model_config": {"n_layer": 1}, "train_config": {}, "loader_state": {"epoch": 0, "pos": 3}, **extra}


def test_round_trip_is_bit_exact_and_meta_has_code_version(tmp_path):
    weights, optim = state()
    path = ck.save_checkpoint(tmp_path, 5, weights, optim, meta(backend="torch"), keep=2)
    assert path.name == "ckpt_0000005"
    w2, o2, m2 = ck.load_checkpoint(path)
    assert set(w2) == set(weights) and all(np.array_equal(w2[k], weights[k]) for k in weights)
    assert all(np.array_equal(o2[k], optim[k]) for k in optim if k != "step") and o2["step"] == 7
    assert m2["step"] == 5 and m2["loader_state"] == {"epoch": 0, "pos": 3} and m2["backend"] == "torch"
    assert m2["code_version"]["package"]
    assert ck.load_checkpoint(tmp_path)[2]["step"] == 5  # a run dir resolves to its latest checkpoint


def test_retention_keeps_last_k_and_latest_is_newest(tmp_path):
    weights, optim = state()
    for step in (10, 20, 30, 40):
        ck.save_checkpoint(tmp_path, step, weights, optim, meta(), keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt_0000030", "ckpt_0000040"]
    assert ck.latest_checkpoint(tmp_path).name == "ckpt_0000040"
    assert ck.resolve_checkpoint("latest", tmp_path).name == "ckpt_0000040"


def test_failed_save_leaves_no_partial_checkpoint(tmp_path):
    weights, optim = state()
    ck.save_checkpoint(tmp_path, 1, weights, optim, meta(), keep=3)
    with pytest.raises(TypeError):  # meta that cannot be serialised fails after the safetensors were written
        ck.save_checkpoint(tmp_path, 2, weights, optim, meta(bad=object()), keep=3)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_0000001"]  # no temp dir, no ckpt_0000002
    assert ck.latest_checkpoint(tmp_path).name == "ckpt_0000001"


def test_dir_without_meta_is_not_a_checkpoint(tmp_path):
    (tmp_path / "ckpt_0000009").mkdir()  # e.g. a copy interrupted by hand
    notices = []
    assert ck.latest_checkpoint(tmp_path, notices) is None
    assert notices == [f"skipping checkpoint {tmp_path / 'ckpt_0000009'}: meta.json is missing"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.resolve_checkpoint("latest", tmp_path, notices=[])


def test_save_refuses_meta_a_resume_could_not_use(tmp_path):
    weights, optim = state()
    with pytest.raises(ValueError, match="lacks model_config, train_config, loader_state"):
        ck.save_checkpoint(tmp_path, 1, weights, optim, {})
    assert list(tmp_path.iterdir()) == []


def test_tokenizer_copied_into_checkpoint(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    weights, optim = state()
    path = ck.save_checkpoint(tmp_path / "run", 3, weights, optim, meta(), tokenizer_dir=tok)
    assert ck.checkpoint_tokenizer_dir(path) == path / "tokenizer"
    assert json.loads((path / "tokenizer" / "tokenizer.json").read_text()) == {}


def test_every_file_is_fsynced_before_the_rename_that_publishes_it_and_the_run_dir_after(tmp_path, monkeypatch):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    synced, published, events = set(), [], []  # files as (device, inode): portable, unlike a path from a descriptor
    real_fsync, real_replace = os.fsync, os.replace
    run = tmp_path / "run"

    def fsync(fd):
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        events.append(("fsync", (st.st_dev, st.st_ino)))
        real_fsync(fd)

    def replace(src, dst):
        published.append({(p.stat().st_dev, p.stat().st_ino) for p in Path(src).rglob("*") if p.is_file()})
        events.append(("replace", dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    weights, optim = state()
    ck.save_checkpoint(run, 1, weights, optim, meta(), tokenizer_dir=tok)
    assert len(published) == 1 and len(published[0]) == 5  # model, optimizer, meta, checksums, tokenizer file
    assert published[0] <= synced
    run_id = (run.stat().st_dev, run.stat().st_ino)  # the run dir's entry for the rename is flushed after it
    assert ("fsync", run_id) in events[events.index(("replace", run / "ckpt_0000001")):]
