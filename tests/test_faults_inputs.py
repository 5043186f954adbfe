"""Issue 23: the last faults, bad inputs and crafted files. Each test names the failure it proves gone: stale cached
shards, prepare's --out FILE traceback, a Ctrl-C that prepare did not hear, errors naming neither file nor flag,
and crafted checkpoints that made nano read outside them. Small text, tiny vocabularies, CPU only."""
import json
import re
import os
import signal
import subprocess
import sys
import textwrap
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
    from nano_core.prepare_shards import Sharder
    flush = Sharder.flush
    def parked(self, *a, **k):
        flush(self, *a, **k)
        if self.index == 3:
            print("parked", file=sys.stderr, flush=True)
            for _ in range(300):  # a signal that is heard ends this at once; an unheard one lets prepare finish
                time.sleep(0.1)
    Sharder.flush = parked
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
    from nano_core.data_dir import load_manifest

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
    from nano_core.data_dir import drop_stale_cache
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


# -- a tiny checkpoint (nano's init, not trained): enough for generate, eval and crafted-checkpoint tests ----------

@pytest.fixture(scope="module")
def tiny_ckpt(tok260, tmp_path_factory) -> Path:
    from nano_core import checkpoint as ck
    from nano_core.config import ModelConfig
    from nano_core.init import init_weights

    cfg = ModelConfig(vocab_size=260, n_layer=1, n_head=2, n_embd=32, seq_len=32).validate()
    meta = {"model_config": cfg.to_dict(), "train_config": {}, "loader_state": {}, "backend": "torch"}
    run = tmp_path_factory.mktemp("tiny") / "run"
    return ck.save_checkpoint(run, 1, init_weights(cfg, 0), {}, meta, tokenizer_dir=tok260)


def generate_main(argv):
    from nano_torch.generate import main
    return main(argv)


def eval_main(argv):
    from nano_torch.eval import main
    return main(argv)


# -- item 3: generate streams, says what happens past the context, reports tokens/s, bounds --max-new-tokens ----

def test_generate_streams_each_token_as_it_is_sampled(tiny_ckpt, monkeypatch, capsys):
    from nano_torch.backend import Backend

    events = []
    next_logits = Backend.next_logits
    monkeypatch.setattr(Backend, "next_logits", lambda *a, **k: (events.append("model"), next_logits(*a, **k))[1])

    class Out:
        def write(self, text):
            events.append("text")
        def flush(self):
            pass
    monkeypatch.setattr(sys, "stdout", Out())
    generate_main(["--ckpt", str(tiny_ckpt), "--prompt", "To be", "--max-new-tokens", "12", "--temperature", "1",
                   "--top-k", "0", "--device", "cpu"])
    # the old command printed the whole text once, after the last model call
    assert "text" in events[:events.index("model", 2)], events


def test_generate_text_is_the_decoded_sample_past_the_context_with_a_notice_and_a_speed(tiny_ckpt, capsys):
    from nano_core.generate import generate, load_model
    from nano_torch.backend import Backend

    argv = ["--ckpt", str(tiny_ckpt), "--prompt", "To be", "--max-new-tokens", "40", "--seed", "3",
            "--temperature", "1", "--top-k", "0", "--device", "cpu"]
    generate_main(argv)
    out, err = capsys.readouterr()
    backend = Backend(device="cpu", dtype="fp32")
    model, tok, _ = load_model(backend, tiny_ckpt)
    ids = generate(backend, model, tok.encode("To be"), 40, 1.0, 0, 1.0, 3, stop_id=tok.eot_id)
    assert out == "To be" + tok.decode(ids) + "\n"  # streamed piece by piece, the same text as decoded at once
    lines = err.splitlines()
    assert any(line.startswith("notice: prompt (") and "exceed the model's context of 32 tokens" in line
               and "the window slides" in line for line in lines), err
    assert re.fullmatch(rf"\[{len(ids)} tokens in \d+\.\ds, \d+\.\d tokens/s\]", lines[-1]), err
    generate_main([*argv[:4], "--max-new-tokens", "8", *argv[6:]])
    assert "notice" not in capsys.readouterr().err  # within the context: nothing to say


@pytest.mark.parametrize("flag,value", [("--max-new-tokens", "1000000000000"), ("--max-new-tokens", "-1"),
                                        ("--seed", "-1")])
def test_generate_absurd_numbers_are_one_line_naming_the_flag(tiny_ckpt, capsys, flag, value):
    exits_with_one_line(capsys, lambda: generate_main(["--ckpt", str(tiny_ckpt), flag, value, "--device", "cpu"]),
                        flag, value)


# -- item 6: errors that name the file or the flag ------------------------------------------------------------------

def test_eval_with_an_empty_wikitext2_names_the_file(tiny_ckpt, tmp_path, capsys):
    empty = tmp_path / "wiki.test.raw"
    empty.write_text("\n \n")
    exits_with_one_line(capsys, lambda: eval_main(["--ckpt", str(tiny_ckpt), "--tasks", "wikitext2", "--wikitext2",
                                                   str(empty), "--device", "cpu", "--out", str(tmp_path / "r.json")]),
                        "--wikitext2", empty, "holds no text")
    assert not (tmp_path / "r.json").exists()


def test_eval_with_a_binary_hellaswag_names_the_file(tiny_ckpt, tmp_path, capsys):
    binary = tmp_path / "hellaswag_val.jsonl"
    binary.write_bytes(bytes(range(128, 256)) * 64)
    exits_with_one_line(capsys, lambda: eval_main(["--ckpt", str(tiny_ckpt), "--tasks", "hellaswag", "--hellaswag",
                                                   str(binary), "--device", "cpu", "--out", str(tmp_path / "r.json")]),
                        "--hellaswag", binary, "not UTF-8")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1e-3"])
