"""Pre-tokenization patterns: text is cut into chunks by a regex, and BPE merges never cross a chunk boundary.

All patterns need the third-party `regex` package (\\p{L} classes, possessive quantifiers `?+` / `++`).
"""
import regex

# GPT-4 (tiktoken cl100k_base): case-insensitive contractions, letter runs with one optional leading
# non-letter, numbers in groups of 1-3 digits, punctuation runs, newline runs, whitespace.
GPT4 = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
        r"""|\s*[\r\n]|\s+(?!\S)|\s+""")

# The same with numbers in groups of 1-2 digits (nanochat's choice: fewer number tokens wasted on a small vocab).
GPT4_2DIGIT = GPT4.replace(r"\p{N}{1,3}", r"\p{N}{1,2}")

# GPT-2: lower-case contractions only, a letter/number/punctuation run with one optional leading space.
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

PATTERNS = {"gpt4": GPT4, "gpt4-2digit": GPT4_2DIGIT, "gpt2": GPT2}


def resolve_pattern(pattern: str) -> str:
    """A pattern name ("gpt4", "gpt4-2digit", "gpt2") or a literal regex -> the regex string (checked to compile)."""
    text = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(text)
    except regex.error as e:
        names = ", ".join(PATTERNS)
        raise ValueError(f"pattern {pattern!r} is neither a known name ({names}) nor a valid regex: {e}") from None
    return text


def pattern_name(text: str) -> str | None:
    """The name of a known pattern string, or None for a custom regex."""
    return next((name for name, p in PATTERNS.items() if p == text), None)
