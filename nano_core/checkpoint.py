"""Checkpoints that both backends read and write: safetensors (numpy) + a JSON meta file, written atomically and
verified on read.

A checkpoint is a directory `ckpt_{step:07d}/` inside the run directory:
  model.safetensors      weights under the canonical names of nano_core.init (float32)
  optimizer.safetensors  AdamW moments as `{param}.exp_avg` / `{param}.exp_avg_sq`
  meta.json              model config, train config, step, tokens seen, loader state, RNG state, metrics,
                         code version, backend; non-array optimizer entries (its step count) under "optimizer"
  tokenizer/             a copy of the tokenizer the data was encoded with, so the checkpoint stands alone
  checksums.json         size and sha256 of every other file, so a truncated or damaged file is caught on read
                         (meta.json is unchanged by it: older code reads a new checkpoint and ignores this file)

Writing: everything goes into a hidden temp directory `.tmp_ckpt_{step}_pid{pid}_*` in the run dir, is flushed to
disk (fsync), and the directory is renamed into place (and the run dir fsynced, so the rename itself survives a
power cut). A crash mid-write never publishes a half checkpoint; the temp dir it leaves is ignored by
`latest_checkpoint` and removed by the next save in that run dir once its writer is gone. A write that fails
(full disk, read-only file system, permissions) removes the temp dir and raises WriteError: one line naming the
path and the fix. Old checkpoints are deleted only after the new one is published, and only verifying ones count
toward `keep`, so retention never deletes the last good checkpoint.

Reading: `verify_checkpoint` checks meta.json (valid JSON holding what a resume needs) and every file against
checksums.json (sizes first, then sha256, which costs time on large checkpoints: each file is hashed once per
process). Checkpoints written before checksums.json existed load unverified, but their safetensors headers are
checked against the file sizes (which catches truncation). A bad checkpoint raises CheckpointError, one line;
`latest_checkpoint` / `resolve_checkpoint` of a run dir skip bad ones, newest first, with one notice per skip.
Every path read from a checkpoint stays inside it: checksums.json's names, the fixed file names and the entries of
tokenizer/ must resolve (symlinks followed) under the checkpoint dir, or it is refused; meta.json's tokenizer_dir
is never followed (a checkpoint without its own tokenizer/ is refused, saying how to give it one).

Notices: functions that may skip or remove something take `notices`: a list (notices are appended), a callable
(called with each one-line notice, e.g. the loop's `log`), or None (printed to stderr).
"""
from __future__ import annotations

import errno as errno_codes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from tokenizer.files import follow_umask, sync_fd

