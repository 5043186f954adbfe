"""Importing HF byte-level BPE tokenizer.json files (tokenizer.hf.load_hf_tokenizer): the same ids as HF itself on
~1.3 MB of held-out real text, nano -> HF -> nano identity, and one-line refusals of what nano cannot represent."""
import copy
import json
import pickle
import re
import unicodedata

import numpy as np
import pytest
import tokenizers  # bench extra: installed in CI, so never skipped
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

from tokenizer import BPETokenizer, export_hf, export_tiktoken, load_tiktoken, load_tokenizer
from tokenizer.hf import load_hf_tokenizer
from tokenizer.io import bytes_to_unicode
from tokenizer.patterns import PATTERNS

LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
          r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")  # Qwen2/3: single digits
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = 3000


@pytest.fixture(scope="module")
def train_docs(shared_data):
    # ~380 KB: the first 100 FineWeb-edu documents
    lines = (shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:100]]


@pytest.fixture(scope="module")
def heldout(shared_data):
    return (shared_data / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")  # 1.29 MB, never trained on


def train_hf(docs, kind: str) -> tokenizers.Tokenizer:
    """A HF tokenizer trained by HF: GPT-2 style, Llama-3 style (Split regex + ByteLevel), Qwen style (+ NFC)."""
    tok = tokenizers.Tokenizer(models.BPE())
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # use_regex=True: GPT-2's regex
        specials = ["<|endoftext|>"]
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3 if kind == "llama3" else QWEN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = LLAMA_SPECIALS if kind == "llama3" else QWEN_SPECIALS
        if kind == "qwen":
            tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(
        vocab_size=256 + MERGES + len(specials), special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok


def tiktoken_converted(docs, tmp_path) -> tokenizers.Tokenizer:
    """Llama 3's path to a tokenizer.json: tiktoken ranks -> transformers' TikTokenConverter (every split of a
    token is a merge, ignore_merges=true, Llama's special tokens)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter
    ranks = BPETokenizer.train(docs, vocab_size=256 + MERGES + 1, pattern=LLAMA3, progress=False)
    export_tiktoken(ranks, tmp_path / "tt")
    return TikTokenConverter(vocab_file=str(tmp_path / "tt" / "tokenizer.tiktoken"), pattern=LLAMA3,
                             extra_special_tokens=LLAMA_SPECIALS).converted()


@pytest.fixture(scope="module", params=["gpt2", "llama3", "qwen", "tiktoken"])
def hf_pair(request, train_docs, tmp_path_factory):
    """(kind, HF tokenizer, its tokenizer.json path, nano's import, order)."""
    tmp = tmp_path_factory.mktemp(request.param)
    hf = tiktoken_converted(train_docs, tmp) if request.param == "tiktoken" else train_hf(train_docs, request.param)
    hf.save(str(tmp / "tokenizer.json"))
    tok, order = load_hf_tokenizer(tmp)  # the directory (tokenizer.json inside)
    return request.param, hf, tmp / "tokenizer.json", tok, order


# ------------------------------------------------------------------------------------------------ agreement with HF
@pytest.mark.full_data("the whole 1.29 MB WikiText-2 test split")
def test_import_encodes_like_hf_on_heldout_text_and_decodes_back(hf_pair, heldout):
    kind, hf, path, tok, order = hf_pair
    assert order.dtype == np.int64 and order.shape == (tok.vocab_size,) and tok.vocab_size == hf.get_vocab_size()
    assert sorted(order.tolist()) == sorted(hf.get_vocab().values())  # a permutation of HF's ids
    ours = tok.encode(heldout)
    hf_ids = hf.encode(heldout, add_special_tokens=False).ids
    assert len(hf_ids) > 400_000
    assert order[ours].tolist() == hf_ids  # every token of 1.29 MB: no mismatch
    assert tok.decode(ours) == heldout == hf.decode(hf_ids)
    # every nano token is the HF token order[] names, byte for byte
    byte_of = {u: b for b, u in bytes_to_unicode().items()}
    for i in range(256 + len(tok.merges)):
        assert bytes(byte_of[c] for c in hf.id_to_token(int(order[i]))) == tok.token_bytes(i)


def test_import_matches_transformers_fast_tokenizer(hf_pair, heldout):
    from transformers import PreTrainedTokenizerFast
    kind, hf, path, tok, order = hf_pair
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path))
    text = heldout[:300_000]
    assert order[tok.encode(text)].tolist() == fast.encode(text, add_special_tokens=False)
    assert fast.decode(order[tok.encode(text)].tolist()) == text


def test_special_tokens_keep_their_names_and_the_document_separator_is_endoftext(hf_pair):
    kind, hf, path, tok, order = hf_pair
    names = {"gpt2": ["<|endoftext|>"], "qwen": QWEN_SPECIALS,
             # Llama 3 has no <|endoftext|>: its end of document <|end_of_text|> takes the name, its id stays
             "llama3": ["<|begin_of_text|>", "<|endoftext|>"], "tiktoken": ["<|begin_of_text|>", "<|endoftext|>"]}
    assert list(tok.special_tokens) == names[kind]
    hf_eot = "<|end_of_text|>" if kind in ("llama3", "tiktoken") else "<|endoftext|>"
    assert order[tok.eot_id] == hf.token_to_id(hf_eot)
    for name, i in tok.special_tokens.items():
        assert i >= 256 + len(tok.merges) and (name == "<|endoftext|>" or order[i] == hf.token_to_id(name))


def test_what_each_kind_needs(hf_pair, heldout):
    kind, hf, path, tok, order = hf_pair
    assert tok.pattern == {"gpt2": PATTERNS["gpt2"], "llama3": LLAMA3, "qwen": QWEN, "tiktoken": LLAMA3}[kind]
    assert tok.to_dict()["pattern_name"] == ("gpt2" if kind == "gpt2" else None)
    assert tok.normalizer == ("NFC" if kind == "qwen" else None)
    d = json.loads(path.read_text(encoding="utf-8"))
    if kind == "tiktoken":  # several merges per token (kept as merge_pairs, and needed), ignore_merges kept
        assert len(d["model"]["merges"]) > len(tok.merges) == MERGES and tok.ignore_merges
        assert tok.merge_pairs is not None and len(tok.merge_pairs) == len(d["model"]["merges"])
        one_each = BPETokenizer(tok.merges, tok.pattern, list(tok.special_tokens), ignore_merges=True)
        text = heldout[:50_000]
        assert order[one_each.encode(text)].tolist() != hf.encode(text).ids == order[tok.encode(text)].tolist()
        assert order[:256 + MERGES].tolist() == list(range(256 + MERGES))  # tiktoken ranks are the ids
    else:  # one merge per token in order: a plain nano BPE, HF's ids permuted (specials and the alphabet first)
        assert tok.merge_pairs is None and not tok.ignore_merges and len(tok.merges) == MERGES
        assert order[tok.special_tokens[list(tok.special_tokens)[0]]] == 0


def test_tiktoken_converted_import_matches_tiktoken_too(train_docs, heldout, tmp_path):
    hf = tiktoken_converted(train_docs, tmp_path)
    hf.save(str(tmp_path / "tokenizer.json"))
    tok, order = load_hf_tokenizer(tmp_path / "tokenizer.json")
    text = heldout[:300_000]
    assert order[tok.encode(text)].tolist() == load_tiktoken(tmp_path / "tt").encode_ordinary(text)


def test_nfc_normalizer_is_applied_like_hf(hf_pair, heldout):
    kind, hf, path, tok, order = hf_pair
    text = unicodedata.normalize("NFD", heldout[:400_000])  # accents as combining marks
    assert text != heldout[:400_000]
    ours = order[tok.encode(text)].tolist()
    assert ours == hf.encode(text, add_special_tokens=False).ids
    if kind == "qwen":
        assert tok.decode(tok.encode(text)) == heldout[:400_000]  # decode gives the NFC text, as HF's does


def test_added_tokens_that_are_not_special_are_refused_unless_asked(train_docs, tmp_path, heldout):
    hf = train_hf(train_docs[:20], "qwen")
    hf.add_tokens(["<tool_call>", "</tool_call>"])  # Qwen2.5 / Qwen3 have such tokens (special=false)
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"2 added tokens are not special \('<tool_call>', '</tool_call>'\).*"
                                         r"added_as_special=True") as e:
        load_hf_tokenizer(tmp_path)
    assert "\n" not in str(e.value)
    tok, order = load_hf_tokenizer(tmp_path, added_as_special=True)
    assert list(tok.special_tokens) == QWEN_SPECIALS + ["<tool_call>", "</tool_call>"]
    assert order[tok.special_tokens["</tool_call>"]] == hf.token_to_id("</tool_call>")
    text = heldout[:100_000]
    assert order[tok.encode(text)].tolist() == hf.encode(text).ids


