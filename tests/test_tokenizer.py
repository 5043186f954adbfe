"""Hand-written byte-level BPE: encode/decode, specials, save/load, exports, char tokenizer, errors, CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import BPETokenizer, CharTokenizer, export_hf, export_tiktoken, load_tiktoken, load_tokenizer
from tokenizer.patterns import PATTERNS


@pytest.fixture(scope="module")
def tok(shared_data):
    # ~1.2 MB of FineWeb-edu + TinyShakespeare at a small vocab: quick to train, enough merges to matter.
    files = [shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl", shared_data / "tinyshakespeare" / "input.txt"]
    return BPETokenizer.train([str(f) for f in files], vocab_size=2048, special_tokens=("<|endoftext|>", "<|pad|>"),
                              progress=False)


@pytest.fixture(scope="module")
def heldout(shared_data):
    return (shared_data / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")


def test_vocab_layout_bytes_then_merges_then_specials(tok):
    assert tok.vocab_size == 2048
    assert [tok.token_bytes(i) for i in range(256)] == [bytes([i]) for i in range(256)]
    assert tok.special_tokens == {"<|endoftext|>": 2046, "<|pad|>": 2047}
    assert tok.eot_id == 2046
    lengths = tok.token_byte_lengths()
    assert lengths.dtype == np.int32 and lengths.shape == (2048,)
    assert lengths[2046] == lengths[2047] == 0 and lengths[:256].tolist() == [1] * 256
    assert all(lengths[i] == len(tok.token_bytes(i)) for i in range(256, 2046))


def test_encode_does_not_parse_special_token_strings(tok):
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eot_id not in ids and tok.decode(ids) == "a<|endoftext|>b"
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"


def test_bits_per_byte_lengths_add_up_to_utf8_bytes(tok, heldout):
    text = heldout[:50_000]
    ids = tok.encode(text)
    assert int(tok.token_byte_lengths()[ids].sum()) == len(text.encode("utf-8"))


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.text(),                                                                   # any valid Unicode (no surrogates)
    st.text(alphabet="😀🎉👍🏽🇫🇷 \u200d", max_size=40),                          # emoji, ZWJ, flags, skin tones
    st.text(alphabet="日本語の文章中文汉字한국어 ", max_size=40),                   # CJK
    st.text(alphabet="ae\u0301\u0308\u0327o\u0303 ", max_size=40),               # combining marks
    st.text(alphabet=" \t\n\r\u00a0\u3000\u2028", max_size=40),                  # whitespace runs
    st.text(alphabet="0123456789", max_size=40),                                 # digit-only strings
    st.text(alphabet="ab'sS ll\n,.!0123é中😀", max_size=60),                      # mixed
))
def test_round_trip_is_exact_for_every_valid_unicode_string(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < 2046 for i in ids)


def test_lone_surrogate_is_a_clear_value_error(tok):
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("ok \ud800 no")


def test_encode_batch_matches_encode_and_uses_workers(tok, heldout):
    texts = [heldout[i:i + 40_000] for i in range(0, 1_200_000, 40_000)]  # > 1 MB: the parallel path
    assert tok.encode_batch(texts, num_workers=2) == [tok.encode(t) for t in texts]


def test_save_load_round_trip_and_hash(tok, tmp_path, heldout):
    tok.save(tmp_path)
    d = json.loads((tmp_path / "nano_tokenizer.json").read_text())
    assert d["format"] == "nano-bpe" and d["version"] == 1 and d["pattern_name"] == "gpt4"
    back = load_tokenizer(tmp_path)
    assert back.merges == tok.merges and back.special_tokens == tok.special_tokens and back.hash == tok.hash
    assert back.encode(heldout[:20_000]) == tok.encode(heldout[:20_000])
    other = BPETokenizer(tok.merges[:-1], tok.pattern, tok.special_tokens)
    assert other.hash != tok.hash
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text('{"format": "nope"}')
    with pytest.raises(ValueError, match="unknown tokenizer format"):
        load_tokenizer(tmp_path / "bad")


def test_ours_hf_export_and_tiktoken_export_give_identical_ids_on_1mb(tok, heldout, tmp_path):
    import tokenizers  # bench extra: installed in CI, so never skipped
    text = heldout  # 1.29 MB of WikiText-2 test, never seen in training
    ours = tok.encode(text)
    hf = tokenizers.Tokenizer.from_file(str(export_hf(tok, tmp_path / "hf")))
    assert hf.encode(text).ids == ours
    assert hf.decode(ours) == text
    assert hf.token_to_id("<|endoftext|>") == tok.eot_id
    enc = load_tiktoken(export_tiktoken(tok, tmp_path / "tt"))
    assert enc.encode_ordinary(text) == ours
    assert enc.encode("<|endoftext|>", allowed_special="all") == [tok.eot_id]
    assert tok.to_tiktoken().encode_ordinary(text) == ours  # the in-memory Encoding too


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_tiktoken_export_agrees_on_random_unicode(tok, text):
    enc = tok.to_tiktoken() if not hasattr(tok, "_tt") else tok._tt
    tok._tt = enc
    assert enc.encode_ordinary(text) == tok.encode(text)


@pytest.mark.parametrize("name", ["gpt4", "gpt4-2digit", "gpt2"])
def test_patterns_split_numbers_as_documented(name):
    import regex
    chunks = regex.findall(PATTERNS[name], "In 12345 years we're 2 THERE'S")
    digits = {"gpt4": ["123", "45"], "gpt4-2digit": ["12", "34", "5"], "gpt2": [" 12345"]}[name]
    assert [c for c in chunks if c.strip().isdigit()][:len(digits)] == digits


def test_char_tokenizer_interface_and_save_load(shared_data, tmp_path):
    path = shared_data / "tinyshakespeare" / "input.txt"
    ct = CharTokenizer.train([str(path)])
    text = path.read_text()
    assert ct.vocab_size == 65 + 1 and ct.eot_id == 65
    ids = ct.encode(text[:5000])
    assert ct.decode(ids) == text[:5000]
    assert ct.token_byte_lengths()[ct.eot_id] == 0
    ct.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, CharTokenizer) and back.encode("First Citizen") == ct.encode("First Citizen")
    assert back.hash == ct.hash
    with pytest.raises(ValueError, match="not in this character vocabulary"):
        ct.encode("日本")


def test_training_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="smaller than 256 bytes \\+ 1 special"):
        BPETokenizer.train(["builtin"], vocab_size=200, progress=False)
    with pytest.raises(FileNotFoundError, match="missing.txt: no such file"):
        BPETokenizer.train([str(tmp_path / "missing.txt")], vocab_size=300, progress=False)
    with pytest.raises(ValueError, match="empty corpus"):
        BPETokenizer.train(iter(["", ""]), vocab_size=300, progress=False)
    (tmp_path / "ws.txt").write_text("   \n\n  ")
    with pytest.raises(ValueError, match="no documents|empty corpus"):
        BPETokenizer.train([str(tmp_path / "ws.txt")], vocab_size=300, progress=False, num_workers=1)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"\x00garbage" * 20)
    with pytest.raises(ValueError, match="cannot read .*bad.parquet"):
        BPETokenizer.train([str(bad)], vocab_size=300, progress=False)


def test_inputs_as_texts_list_iterator_and_caps(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    docs = text.split("\n\n")
    a = BPETokenizer.train(docs, vocab_size=400, progress=False)             # list of texts, split over workers
    b = BPETokenizer.train(iter(docs), vocab_size=400, progress=False)       # iterator, in-process
    assert a.merges == b.merges
    stats = {}
    BPETokenizer.train(docs, vocab_size=300, max_chars=10_000, max_chars_per_doc=100, progress=False, stats=stats)
    assert stats["chars"] <= 10_000


@pytest.mark.e2e
def test_cli_end_to_end(shared_data, tmp_path):
    out = tmp_path / "tok"
    cmd = [sys.executable, "-m", "tokenizer.train", "--input", str(shared_data / "tinyshakespeare" / "input.txt"),
           "builtin", "--vocab-size", "600", "--out", str(out), "--pattern", "gpt4-2digit",
           "--special", "<|endoftext|>", "<|user|>", "--val", str(shared_data / "wikitext2" / "wiki.valid.raw"),
           "--export", "hf,tiktoken", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "bytes/token" in res.stdout and "unique chunks" in res.stdout
    tok = load_tokenizer(out)
    assert tok.vocab_size == 600 and tok.special_tokens["<|user|>"] == 599 and tok.pattern == PATTERNS["gpt4-2digit"]
    assert (out / "hf" / "tokenizer.json").is_file() and (out / "tiktoken" / "tokenizer.tiktoken").is_file()
    for args, msg in [(["--input", str(tmp_path / "nope")], "no such file"),
                      (["--input", "builtin", "--vocab-size", "100"], "smaller than 256")]:
        res = subprocess.run([sys.executable, "-m", "tokenizer.train", "--out", str(tmp_path / "x"), *args],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode != 0 and msg in res.stderr
        assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr


def test_hf_export_loads_in_transformers_fast_tokenizer_with_identical_ids(tok, heldout, tmp_path):
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_file=str(export_hf(tok, tmp_path / "hf")), eos_token="<|endoftext|>")
    text = heldout[:200_000]
    assert fast(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert fast.eos_token_id == tok.eot_id
    assert fast.decode(tok.encode(text)) == text
