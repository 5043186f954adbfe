"""Save/load (our versioned JSON) and exports: HF `tokenizers` tokenizer.json and tiktoken ranks.

A saved tokenizer directory: nano_tokenizer.json (our format, the file nano reads) and, for a BPE tokenizer,
tokenizer.json (the HF export, the name HF tools look for). Directories saved before nano_tokenizer.json existed
hold our format under tokenizer.json; load_tokenizer reads those too (same tokenizer, same hash).

Our format, DIR/nano_tokenizer.json:
  {"format": "nano-bpe", "version": 1, "pattern": <regex>, "pattern_name": "gpt4"|..|null,
   "merges": [[left, right], ...]  (merge i makes id 256 + i), "special_tokens": {"<|endoftext|>": id, ...}}
  or {"format": "nano-char", "version": 1, "chars": [...], "special_tokens": {...}} for CharTokenizer.
HF export: Split(regex, Isolated) -> ByteLevel(use_regex=false) -> BPE (vocab in GPT-2's printable byte alphabet,
  merges in order) -> ByteLevel decoder; special tokens as added tokens. Same ids as ours. An imported tokenizer's
  merge_pairs, ignore_merges and normalizer (see tokenizer.bpe) are written as HF's merges, ignore_merges and
  normalizer. tokenizer.hf.load_hf_tokenizer reads such files (and GPT-2's, Llama 3's, Qwen's) back.
tiktoken export, DIR/: tokenizer.tiktoken (`base64(token bytes) id` per line, ids 0..256+merges-1) and
  tiktoken.json ({"pattern": ..., "special_tokens": {...}}); `load_tiktoken(DIR)` rebuilds the Encoding offline.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

from tokenizer.base import HF_TOKENIZER_FILE, LEGACY_TOKENIZER_FILE, TOKENIZER_FILE
from tokenizer.bpe import BPETokenizer, require_tiktoken
from tokenizer.char import CharTokenizer
from nano_io.files import atomic_write

LOADERS = {cls.FORMAT: cls.from_dict for cls in (BPETokenizer, CharTokenizer)}


def save_tokenizer(tok, directory) -> Path:
    """DIRECTORY/nano_tokenizer.json (+ DIRECTORY/tokenizer.json, the HF export, for BPE), written atomically; the
    same as tok.save(directory). Returns the path of nano's file."""
    return tok.save(directory)


def tokenizer_file(path) -> Path:
    """The file holding nano's format for `path`: the file itself, or in a directory nano_tokenizer.json, else (a
    directory saved by older nano) tokenizer.json."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not (path / TOKENIZER_FILE).is_file() and (path / LEGACY_TOKENIZER_FILE).is_file():
        return path / LEGACY_TOKENIZER_FILE
    return path / TOKENIZER_FILE


def load_tokenizer(path):
    """A directory holding nano_tokenizer.json (or, saved by older nano, tokenizer.json in our format), or the file
    itself -> BPETokenizer | CharTokenizer."""
    path = tokenizer_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer file; train one with `python -m tokenizer.train`")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid tokenizer JSON file ({e})") from None
    fmt = d.get("format") if isinstance(d, dict) else None
    if fmt not in LOADERS:
        hint = (" (this is a Hugging Face tokenizer.json: nano reads its own nano_tokenizer.json; import a HF "
                "tokenizer with tokenizer.hf.load_hf_tokenizer)") if isinstance(d, dict) and "model" in d else ""
        raise ValueError(f"{path}: unknown tokenizer format {fmt!r}; expected one of {list(LOADERS)}{hint}")
    return LOADERS[fmt](d)


# ---------------------------------------------------------------------------------------------------------- HF
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what HF ByteLevel uses): printable latin-1 bytes map
    to themselves, the other 68 bytes to code points 256, 257, ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def to_hf_dict(tok: BPETokenizer) -> dict:
    b2u = bytes_to_unicode()
    name = [("".join(b2u[x] for x in tok.token_bytes(i))) for i in range(256 + len(tok.merges))]
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for s, i in tok.special_tokens.items()]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None if tok.normalizer is None else {"type": tok.normalizer},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": tok.ignore_merges, "vocab": {n: i for i, n in enumerate(name)},
                  # "left right" strings: ByteLevel names never contain a space (it maps to "Ġ")
                  "merges": [f"{name[a]} {name[b]}" for a, b in (tok.merge_pairs or tok.merges)]},
    }


def has_hf_form(tok) -> bool:
    """Whether `tok` exports to a HF tokenizer.json (byte-level BPE does; the character tokenizer does not)."""
    return isinstance(tok, BPETokenizer)


def export_hf(tok: BPETokenizer, path) -> Path:
    """Write a HF `tokenizers` tokenizer.json (a directory gets DIR/tokenizer.json). Loads with
    tokenizers.Tokenizer.from_file and transformers.PreTrainedTokenizerFast(tokenizer_file=...)."""
    if not has_hf_form(tok):
        raise ValueError("only BPE tokenizers export to HF tokenizer.json")
    path = Path(path)
    if path.suffix != ".json":
        path = path / HF_TOKENIZER_FILE
    atomic_write(path, json.dumps(to_hf_dict(tok), ensure_ascii=False))
    return path


# ---------------------------------------------------------------------------------------------------------- tiktoken
TIKTOKEN_RANKS, TIKTOKEN_META = "tokenizer.tiktoken", "tiktoken.json"


def export_tiktoken(tok: BPETokenizer, directory) -> Path:
    directory = Path(directory)
    ranks = tok.mergeable_ranks()
    lines = "".join(f"{base64.b64encode(b).decode()} {r}\n" for b, r in ranks.items())
    atomic_write(directory / TIKTOKEN_RANKS, lines)
    meta = {"pattern": tok.pattern, "special_tokens": tok.special_tokens, "name": f"nano-{tok.hash[:12]}"}
    atomic_write(directory / TIKTOKEN_META, json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    return directory


def load_tiktoken(directory):
    directory = Path(directory)
    meta = json.loads((directory / TIKTOKEN_META).read_text(encoding="utf-8"))
    ranks = {}
    for line in (directory / TIKTOKEN_RANKS).read_text(encoding="ascii").splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return require_tiktoken().Encoding(name=meta["name"], pat_str=meta["pattern"], mergeable_ranks=ranks,
                                special_tokens=meta["special_tokens"])
