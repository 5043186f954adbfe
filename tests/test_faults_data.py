"""Faults on the data side end in one clear outcome: a one-line error that says what to do, or a documented
behaviour with a one-line notice; never a traceback, never a half-written or unusable prepared directory.

Real data from ../shared/data, small vocabularies (300-512), CPU only."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tokenizer.bpe as bpe
from nano_core.data import ShardLoader
from nano_core.data_dir import load_manifest
from nano_core.shards import read_shard, write_shard
from nano_core.prepare import VAL_TOKENS_MAX, VAL_TOKENS_MIN, auto_val_tokens, prepare
from tokenizer import BPETokenizer, load_tokenizer
from nano_io.sources import open_sources
from nano_io.text import binary_reason, read_text

SHARD = 200_000  # a few training shards from TinyShakespeare at vocab 300


@pytest.fixture(scope="module")
def shakespeare(shared_data):
    return shared_data / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def ts_ref(shakespeare, tmp_path_factory):
    """TinyShakespeare prepared the way a first-time user would: one document, automatic --val-tokens."""
    out = tmp_path_factory.mktemp("ts_ref")
    prepare([shakespeare], out, vocab_size=300, shard_tokens=SHARD, num_workers=2, progress=False)
    return out


def shard_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard_*.bin"))}


def one_line(text: str) -> str:
    assert "\n" not in text.strip() and "Traceback" not in text, text
    return text


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "nano_core.prepare", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def last_error_line(r) -> str:
    lines = [line for line in r.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    assert lines and lines[-1].startswith("error:"), r.stderr
    return lines[-1]


# -- 1. a single-document source trains ------------------------------------------------------------------------

@pytest.mark.full_data("the whole 1.1 MB TinyShakespeare file (its size sets the automatic --val-tokens)")
def test_single_document_source_is_cut_so_that_it_trains(ts_ref, shakespeare, capsys):
    m = load_manifest(ts_ref)
    val, train = m["shards"][0], m["shards"][1:]
    assert m["complete"] and val["split"] == "val" and all(s["split"] == "train" for s in train)
    assert val["tokens"] == m["options"]["val_tokens"] == auto_val_tokens([shakespeare]) == 31_868
    assert sum(s["tokens"] for s in train) > 10 * val["tokens"]
    assert m["val_cut"] == {"document": 0, "document_tokens": m["total_tokens"], "val_tokens": val["tokens"],
                            "reason": "long"}
    # val + train is the document, EOT first, cut at a token boundary and nothing lost
    tok = load_tokenizer(ts_ref / "tokenizer")
    stream = np.concatenate([read_shard(ts_ref / s["file"]) for s in m["shards"]])
    assert stream[0] == tok.eot_id and (stream == tok.eot_id).sum() == 1
    assert tok.decode(stream[1:].tolist()) == read_text(shakespeare)
    for split in ("train", "val"):
        batch = ShardLoader(ts_ref, batch_size=4, seq_len=256, split=split).next_batch()
        assert batch.shape == (4, 257) and batch.max() < 300


@pytest.mark.full_data("the whole 1.1 MB TinyShakespeare file (its size sets the automatic --val-tokens)")
def test_the_cut_is_announced_in_one_line(shakespeare, tmp_path, capsys):
    prepare([shakespeare], tmp_path, tokenizer=BPETokenizer.train([shakespeare], 300, progress=False),
            shard_tokens=SHARD, num_workers=1, progress=False)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert len(err) == 1 and "document 0" in err[0] and "validation ends after its first 31,868 tokens" in err[0]


def test_last_document_that_would_fill_val_is_cut_even_when_short(shakespeare, tmp_path):
    # 40 KB of Shakespeare ~ 29k tokens at vocab 300: whole, within twice --val-tokens 20,000, would be all of val
    small = tmp_path / "small.txt"
    small.write_text(read_text(shakespeare)[:40_000])
    m = prepare([small], tmp_path / "out", vocab_size=300, val_tokens=20_000, num_workers=1, progress=False)
    assert m["val_cut"]["reason"] == "last" and m["shards"][0]["tokens"] == 20_000
    assert m["shards"][1]["split"] == "train" and m["shards"][1]["tokens"] == m["total_tokens"] - 20_000 > 0


@pytest.mark.full_data("the whole 1.1 MB TinyShakespeare file (its size sets the automatic --val-tokens)")
def test_too_little_text_for_val_is_an_error_that_leaves_no_shards_and_a_rerun_may_change_val(shakespeare,
                                                                                            tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="not enough for the validation shard") as e:
        prepare([shakespeare], out, vocab_size=300, val_tokens=5_000_000, num_workers=1, progress=False)
    assert "lower --val-tokens" in one_line(str(e.value))
    m = load_manifest(out)
    assert not m["complete"] and m["shards"] == [] and not list(out.glob("shard_*"))
    with pytest.raises(ValueError, match="did not finish"):
        ShardLoader(out, 2, 16)
    m = prepare([shakespeare], out, vocab_size=300, num_workers=1, progress=False)  # other val, same --out
    assert m["complete"] and m["options"]["val_tokens"] == 31_868 and len(m["shards"]) == 2


def test_a_dir_an_older_version_marked_complete_with_no_train_tokens_is_redone(ts_ref, shakespeare, tmp_path,
                                                                             capsys):
    out = tmp_path / "old"
    out.mkdir()
    m = load_manifest(ts_ref)
    everything = np.concatenate([read_shard(ts_ref / s["file"]) for s in m["shards"]])
    write_shard(out / "shard_00000.bin", everything, dtype="uint16")  # what the old version wrote: all in val
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "tokenizer.json").write_bytes((ts_ref / "tokenizer" / "nano_tokenizer.json").read_bytes())
    old = {**m, "shards": [{"file": "shard_00000.bin", "split": "val", "documents": 1, "tokens": len(everything)}]}
    old.pop("val_cut")
    (out / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="no train shards; re-run the same `python -m nano_core.prepare` command"):
        ShardLoader(out, 2, 16)
    again = prepare([shakespeare], out, vocab_size=300, shard_tokens=SHARD, num_workers=1, progress=False)
    assert "holds no training tokens" in capsys.readouterr().err
    assert again["shards"] == m["shards"] and shard_bytes(out) == shard_bytes(ts_ref)


# -- 2. --val-tokens defaults to a share of the corpus -----------------------------------------------------------

@pytest.mark.full_data("the whole WikiText-2 files, TinyShakespeare and the 64 Gutenberg novels (their sizes)")
def test_auto_val_tokens_is_a_tenth_of_the_corpus_within_bounds(shared_data, shakespeare):
    wiki = sorted((shared_data / "wikitext2").glob("*.raw"))
    size = sum(p.stat().st_size for p in wiki)
    assert 2_400_000 < size < 2_500_000
    assert auto_val_tokens(wiki) == int(size / 3.5 / 10) == 69_641
    assert auto_val_tokens([shakespeare]) == 31_868
    assert auto_val_tokens(["builtin"]) == VAL_TOKENS_MIN                   # ~465 KB: the floor
    assert auto_val_tokens([shared_data / "gutenberg"]) == VAL_TOKENS_MAX   # 65 MB: the cap
    assert auto_val_tokens(["fineweb-edu"]) == VAL_TOKENS_MAX               # unknown size: the cap


@pytest.mark.full_data("the whole 1.2 MB FineWeb-Edu sample (its size sets the automatic --val-tokens)")
def test_auto_val_of_a_corpus_smaller_than_the_floor_takes_a_tenth(shared_data, tmp_path):
    jsonl = shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl"
    m = prepare([jsonl], tmp_path, vocab_size=300, max_docs=6, num_workers=1, progress=False)
    assert m["options"]["val_tokens"] == auto_val_tokens([jsonl]) > m["total_tokens"]  # by file size: too many
    assert 0 < m["shards"][0]["tokens"] <= m["total_tokens"] // 5 and m["shards"][1]["split"] == "train"


# -- 1+2+5 through the CLI: a 2.4 MB source with the default --val-tokens, Ctrl-C during tokenizer training ----

def interrupt_cli(args, marker: str, timeout=60, delay=0.0):
    """Run the prepare CLI in its own process group, send SIGINT to the whole group (what a terminal's Ctrl-C
    does) once `marker` shows on stderr, and return (exit code, stderr). Also checks that no worker process
    outlives the main one (the group is empty once it exited)."""
    p = subprocess.Popen([sys.executable, "-m", "nano_core.prepare", *map(str, args)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err = bytearray()
    reader = threading.Thread(target=lambda: [err.extend(b) for b in iter(lambda: p.stderr.read1(1 << 14), b"")],
                              daemon=True)
    reader.start()
    try:
        t0 = time.time()
        while marker.encode() not in err and p.poll() is None and time.time() - t0 < timeout:
            time.sleep(0.02)
        time.sleep(delay)
        assert p.poll() is None, f"finished before the interrupt: {err.decode()}"
        os.killpg(p.pid, signal.SIGINT)
        rc = p.wait(timeout=timeout)
        t0 = time.time()
        while time.time() - t0 < 5:
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"worker processes outlived the interrupted prepare: {err.decode()}")
        reader.join(timeout=10)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # whatever is left of the group, so a failure cannot hang the run
        except ProcessLookupError:
            pass
    return rc, err.decode().replace("\r", "\n")


def assert_interrupted(rc, err, out):
    assert rc == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert lines == [f"interrupted: finished shards in {out} are kept; rerun the same command to continue"], err


@pytest.mark.e2e
@pytest.mark.full_data("the whole 2.4 MB of WikiText-2 (its size sets the automatic --val-tokens)")
def test_cli_ctrl_c_in_tokenizer_training_then_rerun_with_default_val_on_a_2mb_source(shared_data, tmp_path):
    wiki = sorted((shared_data / "wikitext2").glob("*.raw"))  # two single-document files, 2.4 MB
    out = tmp_path / "wiki"
    args = ["--source", *wiki, "--out", out, "--vocab-size", 512, "--workers", 2]
    assert_interrupted(*interrupt_cli(args, "split+count"), out)
    assert not list(out.glob("shard_*")) and not list(out.glob(".*"))
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    m = load_manifest(out)
    assert m["complete"] and m["shards"][0]["tokens"] == m["options"]["val_tokens"] == 69_641
    assert m["total_tokens"] - m["shards"][0]["tokens"] > 500_000
    assert ShardLoader(out, 4, 256).next_batch().shape == (4, 257)
    reference = prepare(wiki, tmp_path / "ref", vocab_size=512, num_workers=1, progress=False)
    assert shard_bytes(out) == shard_bytes(tmp_path / "ref") and m["shards"] == reference["shards"]


@pytest.mark.e2e
def test_cli_ctrl_c_while_encoding_is_one_line_and_exit_130(shared_data, ts_ref, tmp_path):
    out = tmp_path / "novels"
    args = ["--source", shared_data / "gutenberg", "--out", out, "--tokenizer", ts_ref / "tokenizer",
            "--encoder", "python", "--workers", 2, "--shard-tokens", SHARD]
    assert_interrupted(*interrupt_cli(args, "prepare:"), out)
    m = load_manifest(out)
    assert not m["complete"] and not list(out.glob(".*"))
    assert sorted(p.name for p in out.glob("shard_*")) == [s["file"] for s in m["shards"]]


def test_ctrl_c_right_after_the_counting_bar_appears_closes_it_so_the_message_has_its_own_line(shakespeare,
                                                                                              monkeypatch, capsys):
    # The CLI test above interrupts as soon as "split+count" shows; in CI the Ctrl-C once landed while the work was
    # being split between the workers, before the bar's try/finally, and "interrupted: ..." was glued to the bar.
    from nano_io.sources import Source
    from tokenizer.count import count_chunks
    from tokenizer.patterns import PATTERNS

    def ctrl_c(self, n):
        raise KeyboardInterrupt
    monkeypatch.setattr(Source, "split", ctrl_c)
    try:
        count_chunks(open_sources([shakespeare]), PATTERNS["gpt4"], num_workers=2, progress=True)
    except KeyboardInterrupt:  # as nano_core.prepare.main does: the message while the traceback is still alive
        print("interrupted: ...", file=sys.stderr)
    err = capsys.readouterr().err
    assert "split+count" in err and "\ninterrupted: ...\n" in err, repr(err)


# -- 5. interrupts in-process: resumed output is byte-identical ----------------------------------------------------

def test_interrupt_during_tokenizer_training_then_rerun_is_byte_identical(ts_ref, shakespeare, tmp_path,
                                                                         monkeypatch):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        mp.setattr(bpe, "learn_merges", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            prepare([shakespeare], out, vocab_size=300, shard_tokens=SHARD, num_workers=2, progress=False)
    assert list(out.iterdir()) == []  # nothing half-made: no manifest, no tokenizer, no temp files
    m = prepare([shakespeare], out, vocab_size=300, shard_tokens=SHARD, num_workers=2, progress=False)
    assert m["shards"] == load_manifest(ts_ref)["shards"] and shard_bytes(out) == shard_bytes(ts_ref)


# stop_at: right after val (the cut inside the document), after a train shard
@pytest.mark.parametrize("stop_at", [0, pytest.param(1, marks=pytest.mark.full_data(
    "the whole 1.1 MB TinyShakespeare file (one document longer than val plus a shard)"))])
def test_interrupt_during_encoding_of_the_cut_document_resumes_byte_identical(ts_ref, shakespeare, tmp_path,
                                                                             stop_at):
    def ctrl_c(entry):
        if entry["file"] == f"shard_{stop_at:05d}.bin":
            raise KeyboardInterrupt
    out = tmp_path / "run"
    kw = dict(tokenizer=ts_ref / "tokenizer", shard_tokens=SHARD, num_workers=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        prepare([shakespeare], out, on_shard=ctrl_c, **kw)
    m = load_manifest(out)
    assert not m["complete"] and len(m["shards"]) == stop_at + 1 and m["resume"]["next_offset"] > 0
    m = prepare([shakespeare], out, **kw)
    assert m["shards"] == load_manifest(ts_ref)["shards"] and shard_bytes(out) == shard_bytes(ts_ref)


# -- 3. binary files and NUL characters ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    d = tmp_path_factory.mktemp("bin")
    rng = np.random.default_rng(0)
    files = {
        "weights.txt": rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes(),           # NUL bytes
        "noise.txt": rng.integers(1, 256, 50_000, dtype=np.uint8).tobytes(),             # no NUL, undecodable
        "utf16.txt": "To be, or not to be: that is the question.\n".encode("utf-16") * 50,  # text, but not UTF-8
        "data.jsonl": b'{"text": "ok"}\n' + bytes(range(256)) * 40,
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


@pytest.mark.parametrize("name, reason", [("weights.txt", "NUL bytes in its first 8 KiB"),
                                          ("noise.txt", "is control bytes or invalid UTF-8"),
                                          ("utf16.txt", "UTF-16 text, save it as UTF-8"),
                                          ("data.jsonl", "NUL bytes")])
def test_a_binary_file_named_as_a_source_is_a_one_line_error(binaries, name, reason):
    with pytest.raises(ValueError, match=f"{name} is not a text file") as e:
        open_sources([binaries / name])
    assert reason in one_line(str(e.value))
    with pytest.raises(ValueError, match="is not a text file"):
        read_text(binaries / name)  # also when read directly


def test_cli_refuses_a_binary_source_in_one_line_before_any_work(binaries, tmp_path):
    r = cli("--source", binaries / "weights.txt", "--out", tmp_path / "o", "--vocab-size", 300)
    assert r.returncode == 1
    assert "weights.txt is not a text file (NUL bytes" in last_error_line(r)
    assert not (tmp_path / "o").exists()


def test_binary_files_in_a_directory_are_skipped_with_a_notice_naming_each(binaries, shakespeare, tmp_path,
                                                                           capsys):
    d = tmp_path / "corpus"
    d.mkdir()
    text = read_text(shakespeare)
    (d / "a.txt").write_text(text[:30_000])
    (d / "b.txt").write_text(text[30_000:60_000])
    for name in ("weights.txt", "noise.txt"):
        (d / name).write_bytes((binaries / name).read_bytes())
    (src,) = open_sources([d])
    assert [os.path.basename(f) for f in src.items] == ["a.txt", "b.txt"]
    err = capsys.readouterr().err.splitlines()
    assert sorted(err) == [f"notice: skipping {d / 'noise.txt'}: not a text file "
                           f"({binary_reason((d / 'noise.txt').read_bytes()[:1 << 16])})",
                           f"notice: skipping {d / 'weights.txt'}: not a text file (NUL bytes in its first 8 KiB)"]
    only_binary = tmp_path / "only_binary"
    only_binary.mkdir()
    (only_binary / "x.txt").write_bytes((binaries / "weights.txt").read_bytes())
    with pytest.raises(ValueError, match="none of its 1 .txt/.jsonl files is text"):
        open_sources([only_binary])


@pytest.mark.full_data("every text file of the corpus (over 60)")
def test_real_text_is_never_taken_for_binary(shared_data):
    """Every text file in the shared data, the cp1252 Gutenberg novels included, passes the sniff."""
    files = [p for p in shared_data.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl", ".raw")]
    assert len(files) > 60
    for p in files:
        with open(p, "rb") as f:
            assert binary_reason(f.read(1 << 16)) is None, p


def test_nul_characters_inside_documents_are_removed_with_one_counting_notice(shared_data, tmp_path, capsys):
    rows = [json.loads(line) for line in
            (shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl").read_text().splitlines()[:30]]
    texts = [r["text"] for r in rows]
    dirty = [t[:100] + "\0" + t[100:] if i in (3, 7) else t for i, t in enumerate(texts)]
    dirty[7] = "\0\0" + dirty[7]
    jsonl = tmp_path / "nul.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in dirty))
    parquet = tmp_path / "nul.parquet"
    pq.write_table(pa.table({"text": dirty}), parquet)
    txt = tmp_path / "nul.txt"
    txt.write_text("\n".join(texts) + "\0 trailing")  # NUL after the first 8 KiB: text with a stray NUL
    for path, where in ((jsonl, "line 4"), (parquet, "row 3")):
        assert [d for s in open_sources([path]) for d in s.documents()] == texts
        err = capsys.readouterr().err.splitlines()
        assert err == [f"notice: {path}: removed 4 NUL characters from 2 documents (first at {where}); "
                       "NUL is not text"]
    assert [d for s in open_sources([txt]) for d in s.documents()] == ["\n".join(texts) + " trailing"]
    assert "removed 1 NUL character from 1 document" in capsys.readouterr().err
    # prepare: the tokenizer is trained in 2 worker processes and the encoder reads the file again: one notice
    m = prepare([jsonl], tmp_path / "out", vocab_size=300, val_tokens=2000, num_workers=2, progress=False)
    err = capsys.readouterr().err
    assert err.count("NUL character") == 1 and m["total_documents"] == 30
    tok = load_tokenizer(tmp_path / "out" / "tokenizer")
    assert all(0 not in tok.token_bytes(i) for i in range(256, tok.vocab_size))  # no merge learned a NUL


def test_a_text_field_that_is_not_a_string_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": 3.5}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: 'text' is a float, not a string") as e:
        [d for s in open_sources([bad]) for d in s.documents()]
    one_line(str(e.value))


# -- 4. vocabulary sizes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab, message", [(0, "--vocab-size 0 is smaller than 256 bytes + 1 special token; "
                                                "use --vocab-size >= 257"),
                                            (256, "use --vocab-size >= 257"),
                                            (-5, "use --vocab-size >= 257"),
                                            (2**31 + 1, "cannot be stored"),
                                            (10**12, "at most 2**31")])
def test_impossible_vocab_sizes_are_refused_before_any_work(shakespeare, tmp_path, vocab, message):
    with pytest.raises(ValueError, match="vocab-size") as e:
        prepare([shakespeare], tmp_path / "out", vocab_size=vocab, progress=False)
    assert message in one_line(str(e.value))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="vocab-size"):
        BPETokenizer.train([shakespeare], vocab_size=vocab, progress=False)


def test_cli_vocab_size_zero_is_an_error_not_the_default(shakespeare, tmp_path):
    r = cli("--source", shakespeare, "--out", tmp_path / "o", "--vocab-size", 0)
    assert r.returncode == 1 and "--vocab-size 0 is smaller than 256" in last_error_line(r)


def test_a_vocab_bigger_than_the_corpus_allows_stops_with_a_notice(shakespeare, tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text(read_text(shakespeare)[:100_000])
    m = prepare([small], tmp_path / "out", vocab_size=10_000_000, num_workers=1, progress=False)
    notices = [line for line in capsys.readouterr().err.splitlines() if "asked" in line]
    assert len(notices) == 1 and notices[0].startswith(f"notice: vocabulary of {m['vocab_size']:,} tokens, not the "
                                                       "10,000,000 asked") and "no pair of tokens" in notices[0]
    assert 300 < m["vocab_size"] < 20_000 and m["dtype"] == "uint16" and m["options"]["train_vocab_size"] == 10**7
    again = prepare([small], tmp_path / "out", vocab_size=10_000_000, progress=False)  # the same command: done
    assert again == load_manifest(tmp_path / "out")


# -- 6. a split shorter than one window is found at start-up, with the fix -------------------------------------------

def test_val_split_shorter_than_a_window_names_both_fixes(ts_ref):
    val_tokens = load_manifest(ts_ref)["shards"][0]["tokens"]
    with pytest.raises(ValueError) as e:
        ShardLoader(ts_ref, batch_size=4, seq_len=val_tokens, split="val", shuffle=False)
    msg = one_line(str(e.value))
    assert msg.startswith(f"val split of {ts_ref} has {val_tokens:,} tokens, fewer than one window of seq_len + 1")
    assert f"a smaller --seq-len (at most {val_tokens - 1:,} for this data)" in msg
    assert "a larger --val-tokens" in msg
    assert ShardLoader(ts_ref, 1, val_tokens - 1, split="val").windows_per_epoch == 1  # the bound given is right


def test_train_split_too_short_for_the_world_size_says_so(tmp_path):
    for i, n in enumerate([5_000, 300]):
        write_shard(tmp_path / f"shard_{i:05d}.bin", np.arange(n) % 256, dtype="uint16")
    with pytest.raises(ValueError) as e:
        ShardLoader(tmp_path, 1, 256, split="train", rank=0, world_size=2, verbose=False)
    msg = one_line(str(e.value))
    assert "has 300 tokens, fewer than 2 windows of seq_len + 1 = 257 tokens (one per rank, world_size=2)" in msg
    assert "more training data" in msg
