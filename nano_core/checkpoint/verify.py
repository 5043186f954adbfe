"""Reading a checkpoint safely: meta.json checked for what a resume needs, every file against checksums.json.

`verify_checkpoint` checks meta.json (valid JSON holding what a resume needs) and every file against
checksums.json (sizes first, then sha256, which costs time on large checkpoints: each file is hashed once per
process). Checkpoints written before checksums.json existed load unverified, but their safetensors headers are
checked against the file sizes (which catches truncation). A bad checkpoint raises CheckpointError, one line.
Every path read from a checkpoint stays inside it: checksums.json's names, the fixed file names and the entries of
tokenizer/ must resolve (symlinks followed) under the checkpoint dir, or it is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from nano_core.checkpoint.layout import (MANIFEST_FILE, META_FILE, MODEL_FILE, OPTIM_FILE, REQUIRED_META,
                                         TOKENIZER_DIR, CheckpointError)

_DIGESTS: dict[tuple, str] = {}  # (device, inode, size, mtime_ns) -> sha256: each file is hashed once per process


def file_sha256(path: Path) -> str:
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 23):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def inside(ckpt: Path, rel, what: str) -> Path:
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


def check_contained(ckpt: Path) -> None:
    """Every fixed name of a checkpoint, and every entry of its tokenizer/ (the tokenizer loader reads them), stays
    inside it: a symlink out of it refuses the checkpoint."""
    for name in (META_FILE, MANIFEST_FILE, MODEL_FILE, OPTIM_FILE, TOKENIZER_DIR):
        if os.path.lexists(ckpt / name):
            inside(ckpt, name, name)
    if (ckpt / TOKENIZER_DIR).is_dir():
        for dirpath, dirnames, filenames in os.walk(ckpt / TOKENIZER_DIR):  # symlinked dirs are listed, not entered
            for name in dirnames + filenames:
                rel = Path(dirpath, name).relative_to(ckpt).as_posix()
                inside(ckpt, rel, rel)


def _read_json(ckpt: Path, name: str):
    inside(ckpt, name, name)
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
    check_contained(path)
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
        inside(path, rel, f"{MANIFEST_FILE} names")
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
            if file_sha256(path / rel) != want.get("sha256"):
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