def test_a_learning_rate_that_is_not_a_positive_finite_number_is_refused_naming_the_flag(value):
    from nano_core.checks import check_train_numbers
    from nano_core.cli import TrainConfig

    with pytest.raises(ValueError, match=rf"^--lr must be a finite number > 0, got {re.escape(repr(float(value)))}"):
        check_train_numbers(TrainConfig(lr=float(value)))
    check_train_numbers(TrainConfig())  # every default passes


# -- item 10: crafted checkpoints never make nano read outside them -------------------------------------------------

@pytest.fixture
def crafted(tiny_ckpt, tmp_path) -> Path:
    import shutil

    copy = tmp_path / "run" / tiny_ckpt.name
    shutil.copytree(tiny_ckpt, copy, symlinks=True)
    (tmp_path / "secret").write_text("not nano's to read")
    return copy


def rewrite_checksums(ckpt: Path, **names):
    manifest = json.loads((ckpt / "checksums.json").read_text())
    manifest["files"].update(names)
    (ckpt / "checksums.json").write_text(json.dumps(manifest))


def refused_without_reading_the_secret(ckpt: Path, monkeypatch, *words, tokenizer=True):
    """Every way in (verify, load and, with `tokenizer`, the tokenizer lookup generate and eval use) refuses in one
    line; the secret is never opened."""
    from nano_core import checkpoint as ck
    from nano_core.checkpoint import verify as ck_verify

    secret = (ckpt.parent.parent / "secret").resolve()
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (opened.append(Path(f).resolve() if isinstance(
        f, (str, os.PathLike)) else f), real_open(f, *a, **k))[1])
    ck_verify._DIGESTS.clear()
    for fn in (ck.verify_checkpoint, ck.load_checkpoint) + ((ck.checkpoint_tokenizer_dir,) if tokenizer else ()):
        with pytest.raises(ck.CheckpointError) as info:
            fn(ckpt)
        message = str(info.value)
        assert "\n" not in message and "refused" in message and all(w in message for w in words), message
    assert secret not in opened


def test_a_checksums_name_that_climbs_out_of_the_checkpoint_is_refused(crafted, monkeypatch):
    rewrite_checksums(crafted, **{"../../secret": {"size": 18, "sha256": "0" * 64}})
    refused_without_reading_the_secret(crafted, monkeypatch, "checksums.json names ../../secret",
                                       "leads outside the checkpoint", tokenizer=False)


def test_an_absolute_checksums_name_is_refused(crafted, monkeypatch):
    rewrite_checksums(crafted, **{str(crafted.parent.parent / "secret"): {"size": 18, "sha256": "0" * 64}})
    refused_without_reading_the_secret(crafted, monkeypatch, "is not a relative path inside the checkpoint",
                                       tokenizer=False)


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer", "tokenizer/nano_tokenizer.json"])
def test_a_symlink_out_of_the_checkpoint_is_refused(crafted, monkeypatch, name):
    target = crafted / name
    if target.is_dir():
        import shutil
        shutil.rmtree(target)
    else:
        target.unlink()
    target.symlink_to(crafted.parent.parent / "secret")
    refused_without_reading_the_secret(crafted, monkeypatch, name, "leads outside the checkpoint")


def test_meta_tokenizer_dir_is_never_followed(crafted, tmp_path, tok260, capsys):
    import shutil

    from nano_core import checkpoint as ck

    shutil.rmtree(crafted / "tokenizer")
    meta = json.loads((crafted / "meta.json").read_text())
    meta["tokenizer_dir"] = str(tok260)  # a real tokenizer, outside the checkpoint: the old code loaded it
    (crafted / "meta.json").write_text(json.dumps(meta))
    ck.write_manifest(crafted)
    ck.verify_checkpoint(crafted)  # the checkpoint itself is whole
    with pytest.raises(ck.CheckpointError, match=rf"carries no tokenizer/ \(meta.json names {re.escape(str(tok260))}"
                                                 r", outside it, which nano does not read\); copy the tokenizer/"):
        ck.checkpoint_tokenizer_dir(crafted)
    exits_with_one_line(capsys, lambda: generate_main(["--ckpt", str(crafted), "--device", "cpu"]),
                        crafted, "carries no tokenizer/")


# -- a refused training start leaves nothing behind (issue 23 item 4) -------------------------------------------------
def refused_start(tmp_path, out, capfd) -> str:
    """A train start refused after the run dir is claimed: --data whose manifest.json is random bytes."""
    from nano_torch.train import main as train_main

    data = tmp_path / "shards"
    data.mkdir(exist_ok=True)
    (data / "manifest.json").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SystemExit) as e:
        train_main(["--data", str(data), "--preset", "tiny", "--out", str(out), "--max-steps", "1", "--dtype",
                    "fp32", "--device", "cpu"])
    assert e.value.code not in (0, None)
    return capfd.readouterr().err + str(e.value.code)  # the line is printed, or is the exit's message


def test_a_refused_start_removes_the_run_dir_it_created(tmp_path, capfd):
    err = refused_start(tmp_path, tmp_path / "new" / "run", capfd)
    assert "manifest" in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()  # neither the run dir nor the parent this start made


def test_a_refused_start_in_an_existing_dir_removes_only_its_lock(tmp_path, capfd):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    refused_start(tmp_path, out, capfd)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
