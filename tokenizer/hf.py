"""Import a HF byte-level BPE tokenizer.json (GPT-2, Llama 3, Qwen2/3, nano's own export) as nano's BPETokenizer.

    tok, order = load_hf_tokenizer("path/to/model_dir")   # or the tokenizer.json itself
    order[nano_id] == hf_id  ->  nano_rows = hf_rows[order]   (embedding / lm-head rows)
    [order[i] for i in tok.encode(text)] == HF's ids for `text`

What imports: model BPE over GPT-2's byte alphabet (every vocab string decodes through bytes_to_unicode to bytes,
all 256 bytes present), pre-tokenizer ByteLevel(use_regex=true) (the GPT-2 regex) or Sequence[Split(Regex,
Isolated), ByteLevel(use_regex=false)] (Llama 3, Qwen: that regex, if Python's `regex` module compiles it and splits
like HF), normalizer none or NFC/NFD/NFKC/NFKD, ignore_merges, several merges making one token (tiktoken
conversions such as Llama 3's; kept as BPETokenizer.merge_pairs), HF ids in any order (`order` maps them).
Ids: the 256 bytes, then one id per merged token (in the order of its first merge whose parts are defined), then the
special tokens (added_tokens with special=true) in HF id order, under their own names.

The document separator: nano separates documents with <|endoftext|> (tok.eot_id). If the tokenizer has a special
token of that name (GPT-2, Qwen base and instruct, nano's export) it is used as is. Otherwise one special token is
renamed <|endoftext|> in nano (its HF id is kept, so the model sees its own end-of-document id): `eot=` if given,
else <|end_of_text|> (Llama 3: its end-of-document token, not the chat turn's <|eot_id|>), else tokenizer_config.json's
eos_token beside the file. Qwen's <|im_end|> ends a chat turn, not a document, and stays a special token of its own.

Not carried over (as for nano's own tokenizers): HF splits special and added tokens out of the text before encoding;
nano's encode() never does (the caller inserts eot_id), so a text containing "<|im_end|>" encodes as ordinary text.
The post-processor (e.g. Llama 3's <|begin_of_text|> before each sequence) is not applied; the decoder is nano's.

Everything else is a one-line ValueError saying why and what would work: Unigram / WordPiece / WordLevel models,
SentencePiece-style BPE (byte_fallback, Metaspace), other pre-tokenizers or normalizers, added tokens that are not
special (pass added_as_special=True to keep them as nano special tokens), no <|endoftext|> candidate, a merge whose
parts or result are not in the vocab, a vocab with tokens no merge makes or without all 256 bytes, clashing ids.
When HF `tokenizers` is installed the import is also checked against it: both encode a multilingual probe text
(verify=False skips this).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import regex

from tokenizer.base import EOT
from tokenizer.bpe import NORMALIZERS, BPETokenizer
from tokenizer.io import bytes_to_unicode
from tokenizer.patterns import GPT2

HF_FILE, CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"
EOT_FALLBACKS = ("<|end_of_text|>",)  # Llama 3's end of document, used as <|endoftext|> when that is missing
_TYPE_HINT = {"Unigram": "a SentencePiece Unigram model (T5, Gemma, XLNet ...)",
              "WordPiece": "a WordPiece model (BERT-style)", "WordLevel": "a word-level model"}
_ONLY = "nano imports byte-level BPE only (GPT-2, Llama 3, Qwen style); keep using the HF tokenizer for this model"

# What verify encodes with both tokenizers: English, code, numbers, contractions, whitespace runs, CRLF, Unicode
# whitespace, accents (composed and combining), other scripts, emoji.
PROBE = (
    "The quick brown fox jumps over the lazy dog. It's 3:45pm; we've got 12,345.67 reasons -- don't WE'LL? I'M!\n"
    "  Indented line\twith\ttabs   and   runs of spaces    \n\n\n\r\nWindows line\r\n\r\nend.  \n"
    "def f(x):\n    return x**2 + 0x1F  # comment\n\tif (a && b) { c[i] = \"str\"; }\n"
    "Numbers: 1 12 123 1234 12345 123456 3.14159 1e-10 2024-01-31 +44 (0)20 7946 0958 \u00bd \u2460 \u2160\n"
    "Caf\u00e9 cafe\u0301 na\u00efve co\u00f6perate r\u00e9sum\u00e9 \u00c5ngstr\u00f6m \ufb01ne \u212b "
    "Stra\u00dfe \u0130stanbul \u03a3\u03bf\u03c6\u03af\u03b1 \u041c\u043e\u0441\u043a\u0432\u0430 "
    "\u05e9\u05dc\u05d5\u05dd \u0627\u0644\u0633\u0644\u0627\u0645 \u0928\u092e\u0938\u094d\u0924\u0947 "
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\n"
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3002\u4e2d\u6587\u6c49\u5b57\uff0c\ud55c\uad6d\uc5b4 "
    "\uff11\uff12\uff13 \u0661\u0662\u0663 \u0967\u0968\u0969\n"
    "Emoji \U0001F600\U0001F389 \U0001F44D\U0001F3FD \U0001F1EB\U0001F1F7 \U0001F468\u200d\U0001F469\u200d\U0001F467"
    " ok\n"
    "Spaces:\u00a0nbsp\u2009thin\u3000ideographic\u2028line\u2029para\u0085nel\u000bvt\u000cff \u200bzw\ufeffbom\n"
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE ''quoted'' \"double\" \u2018curly\u2019 \u201cquotes\u201d \u2014 \u2026 ... "
    "!!! ??? ;-) <html><b>x</b></html> https://example.com/a?b=c&d=e#f user@example.com $100 \u20ac50 \u00a520\n"
    "   \n \n\t\n  trailing   "
)


def load_hf_tokenizer(path, *, eot: str | None = None, added_as_special: bool = False,
                      verify: bool = True) -> tuple[BPETokenizer, np.ndarray]:
    """A HF tokenizer.json (or a directory holding it) -> (nano BPETokenizer, order) with order[nano_id] = hf_id
    (int64, length tok.vocab_size). eot: the special token to use as <|endoftext|> when there is none of that name
    (default: see the module docstring). added_as_special: keep added tokens that are not special as nano special
    tokens (nano never produces them from text; HF does where their string appears). verify: check against HF
    `tokenizers` (when installed) on a probe text."""
    path = Path(path)
    if path.is_dir():
        path = path / HF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no HF tokenizer.json here")
    try:
        text = path.read_text(encoding="utf-8")
        d = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
        hint = ("; it is nano's own format: load it with tokenizer.io.load_tokenizer"
                if isinstance(d, dict) and str(d.get("format", "")).startswith("nano-") else "")
        raise ValueError(f"{path}: not a HF tokenizer.json (no \"model\" object){hint}")
    tok, order = from_hf_dict(d, eot=eot, added_as_special=added_as_special, eos_hint=_config_eos(path.parent))
    if verify:
        _verify(tok, order, text, d)
    return tok, order


def from_hf_dict(d: dict, *, eot: str | None = None, added_as_special: bool = False,
                 eos_hint: str | None = None) -> tuple[BPETokenizer, np.ndarray]:
    """The parsed tokenizer.json -> (tok, order); see load_hf_tokenizer (eos_hint: tokenizer_config's eos_token)."""
    model = d["model"]
    _check_model(model)
    normalizer = _normalizer(d.get("normalizer"))
    pattern = _pattern(d.get("pre_tokenizer"))

    # ------------------------------------------------------------------ special tokens (and refused added tokens)
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError("the BPE model has no vocab (model.vocab must map token strings to ids)")
    specials: list[tuple[int, str]] = []
    plain = []
    for t in d.get("added_tokens") or []:
        content, hid = t.get("content"), t.get("id")
        if not isinstance(content, str) or not _is_id(hid):
            raise ValueError(f"added token {t!r} has no string content or integer id")
        if content in vocab and vocab[content] != hid:
            raise ValueError(f"added token {content!r} has id {hid} but the vocab gives it id {vocab[content]}")
        (specials if t.get("special") or added_as_special else plain).append((hid, content))
    if plain:
        names = ", ".join(repr(c) for _, c in plain[:3]) + (", ..." if len(plain) > 3 else "")
        raise ValueError(f"{len(plain)} added token{'s' * (len(plain) != 1)} {'are' if len(plain) != 1 else 'is'} "
                         f"not special ({names}): HF matches them inside text, nano's encoder never produces them; "
                         f"pass added_as_special=True to keep them as nano special tokens (ids kept)")
    specials.sort()
    special_names = [c for _, c in specials]
    special_content = set(special_names)

    # ------------------------------------------------------------------ vocab: byte-level strings -> bytes
    u2b = {u: b for b, u in bytes_to_unicode().items()}
    hf_id: dict[bytes, int] = {}
    for name, hid in vocab.items():
        if name in special_content:
            continue
        if not _is_id(hid):
            raise ValueError(f"vocab token {name!r} has id {hid!r}, not a non-negative integer")
        try:
            b = bytes(u2b[c] for c in name)
        except KeyError:
            bad = next(c for c in name if c not in u2b)
            raise ValueError(f"vocab token {name!r} has {bad!r}, which is not in HF's byte-level alphabet: not a "
                             f"byte-level vocabulary; {_ONLY}") from None
        if not b:
            raise ValueError("the vocab has an empty token string; a byte-level BPE vocab has none")
        hf_id[b] = hid
    missing = [x for x in range(256) if bytes([x]) not in hf_id]
    if missing:
        raise ValueError(f"the vocab lacks {len(missing)} of the 256 single bytes (e.g. byte {missing[0]}): nano's "
                         f"byte-level BPE needs all of them (train with initial_alphabet="
                         f"pre_tokenizers.ByteLevel.alphabet())")
    ids = list(hf_id.values()) + [h for h, _ in specials]
    if len(set(ids)) != len(ids):
        dup = Counter(ids).most_common(1)[0][0]
        raise ValueError(f"HF id {dup} is given to two tokens; each token needs its own id")

    # ------------------------------------------------------------------ merges
    pairs = _merges(model.get("merges"), u2b, hf_id)
    made = {left + right for left, right in pairs}
    extra = [b for b in hf_id if len(b) > 1 and b not in made]
    if extra:
        raise ValueError(f"{len(extra)} vocab token{'s' * (len(extra) != 1)} (e.g. {_show(extra[0])}) "
                         f"{'are' if len(extra) != 1 else 'is'} made by no merge: nano's ids are exactly the 256 "
                         f"bytes + one per merged token + the special tokens")
    nano_id = {bytes([x]): x for x in range(256)}
    merges: list[tuple[int, int]] = []
    remaining = pairs
    while remaining:  # a token's id comes from its first merge whose parts already have ids (one pass, usually)
        later = []
        for left, right in remaining:
            if left + right in nano_id:
                continue
            if left in nano_id and right in nano_id:
                nano_id[left + right] = 256 + len(merges)
                merges.append((nano_id[left], nano_id[right]))
            else:
                later.append((left, right))
        if len(later) == len(remaining):  # cannot happen once every token has a merge (parts are shorter)
            raise ValueError(f"merge {_show(later[0][0])} + {_show(later[0][1])} uses a token no merge defines")
        remaining = later
    merge_pairs = [(nano_id[left], nano_id[right]) for left, right in pairs]

    # ------------------------------------------------------------------ the document separator
    eot_name = _choose_eot(special_names, eot, eos_hint)
    names = [EOT if n == eot_name else n for n in special_names]
    tok = BPETokenizer(merges, pattern, names, merge_pairs=merge_pairs,
                       ignore_merges=bool(model.get("ignore_merges")), normalizer=normalizer)
    order = np.empty(tok.vocab_size, dtype=np.int64)
    for b, hid in hf_id.items():
        order[nano_id[b]] = hid
    for i, (hid, _) in enumerate(specials):
        order[256 + len(merges) + i] = hid
    return tok, order


# ---------------------------------------------------------------------------------------------------------- parts
def _is_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _show(b: bytes) -> str:
    return repr(b.decode("utf-8", errors="backslashreplace"))


def _check_model(model: dict) -> None:
    kind = model.get("type") or ("BPE" if "merges" in model else None)
    if kind != "BPE":
        what = _TYPE_HINT.get(kind, f"model type {kind!r}")
        raise ValueError(f"the tokenizer is {what}, not BPE: {_ONLY}")
    if model.get("byte_fallback"):
        raise ValueError(f"the BPE model uses byte_fallback (SentencePiece-style BPE: Llama 2, Mistral ...), whose "
                         f"vocab is characters with <0xNN> byte pieces; {_ONLY}")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"the BPE model has {key}={model[key]!r} (word-piece style marks), which nano's BPE "
                             f"does not have; {_ONLY}")
    if model.get("dropout"):
        raise ValueError(f"the BPE model has dropout={model['dropout']} (random merges while training); set "
                         f"\"dropout\": null in tokenizer.json to import its deterministic encoding")


