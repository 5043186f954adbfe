"""Our trainer against the reference trainers on real text: rustbpe merge for merge, HF on compression."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import BPETokenizer
from tokenizer.patterns import PATTERNS

import rustbpe  # dev extra: a missing trainer must fail the run, not skip it


def train_rustbpe(texts, vocab_size, pattern):
    rt = rustbpe.Tokenizer()
    rt.train_from_iterator(iter(texts), vocab_size, pattern=pattern)
    return rt


def rust_vocab(rt) -> list[bytes]:
    """rustbpe's token bytes in id order (it exposes its merges as ranks: token bytes -> id)."""
    ranks = dict(rt.get_mergeable_ranks())
    assert sorted(ranks.values()) == list(range(len(ranks))), "rustbpe made the same token twice"
    return [b for b, _ in sorted(ranks.items(), key=lambda kv: kv[1])]


def assert_same_merges(ours: BPETokenizer, rt, probe: str):
    # Merge k creates id 256 + k. Equal bytes for every id in order means each merge produced the same token at
    # the same step; equal encodings of a probe text through both trainers' own encoders (rustbpe encodes with
    # its (left, right) merge table) confirm the pairs themselves.
    assert [ours.token_bytes(i) for i in range(256 + len(ours.merges))] == rust_vocab(rt)
    assert ours.encode(probe) == rt.encode(probe)


@pytest.fixture(scope="module")
def texts(shared_data):
    rows = (shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl").read_text(encoding="utf-8").splitlines()
    wiki = (shared_data / "wikitext2" / "wiki.valid.raw").read_text(encoding="utf-8")
    return [json.loads(r)["text"] for r in rows] + wiki.split("\n \n")  # ~2.3 MB of real English


@pytest.fixture(scope="module")
def heldout(shared_data):
    return (shared_data / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_merges_identical_to_rustbpe_in_order_on_real_text(texts, heldout, pattern):
    ours = BPETokenizer.train(texts, vocab_size=3000, pattern=pattern, special_tokens=(), progress=False)
    assert len(ours.merges) == 3000 - 256
    assert_same_merges(ours, train_rustbpe(texts, 3000, PATTERNS[pattern]), heldout[:200_000])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(alphabet="aab bc\n", min_size=1, max_size=30), min_size=1, max_size=20))
def test_overlapping_runs_match_rustbpe(docs):
    # Runs like "aaaa" are where careless count updates go wrong: ties and overlaps everywhere.
    ours = BPETokenizer.train(docs, vocab_size=300, special_tokens=(), progress=False, num_workers=1)
    rt = train_rustbpe(docs, 300, PATTERNS["gpt4"])
    assert [ours.token_bytes(i) for i in range(256 + len(ours.merges))] == rust_vocab(rt)[:256 + len(ours.merges)]


def test_compression_matches_hf_bpe_trainer_within_0_1_percent(texts, heldout):
    import tokenizers  # bench extra: installed in CI, so never skipped
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    vocab = 4096
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERNS["gpt4"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=0, show_progress=False))
    ours = BPETokenizer.train(texts, vocab_size=vocab, progress=False)
    assert hf.get_vocab_size() == ours.vocab_size == vocab
    n_bytes = len(heldout.encode("utf-8"))
    ours_bpt = n_bytes / len(ours.encode(heldout))
    hf_bpt = n_bytes / len(hf.encode(heldout).ids)
    assert abs(ours_bpt / hf_bpt - 1) < 1e-3, (ours_bpt, hf_bpt)
