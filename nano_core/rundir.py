"""The run directory: named, usable, owned by one process, never silently mixed with another run.

A run writes only RUN_FILES and its checkpoints there (and --overwrite deletes only those); RunLock keeps a second
process from training into the same directory.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from nano_core.checkpoint import list_checkpoints

# What a run writes into its directory (and --overwrite deletes): never anything else the user keeps there.
RUN_FILES = ("metrics.jsonl", "samples.txt", "loss_curve.png")
LOCK_FILE = ".lock"


def default_run_dir(backend: str, preset: str | None) -> Path:
    return Path("runs") / f"{backend}-{preset or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(run_dir: Path) -> list[Path]:
    """--out must be a directory this process can create and write: checked before any data is prepared. Returns
    the directories it created, outermost first (undo_start removes them if the start is refused later)."""
    for p in [run_dir, *run_dir.parents]:
        if p.exists() and not p.is_dir():
            raise ValueError(f"--out {run_dir}: {p} is a file, not a directory; choose another --out")
    made = [p for p in [*reversed(run_dir.parents), run_dir] if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {run_dir} is not writable ({e.strerror}); choose another --out") from None
    return made


def undo_start(run_dir: Path, made: list[Path], lock_was_there: bool) -> None:
    """A start refused after the run dir was claimed leaves nothing behind: the directories it created go (all they
    hold came from this start), or, in a directory that was there before, the lock file it made."""
    if made:
        shutil.rmtree(made[0], ignore_errors=True)
    elif not lock_was_there:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)


def claim_run_dir(run_dir: Path, fresh: bool, overwrite: bool, log=print) -> None:
    """A fresh run (no --resume) must not mix with another run's files: refuse unless --overwrite, which deletes
    only what a run writes (checkpoints, metrics, samples, the plot)."""
    ckpts = list_checkpoints(run_dir)
    found = [p for p in (run_dir / f for f in RUN_FILES) if p.exists()]
    if not fresh or not (ckpts or found):
        return
    what = f"checkpoints up to {ckpts[-1].name}" if ckpts else ", ".join(p.name for p in found)
    if not overwrite:
        raise ValueError(f"--out {run_dir} already holds a run ({what}); continue it with --resume latest, start "
                         f"over with --overwrite (deletes it), or choose another --out")
    for p in ckpts + [p for p in run_dir.glob(".tmp_ckpt_*")]:
        shutil.rmtree(p, ignore_errors=True)
    for p in found:
        p.unlink()
    log(f"notice: --overwrite: deleted the previous run in {run_dir} ({what})")


class RunLock:
    """An exclusive lock on a run directory for the life of this process (fcntl.flock on RUN_DIR/.lock): a second
    process training into the same --out is refused, naming the holder. The kernel drops the lock when the holder
    exits, however it exits, so a crash never leaves a stale lock. (No flock on Windows: no lock there.)"""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._file = None
        try:
            import fcntl
        except ImportError:  # Windows
            return
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ValueError(f"--out {run_dir} is in use by {holder}; wait for it to finish or choose another "
                             f"--out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None