def _normalizer(n) -> str | None:
    steps = n.get("normalizers") if isinstance(n, dict) and n.get("type") == "Sequence" else [n] if n else []
    kinds = [s.get("type") if isinstance(s, dict) else s for s in steps]
    if not kinds:
        return None
    if len(kinds) == 1 and kinds[0] in NORMALIZERS:
        return kinds[0]
    raise ValueError(f"normalizer {'+'.join(map(str, kinds))} is not supported: nano applies none or one of "
                     f"{'/'.join(NORMALIZERS)} (byte-level BPE tokenizers such as GPT-2, Llama 3, Qwen use these)")


def _pattern(p) -> str:
    """The pre-tokenizer -> nano's split regex."""
    steps = p.get("pretokenizers") if isinstance(p, dict) and p.get("type") == "Sequence" else [p] if p else []
    steps = [s if isinstance(s, dict) else {} for s in steps]
    kinds = [s.get("type") for s in steps]
    if "ByteLevel" not in kinds:
        raise ValueError(f"pre-tokenizer {'+'.join(map(str, kinds)) or 'none'} has no ByteLevel step: not a "
                         f"byte-level BPE (nano's BPE works on UTF-8 bytes); {_ONLY}")
    byte_level = steps[kinds.index("ByteLevel")]
    if byte_level.get("add_prefix_space"):
        raise ValueError("the ByteLevel pre-tokenizer has add_prefix_space=true (a space is put before the text), "
                         "which nano's encoder does not do; set it to false if the model was trained without it")
    use_regex = byte_level.get("use_regex", True)
    if kinds == ["ByteLevel"]:
        return GPT2 if use_regex else r"[\s\S]+"  # GPT-2's regex, or the whole text as one piece
    if kinds != ["Split", "ByteLevel"] or use_regex:
        raise ValueError(f"pre-tokenizer {' + '.join(kinds)} is not supported: nano splits text with one regex, "
                         f"i.e. ByteLevel(use_regex=true) (GPT-2) or Split(Regex, Isolated) + "
                         f"ByteLevel(use_regex=false) (Llama 3, Qwen)")
    split = steps[0]
    pat = split.get("pattern") if isinstance(split.get("pattern"), dict) else {}
    if split.get("behavior") != "Isolated" or split.get("invert") or not isinstance(pat.get("Regex"), str):
        raise ValueError(f"the Split pre-tokenizer (pattern {pat}, behavior {split.get('behavior')}, invert "
                         f"{split.get('invert')}) is not supported: nano needs a Regex pattern, Isolated, invert false")
    try:
        compiled = regex.compile(pat["Regex"])
    except regex.error as e:
        raise ValueError(f"the Split regex does not compile with Python's regex module ({e}); nano splits text with "
                         f"it (HF uses Oniguruma)") from None
    covered = "".join(compiled.findall(PROBE))
    if covered != PROBE or any(m.start() == m.end() for m in compiled.finditer(PROBE)):
        raise ValueError("the Split regex leaves some text unmatched or matches empty strings: HF keeps the "
                         "unmatched text as pieces of its own, nano's splitter (findall) would drop it; a regex whose "
                         "matches cover all text (like GPT-2's, GPT-4's, Llama 3's) works")
    return pat["Regex"]