def test_eos_chosen_by_eot_argument_or_tokenizer_config(train_docs, tmp_path):
    d = json.loads(train_hf(train_docs[:20], "llama3").to_str())
    for t in d["added_tokens"]:
        t["content"] = {"<|begin_of_text|>": "<s>", "<|end_of_text|>": "</s>"}[t["content"]]
    for name in ("<|begin_of_text|>", "<|end_of_text|>"):
        d["model"]["vocab"][{"<|begin_of_text|>": "<s>", "<|end_of_text|>": "</s>"}[name]] = \
            d["model"]["vocab"].pop(name)
    (tmp_path / "tokenizer.json").write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ValueError, match=r"no special token <\|endoftext\|> .*special tokens: <s>, </s>\); pass eot="):
        load_hf_tokenizer(tmp_path)
    tok, order = load_hf_tokenizer(tmp_path, eot="</s>")
    assert list(tok.special_tokens) == ["<s>", "<|endoftext|>"] and order[tok.eot_id] == d["model"]["vocab"]["</s>"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    assert load_hf_tokenizer(tmp_path)[0].hash == tok.hash
    with pytest.raises(ValueError, match=r"eot='<pad>' is not one of the special tokens"):
        load_hf_tokenizer(tmp_path, eot="<pad>")


# ------------------------------------------------------------------------------------------------ merge semantics
def hand_built(merges, ignore_merges=False) -> tokenizers.Tokenizer:
    """A tiny GPT-2-style HF tokenizer: the 256 bytes, the tokens the merges make (in order), <|endoftext|>."""
    names = list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in merges]
    vocab = {n: i for i, n in enumerate(dict.fromkeys(names))}
    tok = tokenizers.Tokenizer(models.BPE(vocab, [tuple(m.split(" ")) for m in merges], ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


@pytest.mark.parametrize("merges,ignore", [
    (["a b", "b c", "a bc"], True),   # "abc" is a token its own merges never reach: ignore_merges decides
    (["a b", "b c", "a bc"], False),
    (["a bc", "b c", "ab c", "a b"], False),  # a merge whose part is made by a later merge; two merges make "abc"
    (["a bc", "b c", "ab c", "a b"], True),
    (["b c", "a b", "ab c", "a bc", "c c", "cc c", "abc cc", "ab ccc", "abc c", "abcc c"], False),
])
def test_hand_built_merge_orders_encode_like_hf(merges, ignore, tmp_path):
    hf = hand_built(merges, ignore)
    hf.save(str(tmp_path / "tokenizer.json"))
    assert len(hf.encode("abc").ids) == (2 if merges == ["a b", "b c", "a bc"] and not ignore else 1)
    tok, order = load_hf_tokenizer(tmp_path)
    for text in ["abc", "abcabc", "ab bc abc", "aabbcc", "abcc", "abccc abcccc", "cab bca", "a b c ccc abcabcc"]:
        assert order[tok.encode(text)].tolist() == hf.encode(text).ids, text
    assert tok.ignore_merges == ignore


def test_imported_options_survive_save_load_pickle_and_hf_export(hf_pair, heldout, tmp_path):
    kind, hf, path, tok, order = hf_pair
    text = unicodedata.normalize("NFD", heldout[:150_000])
    assert load_tokenizer(tok.save(tmp_path / "nano")).hash == tok.hash == pickle.loads(pickle.dumps(tok)).hash
    again = tokenizers.Tokenizer.from_file(str(export_hf(tok, tmp_path / "hf")))  # nano ids, HF's behaviour
    assert again.encode(text).ids == tok.encode(text)
    tok2, order2 = load_hf_tokenizer(tmp_path / "hf")
    assert tok2.hash == tok.hash and order2.tolist() == list(range(tok.vocab_size))


# ------------------------------------------------------------------------------------------------ nano -> HF -> nano
@pytest.mark.parametrize("pattern", ["gpt4", "gpt2", "gpt4-2digit", r"\p{L}+|\p{N}|\s+|[^\s\p{L}\p{N}]+"])
def test_nano_export_imports_back_identical(train_docs, heldout, pattern, tmp_path):
    tok = BPETokenizer.train(train_docs, vocab_size=2048, pattern=pattern, special_tokens=("<|endoftext|>", "<|pad|>"),
                             progress=False)
    back, order = load_hf_tokenizer(export_hf(tok, tmp_path))
    assert back.to_dict() == tok.to_dict() and back.hash == tok.hash
    assert order.tolist() == list(range(tok.vocab_size))
    assert back.encode(heldout[:100_000]) == tok.encode(heldout[:100_000])


# ------------------------------------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def gpt2_json(train_docs):
    return json.loads(train_hf(train_docs[:20], "gpt2").to_str())


@pytest.fixture(scope="module")
def llama3_json(train_docs):
    return json.loads(train_hf(train_docs[:20], "llama3").to_str())


def trained_other(kind, docs) -> dict:
    if kind == "Unigram":
        tok = tokenizers.Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=300, show_progress=False)
    elif kind == "WordPiece":
        tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]"], show_progress=False)
    elif kind == "WordLevel":
        tok = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
        trainer = trainers.WordLevelTrainer(vocab_size=300, special_tokens=["[UNK]"], show_progress=False)
    else:  # a character-level BPE (no ByteLevel): vocab of characters, whitespace-split words
        tok = tokenizers.Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(docs, trainer)
    return json.loads(tok.to_str())


