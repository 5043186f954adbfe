"""nano's tokenizers: a hand-written byte-level BPE (trainer + encoder) and a character-level tokenizer."""
from tokenizer.bpe import BPETokenizer
from tokenizer.char import CharTokenizer
from tokenizer.io import export_hf, export_tiktoken, load_tiktoken, load_tokenizer, save_tokenizer
from tokenizer.patterns import PATTERNS

__all__ = ["BPETokenizer", "CharTokenizer", "load_tokenizer", "save_tokenizer", "export_hf", "export_tiktoken",
           "load_tiktoken", "PATTERNS"]
