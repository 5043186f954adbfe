"""prepare: real FineWeb-Edu documents -> tokenizer -> shards + manifest, resumable, refusing mixed tokenizers."""
import subprocess
import sys

import numpy as np
import pytest

import nano_core.prepare_encode as prepare_encode
import nano_core.prepare_out as prepare_out
from nano_core.data import ShardLoader
from nano_core.data_dir import load_manifest
from nano_core.shards import read_shard
from nano_core.prepare import prepare
from nano_io.sources import open_sources
from tokenizer import BPETokenizer, load_tokenizer

SHARD, VAL = 30_000, 40_000  # small shards so documents straddle shard boundaries


@pytest.fixture(scope="module")
def jsonl(shared_data):
    return shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl"


@pytest.fixture(scope="module")
def docs(jsonl):
    return [d for src in open_sources([jsonl]) for d in src.documents()]


@pytest.fixture(scope="module")
def tok_dir(jsonl, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok512")
    BPETokenizer.train([jsonl], vocab_size=512, progress=False).save(d)
    return d


@pytest.fixture(scope="module")
def reference(jsonl, tok_dir, tmp_path_factory):
    """One uninterrupted prepare with 2 worker processes: the bytes every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    prepare([jsonl], out, tokenizer=tok_dir, shard_tokens=SHARD, val_tokens=VAL, num_workers=2, progress=False)
    return out


def shard_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard_*.bin"))}


def split_docs(tokens, eot):
    """Token stream -> documents; each must start with the end-of-text id."""
    assert tokens[0] == eot
    cuts = np.flatnonzero(tokens == eot)
    return np.split(tokens, cuts[1:])


def test_shards_decode_back_to_the_documents_with_separators(reference, docs, tok_dir):
    tok = load_tokenizer(tok_dir)
    m = load_manifest(reference)
    files = [reference / s["file"] for s in m["shards"]]
    stream = np.concatenate([read_shard(f) for f in files])
    pieces = split_docs(stream, tok.eot_id)
    assert len(pieces) == len(docs)
    assert all(tok.decode(p[1:].tolist()) == d for p, d in zip(pieces, docs))
    # layout: val = whole documents from the start until VAL is reached; train shards of exactly SHARD tokens
    assert m["shards"][0]["split"] == "val" and m["shards"][0]["tokens"] >= VAL
    assert read_shard(files[1])[0] == tok.eot_id  # validation ended at a document boundary
    assert [s["tokens"] for s in m["shards"][1:-1]] == [SHARD] * (len(files) - 2)
    assert 0 < m["shards"][-1]["tokens"] <= SHARD
    assert [s["tokens"] for s in m["shards"]] == [len(read_shard(f)) for f in files]
    assert m["total_documents"] == sum(s["documents"] for s in m["shards"]) == len(docs)
    assert m["total_tokens"] == len(stream)
    assert (m["vocab_size"], m["eot_id"], m["dtype"], m["shard_version"]) == (512, tok.eot_id, "uint16", 1)
    assert m["tokenizer_hash"] == tok.hash and m["complete"] and m["created"] and m["sources"]
    assert m["text_bytes"] == sum(len(d.encode()) for d in docs)
    assert load_tokenizer(reference / "tokenizer").hash == tok.hash
    loader = ShardLoader(reference, batch_size=4, seq_len=64)
    assert loader.next_batch().shape == (4, 65) and loader.tokenizer.hash == tok.hash


def test_interrupted_prepare_resumes_to_byte_identical_shards(reference, jsonl, tok_dir, tmp_path):
    def stop_after_first_train_shard(entry):
        if entry["split"] == "train":
            raise KeyboardInterrupt
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # one worker here, two in the reference: timing must not matter
        prepare([jsonl], out, tokenizer=tok_dir, shard_tokens=SHARD, val_tokens=VAL, num_workers=1,
                progress=False, on_shard=stop_after_first_train_shard)
    m = load_manifest(out)
    assert not m["complete"] and len(m["shards"]) == 2
    assert m["resume"]["next_offset"] > 0  # the cut fell inside a document: the hard case is exercised
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard_00000.bin", "shard_00001.bin",
                                                      "tokenizer"]  # no temp files, no partial shard
    with pytest.raises(ValueError, match="did not finish"):
        ShardLoader(out, 2, 16)
    (out / ".shard_00002.bin.x1y2.tmp").write_bytes(b"half a shard from a killed run")
    prepare([jsonl], out, tokenizer=tok_dir, shard_tokens=SHARD, val_tokens=VAL, num_workers=2, progress=False)
    assert shard_bytes(out) == shard_bytes(reference)
    assert load_manifest(out)["shards"] == load_manifest(reference)["shards"]
    assert not list(out.glob(".*"))  # the stale temp file was cleared


def test_interrupt_after_the_last_shard_completes_without_extra_shards(reference, jsonl, tok_dir, tmp_path):
    def stop_at_short_last_shard(entry):
        if entry["split"] == "train" and entry["tokens"] < SHARD:
            raise KeyboardInterrupt
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        prepare([jsonl], out, tokenizer=tok_dir, shard_tokens=SHARD, val_tokens=VAL, progress=False,
                on_shard=stop_at_short_last_shard)
    assert not load_manifest(out)["complete"]
    m = prepare([jsonl], out, tokenizer=tok_dir, shard_tokens=SHARD, val_tokens=VAL, progress=False)
    assert m["complete"] and m["shards"] == load_manifest(reference)["shards"]
    assert shard_bytes(out) == shard_bytes(reference)


def test_rerun_with_another_tokenizer_or_options_is_refused(reference, jsonl, tmp_path):
    other = tmp_path / "tok300"
    BPETokenizer.train([jsonl], vocab_size=300, progress=False).save(other)
    before = shard_bytes(reference)
    with pytest.raises(ValueError, match="different tokenizer") as e:
        prepare([jsonl], reference, tokenizer=other, shard_tokens=SHARD, val_tokens=VAL, progress=False)
    assert "another --out" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="different tokenizer"):  # asking to train one is a different tokenizer too
        prepare([jsonl], reference, vocab_size=300, shard_tokens=SHARD, val_tokens=VAL, progress=False)
    with pytest.raises(ValueError, match="different shard_tokens"):
        prepare([jsonl], reference, tokenizer=reference / "tokenizer", shard_tokens=SHARD + 1, val_tokens=VAL,
                progress=False)
    assert shard_bytes(reference) == before
    # the same command again is a no-op that returns the finished manifest
    again = prepare([jsonl], reference, tokenizer=reference / "tokenizer", shard_tokens=SHARD, val_tokens=VAL,
                    progress=False)
    assert again == load_manifest(reference) and shard_bytes(reference) == before


def test_tiktoken_and_python_encoders_write_identical_shards(jsonl, tok_dir, tmp_path):
    kw = dict(tokenizer=tok_dir, shard_tokens=7000, val_tokens=5000, num_workers=1, progress=False, max_docs=25)
    prepare([jsonl], tmp_path / "tt", encoder="tiktoken", **kw)
    prepare([jsonl], tmp_path / "py", encoder="python", **kw)
    assert shard_bytes(tmp_path / "tt") == shard_bytes(tmp_path / "py") != {}


def test_uint32_variant_through_prepare_and_loader(jsonl, docs, tok_dir, tmp_path, monkeypatch):
    # a vocabulary over 65,536 would take minutes to train here; force the wide dtype the same code path picks
    monkeypatch.setattr(prepare_out, "shard_dtype", lambda vocab_size: "uint32")
    m = prepare([jsonl], tmp_path, tokenizer=tok_dir, shard_tokens=9000, val_tokens=4000, num_workers=1,
                progress=False, max_docs=12)
    assert (m["dtype"], m["shard_version"]) == ("uint32", 2)
    header = np.fromfile(tmp_path / "shard_00001.bin", dtype="<i4", count=3)
    assert header[1] == 2
    tok = load_tokenizer(tok_dir)
    stream = np.concatenate([read_shard(tmp_path / s["file"]) for s in m["shards"]])
    assert stream.dtype == np.uint32
    assert [tok.decode(p[1:].tolist()) for p in split_docs(stream, tok.eot_id)] == docs[:12]
    batch = ShardLoader(tmp_path, 2, 32, shuffle=False).next_batch()
    assert batch.dtype == np.int32 and np.array_equal(batch[0], read_shard(tmp_path / "shard_00001.bin")[:33])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "nano_core.prepare", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.e2e
def test_cli_trains_tokenizer_and_writes_loadable_shards(jsonl, docs, tmp_path):
    out = tmp_path / "fw"
    r = run_cli("--source", jsonl, "--out", out, "--vocab-size", 512, "--shard-tokens", 100_000,
                "--val-tokens", 30_000, "--workers", 2)
    assert r.returncode == 0, r.stderr
    assert "prepared" in r.stdout and "MB/s" in r.stdout
    assert "MB/s" in r.stderr  # the tqdm bar
    m = load_manifest(out)
    assert m["vocab_size"] == 512 and m["total_documents"] == len(docs) and len(m["shards"]) >= 3
    loader = ShardLoader(out, batch_size=2, seq_len=128)
    assert loader.tokenizer.vocab_size == 512 and loader.next_batch().max() < 512
    r = run_cli("--source", jsonl, "--out", out, "--vocab-size", 512, "--shard-tokens", 100_000,
                "--val-tokens", 30_000)
    assert r.returncode == 0 and "already prepared" in r.stdout
    r = run_cli("--source", jsonl, "--out", out, "--vocab-size", 1024, "--shard-tokens", 100_000,
                "--val-tokens", 30_000)
    assert r.returncode != 0 and r.stderr.startswith("error:") and "different tokenizer" in r.stderr


def test_cli_bad_input_is_a_one_line_error(jsonl, tok_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases = {
        "no such file": ["--source", tmp_path / "missing.jsonl", "--out", tmp_path / "a"],
        "empty file": ["--source", empty, "--out", tmp_path / "b"],
        "shard-tokens must be a positive integer": ["--source", jsonl, "--out", tmp_path / "c", "--shard-tokens", 0],
        "lower --val-tokens": ["--source", jsonl, "--out", tmp_path / "d", "--tokenizer", tok_dir,
                               "--val-tokens", 10**8, "--workers", 1, "--quiet"],
        "contradicts the given tokenizer": ["--source", jsonl, "--out", tmp_path / "e", "--tokenizer", tok_dir,
                                            "--vocab-size", 1000],
    }
    for message, args in cases.items():
        r = run_cli(*args)
        assert r.returncode != 0
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("error:") and message in lines[-1], (message, r.stderr)
        assert "Traceback" not in r.stderr


def test_document_stream_mixes_sources_in_proportion_so_val_matches_train(jsonl, shared_data):
    """The val shard is a prefix of the document stream: every prefix must mix the sources as the whole corpus does
    (read source after source, val would be all FineWeb and train all novels)."""
    novels = sorted((shared_data / "gutenberg").glob("pg*.txt"))[:3]
    sources = open_sources([jsonl, *novels])
    origin, biggest = {}, 0.0  # text -> its source; the largest single document as a fraction of its source
    sizes = [src.num_bytes() for src in sources]
    for k, src in enumerate(sources):
        for text in src.documents():
            origin[text] = k
            biggest = max(biggest, len(text) / sizes[k])
    stream = [text for _, text in prepare_encode.interleaved_documents(sources)]
    assert sorted(stream) == sorted(origin)  # every document exactly once
    assert {origin[t] for t in stream[:len(sources)]} == set(range(len(sources)))  # every source starts at once
    total = [sum(len(t) for t in origin if origin[t] == k) for k in range(len(sources))]
    read = [0] * len(sources)
    for n, text in enumerate(stream):
        read[origin[text]] += len(text)
        frac = [r / s for r, s in zip(read, sizes)]
        live = [f for f, r, t in zip(frac, read, total) if r < t]  # sources not yet exhausted
        # no source runs ahead of an unfinished one by more than one document's share of itself
        assert max(frac) - min(live or frac) <= biggest + 1e-9, f"after document {n}: fractions read {frac}"


def test_cli_takes_every_source_when_source_is_repeated(jsonl, docs, tmp_path):
    """`--source A --source B` (as the train commands take it) prepares A and B, not only the last one."""
    text = tmp_path / "extra.txt"
    text.write_text("A document of its own, from a second source, long enough to be kept.\n" * 20)
    out = tmp_path / "two"
    r = run_cli("--source", jsonl, "--source", text, "--out", out, "--vocab-size", 512, "--val-tokens", 30_000)
    assert r.returncode == 0, r.stderr
    assert load_manifest(out)["total_documents"] == len(docs) + 1