def _set(d, path, value):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def _refusals(g, l3):
    """(name, base tokenizer.json, mutation, error regex) for each refusal; g: GPT-2 style, l3: Llama-3 style."""
    m = g["model"]
    first = m["merges"][0]
    left, right = first.split(" ") if isinstance(first, str) else first
    made, v = left + right, m["vocab"]
    split = ("pre_tokenizer", "pretokenizers", 0)
    extra_split = {"type": "Split", "pattern": {"Regex": r"\p{N}{1,3}"}, "behavior": "Isolated", "invert": False}

    def at(path, value):
        return lambda d: _set(d, path, value)

    def vocab(f):
        return lambda d: _set(d, ("model", "vocab"), f(dict(d["model"]["vocab"])))

    def no_specials(d):
        d["added_tokens"] = []
        del d["model"]["vocab"]["<|endoftext|>"]

    return [
        ("byte_fallback", g, at(("model", "byte_fallback"), True), r"byte_fallback \(SentencePiece-style BPE"),
        ("prefix", g, at(("model", "continuing_subword_prefix"), "##"), r"continuing_subword_prefix='##'"),
        ("suffix", g, at(("model", "end_of_word_suffix"), "</w>"), r"end_of_word_suffix='</w>'"),
        ("dropout", g, at(("model", "dropout"), 0.1), r"dropout=0.1 .*\"dropout\": null"),
        ("lowercase", g, at(("normalizer",), {"type": "Lowercase"}), r"normalizer Lowercase is not supported"),
        ("nfc+lower", g, at(("normalizer",), {"type": "Sequence", "normalizers": [{"type": "NFC"},
                                                                                 {"type": "Lowercase"}]}),
         r"normalizer NFC\+Lowercase is not supported"),
        ("prefix space", g, at(("pre_tokenizer", "add_prefix_space"), True), r"add_prefix_space=true"),
        ("metaspace", g, at(("pre_tokenizer",), {"type": "Metaspace"}), r"pre-tokenizer Metaspace has no ByteLevel"),
        ("no pretok", g, at(("pre_tokenizer",), None), r"pre-tokenizer none has no ByteLevel step"),
        ("two splits", l3, lambda d: d["pre_tokenizer"]["pretokenizers"].insert(0, extra_split),
         r"Split \+ Split \+ ByteLevel is not supported"),
        ("removed", l3, at((*split, "behavior"), "Removed"), r"behavior Removed"),
        ("string split", l3, at((*split, "pattern"), {"String": " "}), r"needs a Regex pattern"),
        ("oniguruma only", l3, at((*split, "pattern"), {"Regex": r"(?~abc)|\s+|."}),
         r"does not compile with Python's regex module"),
        ("gaps", l3, at((*split, "pattern"), {"Regex": r"\p{L}+"}), r"leaves some text unmatched"),
        ("double regex", l3, at(("pre_tokenizer", "pretokenizers", 1, "use_regex"), True),
         r"pre-tokenizer Split \+ ByteLevel is not supported"),
        ("hf reads it otherwise", l3, at((*split, "pattern"), {"Regex": r"\h+|[\s\S]"}), r"does not encode like HF"),
        ("no specials", g, no_specials, r"no special token <\|endoftext\|> .*special tokens: none"),
        ("not special", g, at(("added_tokens", 0, "special"), False),
         r"1 added token is not special \('<\|endoftext\|>'\)"),
        ("missing part", g, at(("model", "merges", 0), [left, "\u2603"]), r"part '\u2603' is not a token of the vocab"),
        ("dup merge", g, at(("model", "merges", 1), first), r"is listed twice"),
        ("missing byte", g, vocab(lambda w: {k: i for k, i in w.items() if k != "\u0100"}),
         r"lacks 1 of the 256 single bytes \(e.g. byte 0\)"),
        ("extra token", g, vocab(lambda w: {**w, "\u0120xyzzy": max(w.values()) + 1}),
         r"1 vocab token \(e.g. ' xyzzy'\) is made by no merge"),
        ("dup id", g, vocab(lambda w: {**w, "\u0120xyzzy": v[made]}), rf"HF id {v[made]} is given to two tokens"),
        ("result missing", g, vocab(lambda w: {k: i for k, i in w.items() if k != made}),
         rf"makes '{made}', which is not in the vocab"),
        ("sentencepiece vocab", g, vocab(lambda w: {**{k: i for k, i in w.items() if k != "a"}, "\u2581a": v["a"]}),
         r"has '\u2581', which is not in HF's byte-level alphabet"),
    ]


