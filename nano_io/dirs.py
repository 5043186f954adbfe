"""Publishing a whole directory atomically: the one way nano writes a checkpoint, an export or a tokenizer dir.

    with atomic_dir(final, prefix=".x.", aside=final.with_name(".x.replaced")) as tmp:
        ...write the files into tmp...

The files go into a hidden temp directory beside `final` (same file system, so the rename is atomic). When the
block ends without an error: the tree gets the user's usual modes (mkdtemp makes 0700, safetensors 0600), every
file and directory under it is flushed to the drive (nano_io.files.sync_fd: F_FULLFSYNC on macOS), it is renamed
to `final`, and the parent directory is flushed so that the rename itself survives a power cut. A reader sees the
old directory or the whole new one, never a mix. An existing `final` is removed when empty; otherwise it is renamed
to `aside` first, put back if the rename fails, and deleted only once the new one is in place. On an error the temp
directory is removed and the error propagates; a crash leaves a temp dir (named by `prefix`) that each caller's
own clean-up recognises.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from nano_io.files import follow_umask, sync_fd


@contextlib.contextmanager
def atomic_dir(final, prefix: str, aside):
    """Yield a fresh temp directory beside `final`; publish it as `final` when the block ends without an error.

    `prefix`: the temp directory's name starts with it (callers recognise their leftovers by it); `aside`: where
    an existing non-empty `final` waits until the new one is in place. The temp directory is made on entry, so an
    OSError making it (read-only file system, no space) is raised by the `with` statement itself."""
    final, aside = Path(final), Path(aside)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        yield tmp
        follow_umask(tmp)
        sync_tree(tmp)  # the rename below must never publish files whose bytes are still in flight
        _replace(tmp, final, aside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, final: Path, aside: Path) -> None:
    """Rename `tmp` to `final` (moving an existing one to `aside`, deleted after) and flush the parent."""
    old = None
    if final.exists():
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        else:
            old = aside
            _remove(old)
            os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    sync_dir(final.parent)  # the rename is durable only once the directory entry is on disk
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    """Delete what stands at `path` (a directory tree, or a file or link where a directory was expected), if
    anything; a set-aside copy that cannot be deleted is left for the caller's clean-up, never an error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def sync_tree(root) -> None:
    """Flush every file under `root` (and, where the OS allows, the directories' entries) to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                sync_fd(f.fileno())
        sync_dir(dirpath)


def sync_dir(path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk; a no-op where directories cannot be
    opened (Windows, whose renames do not need it) or flushed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        sync_fd(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
