"""Character-level tokenizer (TinyShakespeare-style runs): one id per distinct character of the training text,
sorted by code point; special tokens after them. Same interface as BPETokenizer."""
from __future__ import annotations

import hashlib
import json

import numpy as np

FORMAT = "nano-char"
VERSION = 1
EOT = "<|endoftext|>"


class CharTokenizer:
    def __init__(self, chars, special_tokens=(EOT,)):
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars) or not all(isinstance(c, str) and len(c) == 1 for c in self.chars):
            raise ValueError("CharTokenizer needs distinct single characters")
        self.special_tokens = {s: len(self.chars) + i for i, s in enumerate(special_tokens)}
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        self._itos = self.chars + list(self.special_tokens)

    @classmethod
    def train(cls, inputs, special_tokens=(EOT,), max_chars: int | None = None, progress: bool = False,
              **_ignored) -> "CharTokenizer":
        """The alphabet of `inputs` (same input rules as BPETokenizer.train)."""
        from tokenizer.bpe import resolve_inputs
        seen: set[str] = set()
        total = 0
        for src in resolve_inputs(inputs):
            for doc in src.documents():
                if max_chars is not None:
                    doc = doc[:max(0, max_chars - total)]
                seen.update(doc)
                total += len(doc)
        if not seen:
            raise ValueError("empty corpus: the inputs contain no text")
        return cls(sorted(seen), special_tokens)

    def encode(self, text: str) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            bad = next(c for c in text if c not in stoi)
            raise ValueError(f"character {bad!r} (U+{ord(bad):04X}) is not in this character vocabulary") from None

    def encode_batch(self, texts, num_workers: int = 1) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        itos = self._itos
        return "".join(itos[i] for i in ids)

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    @property
    def eot_id(self) -> int:
        if EOT not in self.special_tokens:
            raise ValueError(f"this tokenizer has no {EOT} token")
        return self.special_tokens[EOT]

    def token_bytes(self, i: int) -> bytes:
        return self._itos[i].encode("utf-8")

    def token_byte_lengths(self) -> np.ndarray:
        lengths = np.array([len(c.encode("utf-8")) for c in self._itos], dtype=np.int32)
        lengths[list(self.special_tokens.values())] = 0
        return lengths

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "chars": self.chars, "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION} tokenizer")
        specials = sorted(d["special_tokens"].items(), key=lambda kv: kv[1])
        return cls(d["chars"], [s for s, _ in specials])

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                                         ensure_ascii=True).encode()).hexdigest()

    def save(self, directory):
        from tokenizer.io import save_tokenizer
        return save_tokenizer(self, directory)

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"
