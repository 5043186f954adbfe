"""Checkpoints that both backends read and write: safetensors (numpy) + a JSON meta file, written atomically.

A checkpoint is a directory `ckpt_{step:07d}/` inside the run directory:
  model.safetensors      weights under the canonical names of nano_core.init (float32)
  optimizer.safetensors  AdamW moments as `{param}.exp_avg` / `{param}.exp_avg_sq`
  meta.json              model config, train config, step, tokens seen, loader state, RNG state, metrics,
                         code version, backend; non-array optimizer entries (its step count) under "optimizer"
  tokenizer/             a copy of the tokenizer the data was encoded with, so the checkpoint stands alone

Everything is written into a hidden temp directory in the run dir, flushed to disk (fsync), and then the directory
is renamed into place, so a crash (or a Ctrl-C) mid-write never leaves a half checkpoint that `latest_checkpoint`
would pick up. Only the last `keep` checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

CKPT_RE = re.compile(r"^ckpt_(\d{7,})$")
MODEL_FILE, OPTIM_FILE, META_FILE, TOKENIZER_DIR = "model.safetensors", "optimizer.safetensors", "meta.json", "tokenizer"


def code_version() -> dict:
    """Package version and, when run from a git checkout, the commit (plus whether the tree had local edits)."""
    try:
        pkg = version("nano")
    except PackageNotFoundError:
        pkg = "unknown"
    out = {"package": pkg, "git_sha": None, "git_dirty": None}
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            out["git_sha"] = sha.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                   capture_output=True, text=True, timeout=5)
            out["git_dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass  # no git binary or not a checkout: the package version alone has to do
    return out


def _split_optim_state(optim_state: dict) -> tuple[dict, dict]:
    """Arrays go to safetensors; scalars (the step count, ...) go to meta.json."""
    arrays, scalars = {}, {}
    for k, v in (optim_state or {}).items():
        if isinstance(v, np.ndarray) and v.ndim > 0:
            arrays[k] = np.ascontiguousarray(v)
        else:
            scalars[k] = v.item() if isinstance(v, (np.ndarray, np.generic)) else v
    return arrays, scalars


def list_checkpoints(run_dir) -> list[Path]:
    """Checkpoint directories in `run_dir`, oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir, step: int, model_weights: dict, optim_state: dict, meta: dict, keep: int = 3,
                    tokenizer_dir=None) -> Path:
    """Write `run_dir/ckpt_{step:07d}` atomically and delete all but the newest `keep` checkpoints."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"ckpt_{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_ckpt_{step:07d}_", dir=run_dir))
    try:
        weights = {k: np.ascontiguousarray(v) for k, v in model_weights.items()}
        save_file(weights, str(tmp / MODEL_FILE))
        arrays, scalars = _split_optim_state(optim_state)
        save_file(arrays, str(tmp / OPTIM_FILE))
        meta = {**meta, "step": int(step), "optimizer": {**meta.get("optimizer", {}), **scalars}}
        meta.setdefault("code_version", code_version())
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER_DIR)
        _fsync_tree(tmp)  # the rename below must never publish files whose bytes are still in flight
        if final.exists():  # re-saving the same step (e.g. Ctrl-C right after a periodic save): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep and keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root` (and, where the OS allows, the directories' entries) to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(dirpath)


def _fsync_dir(path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its renames do not need this
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(o):
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in checkpoint meta.json")


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint in `run_dir`, or None."""
    done = [p for p in list_checkpoints(run_dir) if (p / META_FILE).is_file()]
    return done[-1] if done else None


def resolve_checkpoint(spec, run_dir=None) -> Path:
    """`spec` is a checkpoint dir, a run dir (its latest checkpoint is taken) or "latest" (in `run_dir`)."""
    if spec == "latest":
        if run_dir is None:
            raise ValueError("--resume latest needs --out RUN_DIR to look in")
        found = latest_checkpoint(run_dir)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {run_dir} to resume from; drop --resume to start fresh")
        return found
    path = Path(spec)
    if (path / META_FILE).is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint directory nor a run dir holding one")
    return found


def load_checkpoint(path) -> tuple[dict, dict, dict]:
    """(weights, optim_state, meta): numpy dicts under canonical names; optim_state also holds the scalars."""
    path = resolve_checkpoint(path)
    meta = json.loads((path / META_FILE).read_text())
    weights = load_file(str(path / MODEL_FILE))
    optim_state = load_file(str(path / OPTIM_FILE)) if (path / OPTIM_FILE).is_file() else {}
    optim_state.update(meta.get("optimizer", {}))
    meta["path"] = str(path)
    return weights, optim_state, meta


def checkpoint_tokenizer_dir(path) -> Path:
    """Where the tokenizer of a checkpoint lives: its own copy, else the data dir recorded at training time."""
    path = Path(path)
    if (path / TOKENIZER_DIR).is_dir():
        return path / TOKENIZER_DIR
    meta = json.loads((path / META_FILE).read_text())
    recorded = meta.get("tokenizer_dir")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    raise FileNotFoundError(f"checkpoint {path} carries no tokenizer/ and the recorded one ({recorded}) is gone")
