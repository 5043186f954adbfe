"""Writing files so that a crash never leaves half of one: the one helper every nano package uses.

A file is written to a hidden temp file in its own directory, flushed to disk, then renamed over the target
(os.replace is atomic on POSIX and Windows within one file system). A reader sees the old file or the new one,
never a mix; a crash mid-write leaves the old file and a `.NAME.*.tmp` that nothing reads.

This module sits at the bottom of the package graph (tokenizer/ imports no other nano package), so nano_core,
the backends and the benchmarks all write through it.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a normal file follows the user's umask
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
