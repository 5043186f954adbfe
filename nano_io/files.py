"""Writing files so that a crash never leaves half of one, and flushing them to the drive: every nano package
writes through here (whole directories are published by nano_io.dirs).

A file is written to a hidden temp file in its own directory, flushed to disk, then renamed over the target
(os.replace is atomic on POSIX and Windows within one file system). A reader sees the old file or the new one,
never a mix; a crash mid-write leaves the old file and a `.NAME.*.tmp` that nothing reads.

This module sits at the bottom of the package graph (nano_io/ imports no other nano package), so the tokenizer,
nano_core, the backends and the benchmarks all write through it.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp"):
    """Yield a temp path beside `path`; when the block ends without an error, fsync it and rename it to `path`.

    For writers that want a file name (matplotlib's savefig, safetensors, np.save). The temp name keeps `suffix`
    (e.g. ".png"), because some writers pick the format from the extension. On an error the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            sync_fd(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a normal file follows the user's umask
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sync_fd(fd: int) -> None:
    """Flush an open file or directory to stable storage. On macOS fsync(2) only hands the data to the drive, whose
    write cache may still lose it on power loss (Apple's fsync man page); fcntl F_FULLFSYNC asks the drive to flush
    that cache too. File systems that refuse F_FULLFSYNC (some network and FAT volumes) get a plain fsync."""
    if sys.platform == "darwin" and fcntl is not None and hasattr(fcntl, "F_FULLFSYNC"):
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except OSError:
            pass
    os.fsync(fd)


def atomic_write(path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def umask() -> int:
    """The process's file-creation mask. Linux (>= 4.7) shows it in /proc/self/status, read without changing it;
    elsewhere os.umask must set it to read it, and it is put back at once (a file another thread creates in
    between gets 022, a usual mask, not 0)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def follow_umask(path) -> None:
    """Give `path` (a directory: everything under it too) the modes a plain mkdir / open would have: directories
    0777 and files 0666 (0777 if executable) less the umask. For what mkdtemp (0700) and mkstemp (0600) made, or
    what shutil.copytree copied from a private source."""
    mask, path = umask(), Path(path)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if p.is_symlink():
            continue
        executable = p.is_dir() or p.stat().st_mode & 0o111
        os.chmod(p, (0o777 if executable else 0o666) & ~mask)
