"""Shard format and ShardLoader. Tokens here are UTF-8 bytes of real text (ids < 256) so these tests need no
tokenizer; where a window must be identified by its content, shards hold position-unique ids instead."""
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from nano_core.data import ShardLoader, unigram_entropy
from nano_core.data_dir import default_data_dir, load_manifest
from nano_core.shards import HEADER_BYTES, MAGIC, read_header, read_shard, write_shard

from helpers import make_dir, unique_shards


@pytest.fixture(scope="module")
def text_bytes(shared_data):
    return np.frombuffer((shared_data / "fineweb_edu" / "sample-10BT-281docs.txt").read_bytes(), dtype=np.uint8)


def one_epoch(loader):
    """This rank's windows for one epoch, identified by their first token."""
    loader.batch_size = 1
    return [int(loader.next_batch()[0, 0]) for _ in range(loader.rank_windows_per_epoch)]


# -- format --------------------------------------------------------------------------------------------------

def test_uint16_shard_round_trip_keeps_real_text_bytes(tmp_path, text_bytes):
    path = write_shard(tmp_path / "s.bin", text_bytes)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert (header[0], header[1], header[2]) == (MAGIC, 1, len(text_bytes)) and not header[3:].any()
    assert path.stat().st_size == HEADER_BYTES + 2 * len(text_bytes)
    toks = read_shard(path)
    assert toks.dtype == np.uint16 and np.array_equal(toks, text_bytes)
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed, not left behind


def test_uint32_variant_round_trip_with_ids_beyond_uint16(tmp_path, text_bytes):
    toks = text_bytes.astype(np.uint32) * 400  # ids up to ~100k: do not fit uint16
    path = write_shard(tmp_path / "s.bin", toks)
    assert np.fromfile(path, dtype="<i4", count=2)[1] == 2
    got = read_shard(path)
    assert got.dtype == np.uint32 and np.array_equal(got, toks)
    with pytest.raises(ValueError, match="does not fit uint16"):
        write_shard(tmp_path / "t.bin", toks, dtype="uint16")


def test_llmc_llama3_uint32_header_is_read(tmp_path):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240801, 7, 5]
    path = tmp_path / "llama.bin"
    path.write_bytes(header.tobytes() + np.array([1, 2, 128000, 4, 5], dtype=np.uint32).tobytes())
    assert read_shard(path).tolist() == [1, 2, 128000, 4, 5]


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:HEADER_BYTES + 100], "truncated"),
    (lambda b: b + b"\0\0", "trailing bytes"),
    (lambda b: b[:500], "shorter than the 1024-byte shard header"),
    (lambda b: np.int32(12345).tobytes() + b[4:], "bad magic 12345"),
    (lambda b: b[:4] + np.int32(9).tobytes() + b[8:], "unsupported shard version 9"),
])
def test_bad_headers_give_one_line_errors_naming_the_file(tmp_path, text_bytes, corrupt, message):
    good = write_shard(tmp_path / "good.bin", text_bytes[:1000]).read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(corrupt(good))
    with pytest.raises(ValueError, match=message) as e:
        read_shard(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_foreign_files_are_refused_by_name(tmp_path, shared_data):
    for foreign in [shared_data / "tinyshakespeare" / "input.txt", shared_data / "hellaswag" / "hellaswag_val.jsonl"]:
        with pytest.raises(ValueError, match="not an llm.c/nano token shard") as e:
            read_header(foreign)
        assert str(foreign) in str(e.value)
    # a foreign file among the shards stops the loader with its name
    make_dir(tmp_path, [np.arange(100), np.arange(1000)])
    (tmp_path / "shard_00002.bin").write_bytes((shared_data / "tinyshakespeare" / "input.txt").read_bytes()[:5000])
    with pytest.raises(ValueError, match="shard_00002.bin: bad magic"):
        ShardLoader(tmp_path, 2, 8, verbose=False)


def test_token_id_at_or_above_manifest_vocab_is_refused(tmp_path, text_bytes):
    make_dir(tmp_path, [text_bytes[:3000], text_bytes[3000:20000]], vocab_size=200)  # bytes go up to 255
    loader = ShardLoader(tmp_path, 2, 16)
    assert "vocab_size=200 from manifest.json" in loader.vocab_check
    with pytest.raises(ValueError, match=r"shard_00001.bin: token id \d+ >= vocab_size 200"):
        loader.next_batch()
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ValueError, match="vocab_size 100"):
        ShardLoader(tmp_path, 2, 16, vocab_size=100, verbose=False).next_batch()
    ShardLoader(tmp_path, 2, 16, vocab_size=256, verbose=False).next_batch()  # the right bound passes