def _merges(raw, u2b: dict, hf_id: dict) -> list[tuple[bytes, bytes]]:
    if not isinstance(raw, list):
        raise ValueError("the BPE model has no merges list")
    out, seen = [], set()
    for k, m in enumerate(raw):
        parts = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(x, str) for x in parts)):
            raise ValueError(f"merge {k} {m!r} is not two token strings (\"left right\" or [left, right])")
        pair = []
        for name in parts:
            b = bytes(u2b[c] for c in name) if all(c in u2b for c in name) else None
            if b not in hf_id:
                raise ValueError(f"merge {k} {m!r}: part {name!r} is not a token of the vocab (every part must be a "
                                 f"byte or a merged token)")
            pair.append(b)
        if pair[0] + pair[1] not in hf_id:
            raise ValueError(f"merge {k} {m!r} makes {''.join(parts)!r}, which is not in the vocab")
        if (pair[0], pair[1]) in seen:
            raise ValueError(f"merge {k} {m!r} is listed twice; each pair merges once")
        seen.add((pair[0], pair[1]))
        out.append((pair[0], pair[1]))
    return out


def _config_eos(directory: Path) -> str | None:
    """tokenizer_config.json's eos_token beside tokenizer.json, if any."""
    try:
        eos = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8")).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return None
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return eos if isinstance(eos, str) else None


