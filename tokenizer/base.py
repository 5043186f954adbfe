"""What every nano tokenizer shares: the end-of-text token, bytes per token (for bits per byte), the identity hash
and saving (DIR/tokenizer.json). A subclass defines its vocabulary (vocab_size, token_bytes), encode/decode, and
to_dict/from_dict with its own FORMAT and VERSION (checked by check_format)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from tokenizer.files import atomic_write

EOT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"  # what save() writes into its directory


def canonical_json(d: dict) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class Tokenizer:
    FORMAT: str
    VERSION: int
    special_tokens: dict[str, int]  # name -> id, after the ordinary tokens

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def token_bytes(self, i: int) -> bytes:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def check_format(cls, d: dict) -> None:
        if d.get("format") != cls.FORMAT or d.get("version") != cls.VERSION:
            raise ValueError(f"not a {cls.FORMAT} v{cls.VERSION} tokenizer (format={d.get('format')!r}, "
                             f"version={d.get('version')!r})")

    @property
    def eot_id(self) -> int:
        if EOT not in self.special_tokens:
            raise ValueError(f"this tokenizer has no {EOT} token (special tokens: {list(self.special_tokens)})")
        return self.special_tokens[EOT]

    def token_byte_lengths(self) -> np.ndarray:
        """Bytes per token id (for bits-per-byte); special tokens count 0 bytes of text."""
        lengths = np.array([len(self.token_bytes(i)) for i in range(self.vocab_size)], dtype=np.int32)
        lengths[list(self.special_tokens.values())] = 0
        return lengths

    @property
    def hash(self) -> str:
        """Identity of the tokenizer's definition (what manifests and checkpoints record)."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()

    def save(self, directory) -> Path:
        """Write DIRECTORY/tokenizer.json (our versioned JSON, see tokenizer.io) atomically; return its path."""
        path = Path(directory) / TOKENIZER_FILE
        atomic_write(path, json.dumps(self.to_dict(), ensure_ascii=False) + "\n")
        return path
