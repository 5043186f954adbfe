"""Train a byte-level BPE tokenizer.

  python -m tokenizer.train --input ../shared/data/gutenberg --vocab-size 32768 --out runs/tok \\
      [--pattern gpt4|gpt4-2digit|gpt2] [--special "<|endoftext|>" ...] [--max-chars N] [--max-chars-per-doc N]
      [--workers 2] [--val ../shared/data/wikitext2/wiki.test.raw] [--export hf,tiktoken] [--char]

Writes OUT/nano_tokenizer.json (our format; BPE also OUT/tokenizer.json, its HF export); --export adds
OUT/hf/tokenizer.json and OUT/tiktoken/.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nano_io.sources import open_sources
from tokenizer.base import EOT
from tokenizer.bpe import BPETokenizer, check_vocab_size
from tokenizer.char import CharTokenizer
from tokenizer.io import export_hf, export_tiktoken
from tokenizer.patterns import PATTERNS

EXPORTS = {"hf": lambda tok, out: export_hf(tok, out / "hf" / "tokenizer.json"),
           "tiktoken": lambda tok, out: export_tiktoken(tok, out / "tiktoken")}


def bytes_per_token(tok, val_paths) -> tuple[float, int]:
    """Held-out compression: UTF-8 bytes of the validation text / tokens it encodes to."""
    n_bytes = n_tokens = 0
    for src in open_sources(val_paths):
        for doc in src.documents():
            n_bytes += len(doc.encode("utf-8"))
            n_tokens += len(tok.encode(doc))
    return n_bytes / max(n_tokens, 1), n_bytes


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tokenizer.train", description=__doc__.split("\n")[1])
    p.add_argument("--input", nargs="+", required=True, help="txt/jsonl/parquet files or directories, 'builtin'")
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--pattern", default="gpt4", help=f"split pattern: {', '.join(PATTERNS)} or a regex")
    p.add_argument("--special", nargs="*", default=[EOT], help="special tokens (ids after the merges)")
    p.add_argument("--max-chars", type=int, default=None, help="total character cap")
    p.add_argument("--max-chars-per-doc", type=int, default=None, help="truncate each document to N characters")
    p.add_argument("--workers", type=int, default=2, help="processes for regex splitting")
    p.add_argument("--val", nargs="*", default=[], help="held-out text for a bytes/token figure")
    p.add_argument("--export", default="", help="comma list of extra formats: hf,tiktoken")
    p.add_argument("--char", action="store_true", help="train a character-level tokenizer instead of BPE")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


MAX_WORKERS = 512  # --workers above this is a typing slip (each one is a process)


def check_args(args) -> None:
    """One-line errors naming the flag, before any text is read or anything is written: numbers that mean nothing,
    an --out that is a file, and --input/--val sources that cannot be read (--val was read only after training and
    saving, so a bad one left a saved tokenizer behind an error)."""
    for flag, value in (("--max-chars", args.max_chars), ("--max-chars-per-doc", args.max_chars_per_doc),
                        ("--workers", args.workers)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    if args.workers > MAX_WORKERS:
        raise ValueError(f"--workers {args.workers} is more processes than any machine runs usefully; use at most "
                         f"{MAX_WORKERS}")
    if not args.char:
        check_vocab_size(args.vocab_size, len(args.special))
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file, not a directory; pass a new or existing directory")
    for flag, specs in (("--input", args.input), ("--val", args.val)):
        if specs:
            try:
                open_sources(specs)
            except (ValueError, FileNotFoundError) as e:
                raise ValueError(f"{flag}: {e}") from None


def main(argv=None) -> None:
    args = parse_args(argv)
    exports = [e for e in args.export.split(",") if e]
    unknown = [e for e in exports if e not in EXPORTS]
    if unknown:
        sys.exit(f"error: unknown --export {','.join(unknown)}; choose from {','.join(EXPORTS)}")
    out = Path(args.out)
    try:
        check_args(args)
        t0 = time.perf_counter()
        stats: dict = {}
        if args.char:
            tok = CharTokenizer.train(args.input, special_tokens=args.special, max_chars=args.max_chars)
        else:
            tok = BPETokenizer.train(args.input, vocab_size=args.vocab_size, pattern=args.pattern,
                                     special_tokens=args.special, max_chars_per_doc=args.max_chars_per_doc,
                                     max_chars=args.max_chars, num_workers=args.workers,
                                     progress=not args.no_progress, stats=stats)
        seconds = time.perf_counter() - t0
        saved = tok.save(out)
        for e in exports:
            EXPORTS[e](tok, out)
        val = bytes_per_token(tok, args.val) if args.val else None
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # every file is written atomically: whole or absent
        print(f"interrupted: nothing half-written in {out}; rerun the same command to train again", file=sys.stderr)
        sys.exit(130)
    print(f"trained {tok!r} in {seconds:.1f}s -> {saved}")
    if stats:
        print(f"  {stats['chars']:,} chars in {stats['docs']:,} docs; {stats['unique_chunks']:,} unique chunks; "
              f"{stats['merges']:,} merges (split {stats['split_seconds']:.1f}s, merges {stats['merge_seconds']:.1f}s)")
    if val:
        print(f"  held-out: {val[0]:.3f} bytes/token on {val[1]:,} bytes")
    if exports:
        print(f"  exported: {', '.join(exports)}")


if __name__ == "__main__":
    main()