def _choose_eot(names: list[str], eot: str | None, eos_hint: str | None) -> str:
    if eot is not None:
        if eot not in names:
            raise ValueError(f"eot={eot!r} is not one of the special tokens ({_names(names)})")
        if eot != EOT and EOT in names:
            raise ValueError(f"eot={eot!r} cannot become {EOT}: the tokenizer already has a special {EOT}")
        return eot
    for name in (EOT, *EOT_FALLBACKS, eos_hint):
        if name in names:
            return name
    raise ValueError(f"no special token {EOT} (nano's document separator) and no end-of-text token to use as it "
                     f"(special tokens: {_names(names)}); pass eot=<one of them>, or add {EOT} as a special token "
                     f"in HF (and resize the model's embeddings)")


def _names(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "") if names else "none"


def _verify(tok: BPETokenizer, order: np.ndarray, text: str, d: dict) -> None:
    """HF `tokenizers` (if installed) and the import encode the probe text alike; else a one-line ValueError."""
    try:
        import tokenizers
    except ImportError:
        return
    try:
        hf = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # what HF itself cannot load is not a tokenizer to match
        raise ValueError(f"HF tokenizers cannot load this file either: {str(e).splitlines()[0] if str(e) else e!r}")
    probe = PROBE
    for t in d.get("added_tokens") or []:  # HF cuts added tokens out of text; nano does not (see the docstring)
        probe = probe.replace(t["content"], "")
    want = hf.encode(probe, add_special_tokens=False).ids
    got = order[tok.encode(probe)].tolist()
    if got != want:
        i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise ValueError(f"the import does not encode like HF (a regex or normalizer HF and Python read differently?): "
                         f"on the probe text, token {i} is HF id {got[i] if i < len(got) else None} in nano and "
                         f"{want[i] if i < len(want) else None} in HF ({hf.decode(want[max(0, i - 3):i + 3])!r})")