def test_llmc_spec_file_without_manifest_is_read_and_says_ids_are_unchecked(tmp_path, text_bytes, capsys):
    # written by hand from the published spec, not with write_shard
    for name, toks in [("fineweb_val_000000.bin", text_bytes[:5000]), ("fineweb_train_000001.bin", text_bytes[5000:])]:
        header = np.zeros(256, dtype=np.int32)
        header[0], header[1], header[2] = 20240520, 1, len(toks)
        with open(tmp_path / name, "wb") as f:
            f.write(header.tobytes())
            f.write(toks.astype(np.uint16).tobytes())
    loader = ShardLoader(tmp_path, batch_size=4, seq_len=64, shuffle=False)
    assert "NOT checked" in capsys.readouterr().err
    batch = loader.next_batch()
    assert batch.dtype == np.int32 and batch.shape == (4, 65)
    assert np.array_equal(batch[0], text_bytes[5000:5065])  # train = the file named *train*
    val = ShardLoader(tmp_path, 1, 64, split="val", shuffle=False, vocab_size=256, verbose=False)
    assert "vocab_size=256 (argument)" in val.vocab_check
    assert np.array_equal(val.next_batch()[0], text_bytes[:65])
    # a glob or a single file works too (llm.c's `-i dir/fineweb_train_*.bin`)
    assert ShardLoader(tmp_path / "fineweb_train_*.bin", 4, 64, shuffle=False, verbose=False).files == \
        [tmp_path / "fineweb_train_000001.bin"]