def test_refusals_are_one_line_errors_saying_why(gpt2_json, llama3_json, train_docs, tmp_path):
    cases = [(name, copy.deepcopy(base), mutate, err) for name, base, mutate, err in _refusals(gpt2_json, llama3_json)]
    for kind, err in [("Unigram", r"SentencePiece Unigram model"), ("WordPiece", r"WordPiece model \(BERT-style\)"),
                      ("WordLevel", r"word-level model"), ("char BPE", r"pre-tokenizer Whitespace has no ByteLevel")]:
        cases.append((kind, trained_other(kind, train_docs[:20]), None, err))
    assert len(cases) == 29
    for name, d, mutate, err in cases:
        if mutate is not None:
            mutate(d)
        f = tmp_path / f"{name.replace(' ', '_')}.json"
        f.write_text(json.dumps(d), encoding="utf-8")
        with pytest.raises(ValueError) as e:
            load_hf_tokenizer(f)
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 400, (name, msg)
        assert re.search(err, msg), (name, msg)


def test_regex_hf_reads_otherwise_imports_only_unverified(llama3_json, tmp_path):
    d = copy.deepcopy(llama3_json)
    d["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": r"\h+|[\s\S]"}  # \h: hex digit in Oniguruma
    (tmp_path / "tokenizer.json").write_text(json.dumps(d))
    tok, _ = load_hf_tokenizer(tmp_path, verify=False)
    assert tok.pattern == r"\h+|[\s\S]"


def test_files_that_are_not_hf_tokenizers(tmp_path, train_docs):
    with pytest.raises(FileNotFoundError, match="no HF tokenizer.json"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON file"):
        load_hf_tokenizer(tmp_path)
    tok = BPETokenizer.train(train_docs[:5], vocab_size=300, progress=False)
    with pytest.raises(ValueError, match="nano's own format: load it with tokenizer.io.load_tokenizer"):
        load_hf_tokenizer(tok.save(tmp_path / "nano"))
