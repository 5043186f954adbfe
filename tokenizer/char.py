"""Character-level tokenizer (TinyShakespeare-style runs): one id per distinct character of the training text,
sorted by code point; special tokens after them. Same interface as BPETokenizer."""
from __future__ import annotations

from tokenizer.base import EOT, Tokenizer
from nano_io.sources import resolve_inputs


class CharTokenizer(Tokenizer):
    FORMAT = "nano-char"
    VERSION = 1

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

    def token_bytes(self, i: int) -> bytes:
        return self._itos[i].encode("utf-8")

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "version": self.VERSION, "chars": self.chars,
                "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        cls.check_format(d)
        specials = sorted(d["special_tokens"].items(), key=lambda kv: kv[1])
        return cls(d["chars"], [s for s, _ in specials])

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"
