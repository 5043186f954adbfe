"""Byte-level BPE: training (count chunks -> learn merges) and the encoder/decoder.

Ids: bytes are 0..255 (id == byte value), merge k makes id 256 + k, special tokens come after the merges.
encode() never parses special-token strings: "<|endoftext|>" inside a text is encoded as ordinary text; the
caller inserts `eot_id` where documents end. Every valid Unicode str round-trips exactly:
decode(encode(s)) == s. A str holding a lone surrogate (e.g. "\\ud800", which Python allows but Unicode does not)
cannot be UTF-8 encoded and raises ValueError.

Three optional parts exist for tokenizers imported from HF (tokenizer/hf.py); nano's trainer never sets them, and
to_dict() writes them only when set, so the definition and hash of every other tokenizer are unchanged:
  merge_pairs    every (left, right) pair that merges, in priority order, when that is more than `merges` (a tiktoken
                 conversion such as Llama 3 lists every split of a token); a chunk then merges one pair at a time,
                 the earliest-listed pair present first, leftmost on ties (HF's order). `merges` defines the ids.
  ignore_merges  a chunk that is a whole token is that token (HF's ignore_merges, tiktoken's behaviour).
  normalizer     "NFC" (Qwen), "NFD", "NFKC" or "NFKD": encode() normalizes the text first, so decode(encode(s))
                 gives the normalized s.
"""
from __future__ import annotations

import time
import unicodedata

import numpy as np
import regex

from tokenizer.base import EOT, Tokenizer
from tokenizer.count import count_chunks
from tokenizer.merges import learn_merges
from tokenizer.patterns import pattern_name, resolve_pattern
from nano_io.pool import WorkerPool
from nano_io.sources import resolve_inputs
from nano_io.text import notice

_CACHE_MAX = 1 << 20  # chunk -> ids cache entries before the cache is cleared (bounded memory on huge corpora)
# The trainer holds token ids as characters (merges.py), and chr() stops at 0x10FFFF: at most this many merges.
MAX_MERGES = 0x110000 - 256
# Token ids are stored as uint32 in shards and read as int32 by the loader: a vocabulary of at most 2**31 ids.
MAX_VOCAB_SIZE = 2**31
NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")  # unicodedata forms encode() may apply first


