"""Writing a checkpoint: safetensors + meta.json + a tokenizer copy + checksums.json, published atomically.

Everything goes into a hidden temp directory in the run dir, is flushed to disk and renamed into place by
nano_io.dirs.atomic_dir (the run dir is flushed too, so the rename survives a power cut). A crash mid-write never
publishes a half checkpoint. A write that fails (full disk, read-only file system, permissions) removes the temp
dir and raises WriteError: one line naming the path and the fix.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import save_file

from nano_core.checkpoint.layout import (MANIFEST_FILE, META_FILE, MODEL_FILE, OPTIM_FILE, REQUIRED_META, TMP_PREFIX,
                                         TOKENIZER_DIR, WriteError, code_version)
from nano_core.checkpoint.retain import remove_orphans, retain
from nano_core.checkpoint.verify import file_sha256
from nano_io.dirs import atomic_dir


def save_checkpoint(run_dir, step: int, model_weights: dict, optim_state: dict, meta: dict, keep: int = 3,
                    tokenizer_dir=None, notices=None) -> Path:
    """Write `run_dir/ckpt_{step:07d}` atomically, then keep only the newest `keep` checkpoints that verify.

    `meta` must hold model_config, train_config and loader_state (ValueError otherwise: a checkpoint that could
    not be resumed is a bug in the caller). Temp dirs of interrupted saves are removed first (one notice each). An
    OSError while writing (ENOSPC, EROFS, EACCES, ...) removes the temp dir and raises WriteError."""
    missing = [k for k in REQUIRED_META if k != "step" and k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {', '.join(missing)}")
    run_dir = Path(run_dir)
    final = run_dir / f"ckpt_{step:07d}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_orphans(run_dir, notices)  # before writing: an orphan may hold the space this save needs
        aside = run_dir / f"{TMP_PREFIX}{step:07d}_pid{os.getpid()}_replaced"  # a re-save of this step (Ctrl-C
        # right after a periodic save) moves the old copy here until the new one is in place
        with atomic_dir(final, prefix=f"{TMP_PREFIX}{step:07d}_pid{os.getpid()}_", aside=aside) as tmp:
            weights = {k: np.ascontiguousarray(v) for k, v in model_weights.items()}
            _save_safetensors(weights, tmp / MODEL_FILE)
            arrays, scalars = _split_optim_state(optim_state)
            _save_safetensors(arrays, tmp / OPTIM_FILE)
            meta = {**meta, "step": int(step), "optimizer": {**meta.get("optimizer", {}), **scalars}}
            meta.setdefault("code_version", code_version())
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
            if tokenizer_dir is not None:
                shutil.copytree(tokenizer_dir, tmp / TOKENIZER_DIR)
            write_manifest(tmp)
    except WriteError:
        raise
    except OSError as e:
        raise WriteError("checkpoint", final, e) from e
    if keep and keep > 0:
        retain(run_dir, keep)
    return final


def _save_safetensors(arrays: dict, path: Path) -> None:
    """safetensors' save_file, its I/O failures raised as the OSError they are (it reports them as
    SafetensorError "... (os error 28)")."""
    try:
        save_file(arrays, str(path))
    except SafetensorError as e:
        m = re.search(r"os error (\d+)", str(e))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from e


def write_manifest(ckpt: Path) -> None:
    """checksums.json: size and sha256 of every other file under `ckpt`."""
    files = {}
    for f in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        rel = f.relative_to(ckpt).as_posix()
        if rel != MANIFEST_FILE:
            files[rel] = {"size": f.stat().st_size, "sha256": file_sha256(f)}
    (ckpt / MANIFEST_FILE).write_text(json.dumps({"format": 1, "algorithm": "sha256", "files": files}, indent=1))


def _json_default(o):
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in checkpoint meta.json")


def _split_optim_state(optim_state: dict) -> tuple[dict, dict]:
    """Arrays go to safetensors; scalars (the step count, ...) go to meta.json."""
    arrays, scalars = {}, {}
    for k, v in (optim_state or {}).items():
        if isinstance(v, np.ndarray) and v.ndim > 0:
            arrays[k] = np.ascontiguousarray(v)
        else:
            scalars[k] = v.item() if isinstance(v, (np.ndarray, np.generic)) else v
    return arrays, scalars