def test_missing_directory_and_manifest_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `python -m nano_core.prepare"):
        ShardLoader(tmp_path / "nope", 1, 8)
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_manifest(tmp_path)


# -- loader ----------------------------------------------------------------------------------------------------

def test_batches_are_int32_windows_of_the_shard(tmp_path, text_bytes):
    make_dir(tmp_path, [text_bytes[:4000], text_bytes[4000:200000]], vocab_size=256)
    loader = ShardLoader(tmp_path, batch_size=8, seq_len=128, seed=3)
    train = read_shard(tmp_path / "shard_00001.bin")
    for _ in range(5):
        batch = loader.next_batch()
        assert batch.dtype == np.int32 and batch.shape == (8, 129)
        for row in batch:  # every row is the shard slice starting at some multiple of T
            starts = [s for s in range(0, len(train) - 128, 128) if np.array_equal(train[s:s + 129], row)]
            assert starts
    seq = ShardLoader(tmp_path, batch_size=2, seq_len=128, shuffle=False)
    assert np.array_equal(seq.next_batch(), np.stack([train[0:129], train[128:257]]))


def test_epoch_visits_each_window_once_then_reshuffles(tmp_path):
    lengths = [500, 1001, 3000, 2049, 17]  # shard 0 = val; uneven shards, one too short for any window
    make_dir(tmp_path, unique_shards(lengths), vocab_size=10_000)
    loader = ShardLoader(tmp_path, batch_size=1, seq_len=64, seed=7)
    starts = sorted(sum(lengths[:i]) + 64 * w for i in range(1, len(lengths)) for w in range((lengths[i] - 1) // 64))
    first, second = one_epoch(loader), one_epoch(loader)
    assert sorted(first) == starts and sorted(second) == starts  # every window once per epoch
    assert first != second  # the next epoch is a new permutation
    assert loader.epoch == 1
    assert one_epoch(ShardLoader(tmp_path, 1, 64, seed=7)) == first  # seeded: same seed, same order
    assert one_epoch(ShardLoader(tmp_path, 1, 64, seed=8)) != first
    assert one_epoch(ShardLoader(tmp_path, 1, 64, shuffle=False)) == starts


def test_rank_streams_are_disjoint_and_cover_the_epoch_but_the_remainder(tmp_path):
    lengths = [300, 2000, 1500, 810]  # 133 windows of 32: one left over for 3 ranks
    make_dir(tmp_path, unique_shards(lengths), vocab_size=5000)
    single = one_epoch(ShardLoader(tmp_path, 1, 32, seed=1))
    loaders = [ShardLoader(tmp_path, 1, 32, seed=1, rank=r, world_size=3) for r in range(3)]
    streams = [one_epoch(x) for x in loaders]
    assert len(single) % 3 != 0  # the case with a remainder
    assert len({len(s) for s in streams}) == 1  # every rank holds the same number: they wrap at the same step
    kept = len(single) - len(single) % 3
    # together they are the single process's epoch minus its last (windows mod 3) windows, none twice
    assert sorted(sum(streams, [])) == sorted(single[:kept])


def test_resume_mid_epoch_reproduces_the_batch_sequence(tmp_path, text_bytes):
    make_dir(tmp_path, [text_bytes[:5000], text_bytes[5000:60000], text_bytes[60000:90000]], vocab_size=256)
    a = ShardLoader(tmp_path, batch_size=4, seq_len=100, seed=11)
    per_epoch = a.batches_per_epoch
    for _ in range(per_epoch // 2):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # must survive a JSON checkpoint
    expected = [a.next_batch() for _ in range(per_epoch + 5)]  # runs past the epoch boundary
    b = ShardLoader(tmp_path, batch_size=4, seq_len=100, seed=11)
    b.load_state_dict(state)
    assert all(np.array_equal(x, y) for x, y in zip(expected, [b.next_batch() for _ in range(per_epoch + 5)]))
    with pytest.raises(ValueError, match="seq_len=100"):
        ShardLoader(tmp_path, 4, 64, seed=11).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=11"):
        ShardLoader(tmp_path, 4, 100, seed=12).load_state_dict(state)


def test_pickled_loader_reopens_its_memmaps_in_another_process(tmp_path, text_bytes):
    make_dir(tmp_path, [text_bytes[:3000], text_bytes[3000:50000]], vocab_size=256)
    loader = ShardLoader(tmp_path, batch_size=2, seq_len=50, seed=5)
    loader.next_batch()  # opens a memmap here
    blob = pickle.dumps(loader)
    assert pickle.loads(blob)._maps == {}  # the memmap is not shipped; the state is
    expected = loader.next_batch()
    code = ("import pickle,sys; l=pickle.loads(sys.stdin.buffer.read()); "
            "sys.stdout.buffer.write(l.next_batch().tobytes())")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True).stdout
    assert np.array_equal(np.frombuffer(out, dtype=np.int32).reshape(2, 51), expected)


def test_unigram_entropy_matches_direct_count(tmp_path, text_bytes):
    train = text_bytes[10000:]
    make_dir(tmp_path, [text_bytes[:10000], train], vocab_size=256)
    p = np.bincount(train) / len(train)
    p = p[p > 0]
    assert unigram_entropy(tmp_path) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)
    assert 3.0 < unigram_entropy(tmp_path) < np.log(256)  # English bytes: well below uniform


def test_default_data_dir_follows_nano_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANO_CACHE", str(tmp_path))
    assert default_data_dir("fineweb-edu", 8192) == tmp_path / "data" / "fineweb-edu-v8192"
    assert default_data_dir("../shared/data/x y", 512).parent == tmp_path / "data"
    monkeypatch.delenv("NANO_CACHE")
    assert ".cache/nano/data" in str(default_data_dir("builtin", 512))