def check_vocab_size(vocab_size, num_special: int = 1) -> None:
    """One-line errors for a vocabulary size a byte-level BPE cannot have, before any work."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise ValueError(f"--vocab-size must be an integer, got {vocab_size!r}")
    if vocab_size < 256 + num_special:
        raise ValueError(f"--vocab-size {vocab_size} is smaller than 256 bytes + {num_special} special token"
                         f"{'s' * (num_special != 1)}; use --vocab-size >= {256 + num_special} (e.g. 8192)")
    if vocab_size > MAX_VOCAB_SIZE:
        raise ValueError(f"--vocab-size {vocab_size:,} cannot be stored: token ids must fit the shards' uint32 and "
                         f"the loader's int32 (at most 2**31 = {MAX_VOCAB_SIZE:,}); real vocabularies are 1k-256k")


class BPETokenizer(Tokenizer):
    FORMAT = "nano-bpe"
    VERSION = 1

    def __init__(self, merges, pattern: str = "gpt4", special_tokens=(EOT,), *, merge_pairs=None,
                 ignore_merges: bool = False, normalizer: str | None = None):
        self.pattern = resolve_pattern(pattern)
        self.merges = [tuple(m) for m in merges]
        vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            if not (a < len(vocab) and b < len(vocab)):
                raise ValueError(f"merge {len(vocab) - 256} ({a}, {b}) refers to an id not defined before it")
            vocab.append(vocab[a] + vocab[b])
        first = len(vocab)
        self.special_tokens = {s: first + i for i, s in enumerate(special_tokens)}
        if len(self.special_tokens) != len(special_tokens):
            raise ValueError(f"special tokens must be distinct, got {list(special_tokens)}")
        self._vocab = vocab + [s.encode("utf-8") for s in self.special_tokens]
        # One int per pair (left * K + right) -> merged id; the merged id is also the merge's rank (priority).
        self._K = len(self._vocab)
        self._ranks = {a * self._K + b: 256 + i for i, (a, b) in enumerate(self.merges)}
        self._findall = regex.compile(self.pattern).findall
        self._cache: dict[str, list[int]] = {}
        self._init_hf_options(merge_pairs, ignore_merges, normalizer, first)

    def _init_hf_options(self, merge_pairs, ignore_merges, normalizer, first: int) -> None:
        """The optional parts an imported HF tokenizer may need (see the module docstring)."""
        if normalizer is not None and normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {NORMALIZERS} or None, got {normalizer!r}")
        self.normalizer = normalizer
        self.ignore_merges = bool(ignore_merges)
        self.merge_pairs = None if merge_pairs is None else [tuple(p) for p in merge_pairs]
        if self.merge_pairs == self.merges:
            self.merge_pairs = None  # the plain case: one pair per merge, in the merges' order
        token_id = {self._vocab[i]: i for i in range(first)} if self.ignore_merges or self.merge_pairs else None
        self._whole = token_id if self.ignore_merges else None
        self._pair_rank = self._pair_new = None
        if self.merge_pairs is not None:
            self._pair_rank, self._pair_new = {}, []
            for r, (a, b) in enumerate(self.merge_pairs):
                new = token_id.get(self._vocab[a] + self._vocab[b]) if a < first and b < first else None
                if new is None or a * self._K + b in self._pair_rank:
                    raise ValueError(f"merge pair {r} ({a}, {b}) is repeated or does not make a token of the vocab")
                self._pair_rank[a * self._K + b] = r
                self._pair_new.append(new)

    # ------------------------------------------------------------------------------------------------ training
    @classmethod
    def train(cls, inputs, vocab_size: int = 32768, pattern: str = "gpt4", special_tokens=(EOT,),
              max_chars_per_doc: int | None = None, max_chars: int | None = None, num_workers: int = 2,
              progress: bool = True, stats: dict | None = None) -> "BPETokenizer":
        """Train on `inputs`: source specs (a path/spec or a list of them: txt files/dirs/jsonl/parquet/'builtin')
        or texts (a list of strings that are not paths, or any iterator of strings). `stats`, if given, is filled
        with timings and counts."""
        pattern = resolve_pattern(pattern)
        special_tokens = tuple(special_tokens)
        check_vocab_size(vocab_size, len(special_tokens))
        num_merges = vocab_size - 256 - len(special_tokens)
        t0 = time.perf_counter()
        sources = resolve_inputs(inputs)
        result = count_chunks(sources, pattern, num_workers, max_chars, max_chars_per_doc, progress)
        if not result.counts:
            raise ValueError("empty corpus: the inputs contain no text; check the paths and --max-chars")
        t1 = time.perf_counter()
        merges = learn_merges(result.counts, min(num_merges, MAX_MERGES), vocab_size, progress)
        t2 = time.perf_counter()
        if len(merges) < num_merges:
            why = ("the trainer's limit (ids are held as Unicode code points)" if len(merges) == MAX_MERGES else
                   "no pair of tokens is left to merge (every chunk of the text is one token already; more text "
                   "gives more merges)")
            notice(("vocab", vocab_size), f"vocabulary of {256 + len(merges) + len(special_tokens):,} tokens, not "
                   f"the {vocab_size:,} asked: after {len(merges):,} merges {why}")
        if stats is not None:
            stats.update(split_seconds=t1 - t0, merge_seconds=t2 - t1, seconds=t2 - t0, chars=result.chars,
                         docs=result.docs, unique_chunks=len(result.counts), merges=len(merges))
        return cls(merges, pattern, special_tokens)

    # ------------------------------------------------------------------------------------------------ encoding
    def _bpe(self, b: bytes) -> list[int]:
        """Merge the bytes of one chunk: always apply the earliest-learned merge present (as training did)."""
        if self._pair_rank is not None:
            return self._bpe_pairs(b)
        ids = list(b)
        ranks, K = self._ranks, self._K
        big = 1 << 62
        while len(ids) >= 2:
            keys = [ids[i] * K + ids[i + 1] for i in range(len(ids) - 1)]
            best = min(keys, key=lambda k: ranks.get(k, big))
            new = ranks.get(best)
            if new is None:
                break
            a, bb = divmod(best, K)
            out, i, n = [], 0, len(ids)
            while i < n:
                if i < n - 1 and ids[i] == a and ids[i + 1] == bb:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return ids

    def _bpe_pairs(self, b: bytes) -> list[int]:
        """merge_pairs: merge one pair at a time, the earliest-listed pair first, leftmost on ties (HF's order)."""
        ids = list(b)
        rank, new, K = self._pair_rank, self._pair_new, self._K
        none = len(new)
        while len(ids) >= 2:
            r, i = min((rank.get(ids[j] * K + ids[j + 1], none), j) for j in range(len(ids) - 1))
            if r == none:
                break
            ids[i:i + 2] = [new[r]]
        return ids

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        cache = self._cache
        if self.normalizer is not None:
            text = unicodedata.normalize(self.normalizer, text)
        for chunk in self._findall(text):
            ids = cache.get(chunk)  # repeated words (most of any text) cost one dict lookup
            if ids is None:
                try:
                    b = chunk.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("text contains a lone surrogate (e.g. '\\ud800'), which is not valid Unicode "
                                     "and cannot be encoded; clean it with s.encode('utf-8', 'replace').decode()")
                whole = self._whole.get(b) if self._whole is not None else None
                ids = [whole] if whole is not None else self._bpe(b)
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[chunk] = ids
            out.extend(ids)
        return out

    def encode_batch(self, texts, num_workers: int = 2) -> list[list[int]]:
        """Encode many texts; in num_workers processes when there is enough text to pay for them."""
        texts = list(texts)
        if num_workers <= 1 or sum(map(len, texts)) < (1 << 20):
            return [self.encode(t) for t in texts]
        size = max(1, len(texts) // (num_workers * 8))  # a few tasks per worker: small ones would cost in pickling
        with WorkerPool(num_workers, _set_worker_tokenizer, (self,)) as pool:  # workers ignore Ctrl-C
            parts = pool.map(_encode_in_worker, (texts[i:i + size] for i in range(0, len(texts), size)))
        return [ids for part in parts for ids in part]

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        vocab = self._vocab
        try:
            return b"".join(vocab[i] for i in ids)
        except (IndexError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, (int, np.integer)) and 0 <= i < len(vocab)))
            raise ValueError(f"token id {bad!r} is not in this vocabulary (size {len(vocab)})") from None

    # ------------------------------------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def token_bytes(self, i: int) -> bytes:
        return self._vocab[i]

    def mergeable_ranks(self) -> dict[bytes, int]:
        """token bytes -> id for bytes and merges (what tiktoken calls mergeable ranks)."""
        return {self._vocab[i]: i for i in range(256 + len(self.merges))}

    # ------------------------------------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        d = {"format": self.FORMAT, "version": self.VERSION, "pattern": self.pattern, "pattern_name": pattern_name(
            self.pattern), "merges": [list(m) for m in self.merges], "special_tokens": self.special_tokens}
        return {**d, **self._hf_options()}

    def _hf_options(self) -> dict:
        """The optional parts that are set (none for a tokenizer nano trained)."""
        opts = {"merge_pairs": None if self.merge_pairs is None else [list(p) for p in self.merge_pairs],
                "ignore_merges": self.ignore_merges or None, "normalizer": self.normalizer}
        return {k: v for k, v in opts.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        cls.check_format(d)
        specials = sorted(d["special_tokens"].items(), key=lambda kv: kv[1])
        tok = cls(d["merges"], d["pattern"], [s for s, _ in specials], merge_pairs=d.get("merge_pairs"),
                  ignore_merges=d.get("ignore_merges", False), normalizer=d.get("normalizer"))
        if tok.special_tokens != d["special_tokens"]:
            raise ValueError("special token ids in the file do not follow the merges; the file is corrupt")
        return tok

    def to_tiktoken(self):
        """A tiktoken.Encoding with our ranks, pattern and specials (no download involved)."""
        return require_tiktoken().Encoding(name=f"nano-{self.hash[:12]}", pat_str=self.pattern,
                                           mergeable_ranks=self.mergeable_ranks(),
                                           special_tokens=dict(self.special_tokens))

    def __repr__(self):
        name = pattern_name(self.pattern) or "custom"
        return f"BPETokenizer(vocab_size={self.vocab_size}, pattern={name}, specials={list(self.special_tokens)})"

    def __getstate__(self):  # pickle the definition, not the caches or compiled regex
        return self.to_dict()

    def __setstate__(self, d):
        self.__init__(d["merges"], d["pattern"], list(d["special_tokens"]), merge_pairs=d.get("merge_pairs"),
                      ignore_merges=d.get("ignore_merges", False), normalizer=d.get("normalizer"))


def require_tiktoken():
    """The tiktoken module (an optional dependency, imported only when an export or encoder asks for it)."""
    try:
        import tiktoken
    except ImportError:
        raise ValueError("tiktoken is not installed (pip install 'nano-train[bench]')") from None
    return tiktoken


_worker_tok: BPETokenizer | None = None


def _set_worker_tokenizer(tok):
    global _worker_tok
    _worker_tok = tok


def _encode_in_worker(texts):
    return [_worker_tok.encode(t) for t in texts]
