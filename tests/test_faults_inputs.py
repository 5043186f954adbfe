"""Issue 23: the last faults, bad inputs and crafted files. Each test names the failure it proves gone: stale cached
shards, prepare's --out FILE traceback, a Ctrl-C that prepare did not hear, errors naming neither file nor flag,
and crafted checkpoints that made nano read outside them. Small text, tiny vocabularies, CPU only."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nano_core.prepare import main as prepare_main
from tokenizer import BPETokenizer

REPO = Path(__file__).resolve().parents[1]


def run_py(code: str, *args, timeout=120, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO, **kw)


def exits_with_one_line(capsys, fn, *words, code=None) -> str:
    """fn must exit non-zero with exactly one line on stderr (no traceback) that names every one of `words`."""
    with pytest.raises(SystemExit) as info:
        fn()
    err = capsys.readouterr().err
    if isinstance(info.value.code, str):
        err += info.value.code
    else:
        assert info.value.code not in (0, None)
        if code is not None:
            assert info.value.code == code
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert str(word) in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small_text(shared_data, tmp_path_factory) -> Path:
    """The first 120 KB of TinyShakespeare: a few shards of 4,096 tokens at vocab 260."""
    path = tmp_path_factory.mktemp("text") / "ts.txt"
    path.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:120_000])
    return path


@pytest.fixture(scope="module")
def tok260(small_text, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok260")
    BPETokenizer.train([small_text], vocab_size=260, progress=False).save(d)
    return d


# -- item 5: prepare --out FILE ---------------------------------------------------------------------------------

def test_prepare_out_that_is_a_file_is_one_line_naming_it(small_text, tok260, tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    exits_with_one_line(capsys, lambda: prepare_main(["--source", str(small_text), "--out", str(taken),
                                                      "--tokenizer", str(tok260), "--quiet"]), "--out", taken)
    assert taken.read_text() == "mine" and sorted(tmp_path.iterdir()) == [taken]
    under = taken / "shards"  # a file in the middle of the path: NotADirectoryError before
    exits_with_one_line(capsys, lambda: prepare_main(["--source", str(small_text), "--out", str(under),
                                                      "--tokenizer", str(tok260), "--quiet"]), "--out", under)


# -- item 7: Ctrl-C (or SIGTERM) once shards exist ------------------------------------------------------------------

# Runs the real prepare CLI with SIGINT ignored on entry, as a command started in the background by a script
# (`cmd &`) inherits it, and parks after the third shard is published so the signal lands mid-run, not at the end.
PARKED_PREPARE = """
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import nano_core.prepare as p
    flush = p._Sharder.flush
    def parked(self, *a, **k):
        flush(self, *a, **k)
        if self.index == 3:
            print("parked", file=sys.stderr, flush=True)
            for _ in range(300):  # a signal that is heard ends this at once; an unheard one lets prepare finish
                time.sleep(0.1)
    p._Sharder.flush = parked
    p.main(sys.argv[1:])
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_prepare_once_shards_exist_is_one_line_and_exit_130(small_text, tok260, tmp_path, sig):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PARKED_PREPARE), "--source", str(small_text),
                             "--out", str(out), "--tokenizer", str(tok260), "--encoder", "python", "--workers", "1",
                             "--shard-tokens", "4096", "--val-tokens", "4096", "--quiet"],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        before = list(iter(proc.stderr.readline, "parked\n"))  # a notice about the val cut may come first
        assert all(line.startswith("notice:") for line in before), before
        proc.send_signal(sig)
        err = proc.stderr.read()
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert rc == 130, err
    assert err.strip() == f"interrupted: finished shards in {out} are kept; rerun the same command to continue"
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 3


# -- item 1: --source DIR shards are keyed on the files' contents, not only on the path -----------------------------

@pytest.fixture
def novel_dir(small_text, tmp_path) -> Path:
    d = tmp_path / "novels"
    d.mkdir()
    text = small_text.read_text()
    (d / "a.txt").write_text(text[:60_000])
    (d / "b.txt").write_text(text[60_000:])
    return d


def test_editing_adding_or_touching_a_source_file_prepares_the_cache_again(novel_dir, tmp_path, monkeypatch,
                                                                          capsys):
    from nano_core import run as run_mod
    from nano_core.cli import TrainConfig
    from nano_core.data import load_manifest

    monkeypatch.setenv("NANO_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(source=[str(novel_dir)], vocab_size=260)
    lines: list[str] = []

    def resolve():  # the lines it logs or prints, prepare's own summary aside
        lines.clear()
        capsys.readouterr()
        logged: list[str] = []
        out = run_mod.resolve_data(config, log=logged.append)
        lines.extend(line for line in capsys.readouterr().out.splitlines() + logged if line.startswith("data:"))
        return out, load_manifest(out)["total_tokens"]

    out, tokens = resolve()
    assert resolve() == (out, tokens) and lines == [f"data: cached shards {out}"]
    with open(novel_dir / "b.txt", "a") as f:  # an edit: the old code trained on the cached, stale shards
        f.write("\n\nA NEW SCENE, added after the cache was made.\n" * 50)
    out2, edited = resolve()
    assert out2 == out and edited > tokens
    assert lines[0] == f"data: {novel_dir} changed since the cache was made (1 file): preparing again"
    (novel_dir / "c.txt").write_text("Another file, and more text in it. " * 200)
    (novel_dir / "skipped.bin").write_bytes(b"\0" * 100)  # not a file a directory source reads: no change
    assert resolve()[1] > edited and "(1 file)" in lines[0]
    assert resolve()[1] > edited and lines == [f"data: cached shards {out}"]
    os.utime(novel_dir / "a.txt", ns=(1, 1))  # same bytes, another mtime: rebuilt (size and mtime are the key)
    resolve()
    assert lines[0].endswith("changed since the cache was made (1 file): preparing again")


def test_a_cache_made_before_files_were_recorded_is_prepared_again(novel_dir, tmp_path, monkeypatch):
    from nano_core.data import drop_stale_cache
    from nano_core.prepare import prepare

    out = tmp_path / "cache"
    prepare([novel_dir], out, vocab_size=260, num_workers=1, progress=False)
    said: list[str] = []
    assert not drop_stale_cache(out, said.append) and said == [] and out.is_dir()
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["source_files"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert drop_stale_cache(out, said.append) and not out.exists()
    assert said == [f"data: {out} was made before nano recorded its source files' sizes and times: preparing again"]


def test_prepare_refuses_to_continue_or_reuse_shards_of_files_changed_since(novel_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--source", str(novel_dir), "--out", str(out), "--vocab-size", "260", "--workers", "1", "--quiet"]
    prepare_main(args)
    capsys.readouterr()
    (novel_dir / "a.txt").write_text("rewritten")
    exits_with_one_line(capsys, lambda: prepare_main(args), out, "changed since", novel_dir / "a.txt",
                        f"delete {out}")