CKPT_RE = re.compile(r"^ckpt_(\d{7,})$")
TMP_PREFIX = ".tmp_ckpt_"
TMP_RE = re.compile(r"^\.tmp_ckpt_\d+_(?:pid(\d+)_)?")  # older code wrote no pid
MODEL_FILE, OPTIM_FILE, META_FILE, TOKENIZER_DIR = "model.safetensors", "optimizer.safetensors", "meta.json", "tokenizer"
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
    """Checkpoint directories in `run_dir` (verified or not), oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


# --- writing ------------------------------------------------------------------------------------------------------
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
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{step:07d}_pid{os.getpid()}_", dir=run_dir))
    except OSError as e:
        raise WriteError("checkpoint", final, e) from e
    try:
        weights = {k: np.ascontiguousarray(v) for k, v in model_weights.items()}
        _save_safetensors(weights, tmp / MODEL_FILE)
        arrays, scalars = _split_optim_state(optim_state)
        _save_safetensors(arrays, tmp / OPTIM_FILE)
        meta = {**meta, "step": int(step), "optimizer": {**meta.get("optimizer", {}), **scalars}}
        meta.setdefault("code_version", code_version())
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER_DIR)
        _write_manifest(tmp)
        follow_umask(tmp)  # mkdtemp made the directory 0700: a published checkpoint has the user's usual modes
        _fsync_tree(tmp)  # the rename below must never publish files whose bytes are still in flight
        _publish(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError("checkpoint", final, e) from e
        raise
    if keep and keep > 0:
        _retain(run_dir, keep)
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


def _publish(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final` and fsync the run dir. Re-saving a step (Ctrl-C right after a periodic save)
    moves the old copy aside first and deletes it only once the new one is in place."""
    old = None
    if final.exists():
        old = final.with_name(f"{TMP_PREFIX}{final.name[5:]}_pid{os.getpid()}_replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    _fsync_dir(final.parent)  # the rename is durable only once the directory entry is on disk
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_manifest(ckpt: Path) -> None:
    files = {}
    for f in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        rel = f.relative_to(ckpt).as_posix()
        if rel != MANIFEST_FILE:
            files[rel] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    (ckpt / MANIFEST_FILE).write_text(json.dumps({"format": 1, "algorithm": "sha256", "files": files}, indent=1))


def _retain(run_dir: Path, keep: int) -> None:
    """Delete every checkpoint older than the `keep`-th newest one that verifies (corrupt ones do not count, so
    good ones are kept in their place); with fewer than `keep` good ones, delete nothing."""
    ckpts, good = list_checkpoints(run_dir), 0
    for i in range(len(ckpts) - 1, -1, -1):
        try:
            verify_checkpoint(ckpts[i])
        except CheckpointError:
            continue
        good += 1
        if good == keep:
            for old in ckpts[:i]:
                shutil.rmtree(old, ignore_errors=True)
            return


def orphaned_temp_dirs(run_dir) -> list[Path]:
    """Temp dirs in `run_dir` left by saves that were killed: their writer process is gone (or, where that
    cannot be asked, nothing in them changed for ORPHAN_AGE_S). A save in progress is never listed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    out = []
    for p in sorted(run_dir.iterdir()):
        m = TMP_RE.match(p.name)
        if m is None or not p.is_dir():
            continue
        alive = _pid_alive(int(m.group(1))) if m.group(1) else None
        if alive is False or (alive is None and time.time() - _newest_mtime(p) > ORPHAN_AGE_S):
            out.append(p)
    return out


def remove_orphans(run_dir, notices=None) -> list[Path]:
    """Delete the orphaned temp dirs of `run_dir` (one notice each); returns them."""
    gone = orphaned_temp_dirs(run_dir)
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
        emit(notices, f"removed {p}: left by an interrupted checkpoint save")
    return gone


def _pid_alive(pid: int) -> bool | None:
    if pid == os.getpid():
        return False  # this process saves one checkpoint at a time: a temp dir of ours is a leftover
    if os.name == "nt":
        return None  # os.kill(pid, 0) would send Ctrl-C there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError:
        return None
    return True


def _newest_mtime(root: Path) -> float:
    newest = 0.0
    for dirpath, _, filenames in os.walk(root):
        for name in [dirpath] + [os.path.join(dirpath, f) for f in filenames]:
            try:
                newest = max(newest, os.stat(name).st_mtime)
            except OSError:
                pass
    return newest


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root` (and, where the OS allows, the directories' entries) to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                sync_fd(f.fileno())
        _fsync_dir(dirpath)


def _fsync_dir(path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its renames do not need this
        return
    try:
        sync_fd(fd)
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


# --- verifying ----------------------------------------------------------------------------------------------------
_DIGESTS: dict[tuple, str] = {}  # (device, inode, size, mtime_ns) -> sha256: each file is hashed once per process


def _sha256(path: Path) -> str:
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 23):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _inside(ckpt: Path, rel, what: str) -> Path:
    """ckpt/rel once it is checked to stay inside the checkpoint: `rel` a relative path whose resolved location
    (symlinks followed) is the checkpoint dir or under it. A checkpoint is a directory anyone may hand over, and
    a name in it such as "../../etc/hostname", or a symlink out of it, would make nano open files elsewhere: such
    a checkpoint is refused (CheckpointError). `what` says where the name came from, for the message."""
    if not isinstance(rel, str) or not rel or "\0" in rel or Path(rel).is_absolute():
        raise CheckpointError(ckpt, f"{what} {rel!r} is not a relative path inside the checkpoint; refused "
                                    f"(a crafted or damaged checkpoint)")
    root, target = ckpt.resolve(), (ckpt / rel).resolve()
    if target != root and root not in target.parents:
        raise CheckpointError(ckpt, f"{what} {rel} leads outside the checkpoint (to {target}); refused (a "
                                    f"crafted or damaged checkpoint)")
    return ckpt / rel


def _check_contained(ckpt: Path) -> None:
    """Every fixed name of a checkpoint, and every entry of its tokenizer/ (the tokenizer loader reads them), stays
    inside it: a symlink out of it refuses the checkpoint."""
    for name in (META_FILE, MANIFEST_FILE, MODEL_FILE, OPTIM_FILE, TOKENIZER_DIR):
        if os.path.lexists(ckpt / name):
            _inside(ckpt, name, name)
    if (ckpt / TOKENIZER_DIR).is_dir():
        for dirpath, dirnames, filenames in os.walk(ckpt / TOKENIZER_DIR):  # symlinked dirs are listed, not entered
            for name in dirnames + filenames:
                rel = Path(dirpath, name).relative_to(ckpt).as_posix()
                _inside(ckpt, rel, rel)


def _read_json(ckpt: Path, name: str):
    _inside(ckpt, name, name)
    try:
        return json.loads((ckpt / name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(ckpt, f"{name} is missing") from None
    except UnicodeDecodeError:
        raise CheckpointError(ckpt, f"{name} is not text (overwritten or damaged)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(ckpt, f"{name} is not valid JSON ({e}): truncated or damaged") from None
    except OSError as e:
        raise CheckpointError(ckpt, f"{name} cannot be read: {e.strerror or e}") from None


def read_meta(path) -> dict:
    """meta.json of checkpoint `path`, checked to hold what a resume needs; CheckpointError (one line) if not.
    Reads only meta.json: use verify_checkpoint to check the whole checkpoint."""
    path = Path(path)
    meta = _read_json(path, META_FILE)
    if not isinstance(meta, dict):
        raise CheckpointError(path, f"{META_FILE} holds a {type(meta).__name__}, not an object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(path, f"{META_FILE} lacks {', '.join(missing)}")
    if not isinstance(meta["step"], int) or isinstance(meta["step"], bool):
        raise CheckpointError(path, f"{META_FILE} step is {meta['step']!r}, not an integer")
    for key in ("model_config", "train_config", "loader_state"):
        if not isinstance(meta[key], dict):
            raise CheckpointError(path, f"{META_FILE} {key} is not an object")
    return meta


def verify_checkpoint(path) -> dict:
    """Check checkpoint `path` and return its meta; CheckpointError (one line naming it and the problem) if bad.

    With checksums.json: every file it lists is present with its size (all sizes first: cheap) and its sha256.
    Without it (written before checksums existed): model.safetensors (and optimizer.safetensors if present) have
    headers that describe exactly their file size."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(path, "is not a directory")
    _check_contained(path)
    manifest = _read_json(path, MANIFEST_FILE) if os.path.lexists(path / MANIFEST_FILE) else None
    meta = read_meta(path)
    if manifest is None:
        for name in (MODEL_FILE, OPTIM_FILE):
            if name == MODEL_FILE or (path / name).exists():
                problem = _safetensors_problem(path / name)
                if problem:
                    raise CheckpointError(path, f"{name} {problem}")
        return meta
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("algorithm") != "sha256" or MODEL_FILE not in files:
        raise CheckpointError(path, f"{MANIFEST_FILE} is not a checksum list this version reads")
    for rel, want in files.items():  # every name checked before any file is opened
        _inside(path, rel, f"{MANIFEST_FILE} names")
        if not isinstance(want, dict):
            raise CheckpointError(path, f"{MANIFEST_FILE} is not a checksum list this version reads")
    try:
        for rel, want in files.items():
            f = path / rel
            if not f.is_file():
                raise CheckpointError(path, f"{rel} is missing")
            size = f.stat().st_size
            if size != want.get("size"):
                raise CheckpointError(path, f"{rel} is {size} bytes, {MANIFEST_FILE} records {want.get('size')} "
                                            f"(truncated or overwritten)")
        for rel, want in files.items():
            if _sha256(path / rel) != want.get("sha256"):
                raise CheckpointError(path, f"{rel} does not match its sha256 in {MANIFEST_FILE} (damaged since "
                                            f"it was written)")
    except OSError as e:
        raise CheckpointError(path, f"cannot be read: {e.strerror or e}") from None
    return meta


def _safetensors_problem(f: Path) -> str | None:
    """Why `f` is not a whole safetensors file (missing, truncated, garbled header), or None."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or 8 + n > size:
                return f"is {size} bytes, shorter than its header (truncated)"
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "has no valid safetensors header (overwritten or damaged)"
    if 8 + n + end != size:
        return f"is {size} bytes, its header describes {8 + n + end} (truncated or damaged)"
    return None


# --- finding and loading ------------------------------------------------------------------------------------------
def latest_checkpoint(run_dir, notices=None) -> Path | None:
    """The newest checkpoint in `run_dir` that verifies, or None. Each newer one that does not is skipped with a
    notice `skipping checkpoint PATH: what is wrong`; temp dirs of interrupted saves are ignored with a notice."""
    for orphan in orphaned_temp_dirs(run_dir):
        emit(notices, f"ignoring {orphan}: left by an interrupted checkpoint save (the next save removes it)")
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            emit(notices, f"skipping {e}")
    return None


def _looks_like_checkpoint(path: Path) -> bool:
    return bool(CKPT_RE.match(path.name)) or any((path / n).exists() for n in (META_FILE, MODEL_FILE,
                                                                               MANIFEST_FILE))


def resolve_checkpoint(spec, run_dir=None, notices=None) -> Path:
    """A verified checkpoint dir from `spec`: a checkpoint dir (CheckpointError if it does not verify), a run dir
    or "latest" (in `run_dir`): its newest checkpoint that verifies, skipping bad ones with a notice each."""
    if spec == "latest":
        if run_dir is None:
            raise ValueError("--resume latest needs --out RUN_DIR to look in")
        where = Path(run_dir)
    else:
        where = Path(spec)
        if not where.exists():
            raise FileNotFoundError(f"{where} does not exist")
        if _looks_like_checkpoint(where):
            try:
                verify_checkpoint(where)
            except CheckpointError as e:
                raise CheckpointError(e.path, f"{e.reason}; name the run dir instead to use its newest good "
                                              f"checkpoint") from None
            return where
    skipped = []
    found = latest_checkpoint(where, lambda msg: (skipped.append(msg), emit(notices, msg)))
    if found is not None:
        return found
    bad = sum(m.startswith("skipping") for m in skipped)
    if spec == "latest":
        if bad:
            raise FileNotFoundError(f"no checkpoint in {where} verifies ({bad} skipped as damaged); drop --resume "
                                    f"to start fresh")
        raise FileNotFoundError(f"no checkpoint in {where} to resume from; drop --resume to start fresh")
    if bad:
        raise FileNotFoundError(f"no checkpoint in {where} verifies ({bad} skipped as damaged)")
    raise FileNotFoundError(f"{where} is neither a checkpoint directory nor a run dir holding one")


def load_checkpoint(path, notices=None) -> tuple[dict, dict, dict]:
    """(weights, optim_state, meta): numpy dicts under canonical names; optim_state also holds the scalars.
    `path` goes through resolve_checkpoint (so it is verified first); CheckpointError (a ValueError, one line)
    if it cannot be used."""
    path = resolve_checkpoint(path, notices=notices)
    meta = read_meta(path)
    try:  # resolve_checkpoint verified that both names stay inside the checkpoint
        weights = load_file(str(path / MODEL_FILE))
        optim_state = load_file(str(path / OPTIM_FILE)) if (path / OPTIM_FILE).is_file() else {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(path, f"cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    optim_state.update(meta.get("optimizer", {}))
    meta["path"] = str(path)
    return weights, optim_state, meta


def checkpoint_tokenizer_dir(path) -> Path:
    """Where the tokenizer of a checkpoint lives: its own copy, tokenizer/ (checked to stay inside it, symlinks
    included). meta.json's `tokenizer_dir` (the data's tokenizer when it was trained) is never followed: it is a
    path out of the checkpoint that anyone who hands one over could point anywhere. A checkpoint without its own
    copy is refused in one line that says how to give it one."""
    path = Path(path)
    _check_contained(path)
    if (path / TOKENIZER_DIR).is_dir():
        return path / TOKENIZER_DIR
    recorded = read_meta(path).get("tokenizer_dir")
    also = f" (meta.json names {recorded}, outside it, which nano does not read)" if recorded else ""
    raise CheckpointError(path, f"carries no {TOKENIZER_DIR}/{also}; copy the tokenizer/ directory of the data it "
                                f"was trained on into it")
