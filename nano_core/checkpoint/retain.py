"""What a run dir keeps: the newest `keep` checkpoints that verify, and no temp dirs of saves that were killed.

A crash mid-save leaves a temp dir; `latest_checkpoint` ignores it (with a notice) and the next save in that run
dir removes it once its writer is gone. Old checkpoints are deleted only after a new one is published, and only
verifying ones count toward `keep`, so retention never deletes the last good checkpoint.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from nano_core.checkpoint.layout import ORPHAN_AGE_S, TMP_RE, CheckpointError, emit, list_checkpoints
from nano_core.checkpoint.verify import verify_checkpoint


def retain(run_dir: Path, keep: int) -> None:
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
