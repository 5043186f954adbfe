"""What every nano tokenizer shares: the end-of-text token, bytes per token (for bits per byte), the identity hash
and saving (DIR/nano_tokenizer.json, plus DIR/tokenizer.json, the Hugging Face form, where there is one). A subclass
defines its vocabulary (vocab_size, token_bytes), encode/decode, and to_dict/from_dict with its own FORMAT and
VERSION (checked by check_format)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from nano_io.files import atomic_write

EOT = "<|endoftext|>"
TOKENIZER_FILE = "nano_tokenizer.json"  # nano's own format: what save() writes and load_tokenizer() reads
HF_TOKENIZER_FILE = "tokenizer.json"  # the name every HF tool assumes: the HF export, written beside nano's file
LEGACY_TOKENIZER_FILE = "tokenizer.json"  # where nano wrote its own format before; load_tokenizer still reads it


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
        """Write DIRECTORY/nano_tokenizer.json (our versioned JSON, see tokenizer.io) atomically and return its path;
        a tokenizer with a HF form (BPE) also writes DIRECTORY/tokenizer.json, its HF export with the same ids, so
        `tokenizers.Tokenizer.from_file(DIRECTORY/tokenizer.json)` and transformers load the directory too."""
        from tokenizer.io import export_hf, has_hf_form  # cycle: tokenizer.io imports this module

        directory = Path(directory)
        path = atomic_write(directory / TOKENIZER_FILE, json.dumps(self.to_dict(), ensure_ascii=False) + "\n")
        if has_hf_form(self):
            export_hf(self, directory / HF_TOKENIZER_FILE)
        return path
