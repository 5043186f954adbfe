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
