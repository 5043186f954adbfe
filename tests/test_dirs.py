"""nano_io.dirs.atomic_dir, the one directory publisher (checkpoints, exports and prepare's tokenizer/ use it; their
own tests cover what each adds): the old directory or the whole new one, never a mix, and nothing left behind."""
import os
import stat

import pytest

from nano_io import dirs
from nano_io.files import umask


def publish(final, files: dict, aside_name="old"):
    with dirs.atomic_dir(final, prefix=".tmp.", aside=final.parent / aside_name) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return final


def test_a_new_directory_appears_whole_with_the_users_modes(tmp_path):
    final = publish(tmp_path / "out", {"a.json": "{}", "b.txt": "b"})
    assert sorted(p.name for p in final.iterdir()) == ["a.json", "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dir, no set-aside copy
    mask = umask()
    assert stat.S_IMODE(final.stat().st_mode) == 0o777 & ~mask  # mkdtemp made it 0700
    assert stat.S_IMODE((final / "a.json").stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("before", ["empty", "full", "file"])
def test_an_existing_target_is_replaced_and_the_set_aside_copy_deleted(tmp_path, before):
    final = tmp_path / "out"
    if before == "file":
        final.write_text("not a directory")
    else:
        final.mkdir()
        if before == "full":
            (final / "stale.txt").write_text("old")
    publish(final, {"new.txt": "new"})
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_error_in_the_block_leaves_the_old_directory_and_no_temp_dir(tmp_path):
    final = publish(tmp_path / "out", {"v1.txt": "1"})
    with pytest.raises(RuntimeError):
        with dirs.atomic_dir(final, prefix=".tmp.", aside=tmp_path / "old") as tmp:
            (tmp / "v2.txt").write_text("2")
            raise RuntimeError("writer failed")
    assert [p.name for p in final.iterdir()] == ["v1.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_rename_puts_the_old_directory_back(tmp_path, monkeypatch):
    final = publish(tmp_path / "out", {"v1.txt": "1"})
    real_replace = os.replace

    def replace(src, dst):
        if str(dst) == str(final) and ".tmp." in str(src):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        publish(final, {"v2.txt": "2"})
    assert [p.name for p in final.iterdir()] == ["v1.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_files_are_flushed_before_the_rename_and_the_parent_after(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda s, d: (events.append(("replace", str(d))), real_replace(s, d)))
    final = publish(tmp_path / "out", {"a.txt": "a"})
    renamed = events.index(("replace", str(final)))
    assert ("fsync", (final / "a.txt").stat().st_ino) in events[:renamed]
    assert ("fsync", tmp_path.stat().st_ino) in events[renamed:]
