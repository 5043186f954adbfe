"""A checkpoint's layout on disk, its errors, and the names every other checkpoint module shares.

A checkpoint is a directory `ckpt_{step:07d}/` inside the run directory:
  model.safetensors      weights under the canonical names of nano_core.init (float32)
  optimizer.safetensors  AdamW moments as `{param}.exp_avg` / `{param}.exp_avg_sq`
  meta.json              model config, train config, step, tokens seen, loader state, RNG state, metrics,
                         code version, backend; non-array optimizer entries (its step count) under "optimizer"
  tokenizer/             a copy of the tokenizer the data was encoded with, so the checkpoint stands alone
  checksums.json         size and sha256 of every other file, so a truncated or damaged file is caught on read
                         (meta.json is unchanged by it: older code reads a new checkpoint and ignores this file)
A save in progress is a hidden temp directory `.tmp_ckpt_{step}_pid{pid}_*` in the run dir (TMP_RE).

Notices: functions that may skip or remove something take `notices`: a list (notices are appended), a callable
(called with each one-line notice, e.g. the loop's `log`), or None (printed to stderr).
"""
from __future__ import annotations

import errno as errno_codes
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CKPT_RE = re.compile(r"^ckpt_(\d{7,})$")
TMP_PREFIX = ".tmp_ckpt_"
TMP_RE = re.compile(r"^\.tmp_ckpt_\d+_(?:pid(\d+)_)?")  # older code wrote no pid
MODEL_FILE, OPTIM_FILE = "model.safetensors", "optimizer.safetensors"
META_FILE, TOKENIZER_DIR = "meta.json", "tokenizer"
MANIFEST_FILE = "checksums.json"
REQUIRED_META = ("step", "model_config", "train_config", "loader_state")  # what a resume (and generate) reads
ORPHAN_AGE_S = 3600  # a temp dir whose writer cannot be asked (no pid, or Windows) is an orphan after this long


class CheckpointError(ValueError):
    """A checkpoint that cannot be used. str(): `checkpoint PATH: what is wrong` (one line)."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"checkpoint {path}: {reason}")


_FIXES = {errno_codes.ENOSPC: "free space and --resume latest",
          errno_codes.EROFS: "the file system is read-only: make it writable and --resume latest",
          errno_codes.EACCES: "fix the permissions and --resume latest",
          errno_codes.EPERM: "fix the permissions and --resume latest"}
if hasattr(errno_codes, "EDQUOT"):
    _FIXES[errno_codes.EDQUOT] = "free space (disk quota exceeded) and --resume latest"


class WriteError(OSError):
    """A checkpoint or metrics write that failed (full disk, read-only file system, no permission).

    An OSError with errno, strerror and filename (the checkpoint dir or metrics file, never a temp name) of the
    failure; str() is one line naming the path and the fix, e.g. `could not write checkpoint runs/x/ckpt_0000300:
    No space left on device; free space and --resume latest`."""

    def __init__(self, what: str, path, cause: OSError):
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(cause.errno, reason, str(path))
        fix = _FIXES.get(cause.errno, "fix that and --resume latest")
        self.message = f"could not write {what} {path}: {reason}; {fix}".replace("\n", " ")

    def __str__(self) -> str:
        return self.message


def emit(notices, message: str) -> None:
    """Hand one notice to `notices`: a list (appended), a callable (called) or None (printed to stderr)."""
    if notices is None:
        print(message, file=sys.stderr)
    elif callable(notices):
        notices(message)
    else:
        notices.append(message)


def code_version() -> dict:
    """Package version and, when run from a git checkout, the commit (plus whether the tree had local edits)."""
    try:
        pkg = version("nano-train")
    except PackageNotFoundError:
        pkg = "unknown"
    out = {"package": pkg, "git_sha": None, "git_dirty": None}
    repo = Path(__file__).resolve().parents[2]
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


def list_checkpoints(run_dir) -> list[Path]:
    """Checkpoint directories in `run_dir` (verified or not), oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]
