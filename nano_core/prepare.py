"""Text sources -> tokenizer -> token shards + manifest.json.  `python -m nano_core.prepare --help`

    python -m nano_core.prepare --source ../shared/data/fineweb_edu/sample-10BT-281docs.jsonl --out data/fw \\
        --vocab-size 512

What it does, in order:
1. trains a BPE tokenizer on the same sources (or loads --tokenizer DIR) and saves it to OUT/tokenizer/
   (nano_tokenizer.json, nano's format, and tokenizer.json, its Hugging Face export);
2. reads documents in this process, the sources interleaved in proportion to their sizes (so the val shard mixes
   them as the training data does), and encodes them in worker processes (tiktoken's encoder built from our merges
   when tiktoken is installed, our own encoder otherwise: same ids), keeping document order;
3. writes shards: every document is preceded by the end-of-text id; shard_00000.bin is validation (whole documents
   until --val-tokens is reached), then training shards of exactly --shard-tokens tokens (the last one shorter;
   documents may continue into the next shard, as in llm.c). uint16 tokens when the vocabulary fits, else uint32;
4. after every shard, rewrites manifest.json atomically with the shards so far and where the next shard starts
   (document index + token offset). A rerun of the same command skips the finished shards and those documents, so
   an interrupted-then-resumed prepare writes byte-identical shards to an uninterrupted one: shard contents depend
   only on sources, tokenizer and options, never on worker timing or on --workers.

--val-tokens defaults to ~10% of the corpus (auto_val_tokens). Val keeps whole documents, except that the document
crossing the mark is cut at a token boundary when it would make val over twice the size or when it is the last
document: TinyShakespeare (one document) gives val its first tokens and trains on the rest, with a notice and
manifest["val_cut"]. An OUT is never marked complete without training tokens. Ctrl-C prints one line and exits 130;
the same command continues (also after an interrupt during tokenizer training, which simply trains again).

This module holds the command and the run from sources to shards; its parts: prepare_encode.py (the document
order and the encoding workers), prepare_shards.py (shards and the validation cut), prepare_out.py (OUT, its
manifest and the rules for continuing it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nano_core.prepare_encode import ENCODERS, chunks_of, encoded_chunks, interleaved_documents
from nano_core.prepare_out import (check_resumable, finish_manifest, open_out_dir, reset_manifest, start_manifest,
                                   train_tokens)
from nano_core.prepare_shards import Sharder
from nano_io.sources import open_sources
from nano_io.text import notice, notices_once
from tokenizer import BPETokenizer, load_tokenizer
from tokenizer.base import EOT
from tokenizer.bpe import check_vocab_size

DEFAULT_VOCAB = 8192
DEFAULT_SHARD_TOKENS = 50_000_000   # 100 MB per uint16 shard: many shards to shuffle, few files to open
# --val-tokens when not given (auto_val_tokens): 10% of the corpus at ~3.5 bytes/token, within these bounds
VAL_TOKENS_MIN, VAL_TOKENS_MAX = 16_384, 1_000_000
MAX_WORKERS = 512                   # --workers above this is a typing slip (each one is a process)


def _source_spec(s) -> str:
    p = Path(str(s)).expanduser()
    return str(p.resolve()) if p.exists() else str(s)


def _get_tokenizer(tokenizer, vocab_size, sources, prior, out: Path, num_workers, progress):
    """The tokenizer to use: given object, loaded directory, the one a previous run saved in OUT, or newly trained."""
    if tokenizer is not None:
        if isinstance(tokenizer, (str, os.PathLike)):
            path = Path(tokenizer).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"--tokenizer {path} not found (a directory written by tok.save)")
            tokenizer = load_tokenizer(path)
        if vocab_size is not None and vocab_size != tokenizer.vocab_size:
            raise ValueError(f"--vocab-size {vocab_size} contradicts the given tokenizer's vocab size "
                             f"{tokenizer.vocab_size}; pass only one of them")
        return tokenizer
    vocab_size = DEFAULT_VOCAB if vocab_size is None else vocab_size
    if prior is not None:
        asked = prior["options"].get("train_vocab_size")
        if asked != vocab_size:
            raise ValueError(f"{out} already holds shards made with a different tokenizer (hash "
                             f"{prior['tokenizer_hash'][:12]}, vocab {prior['vocab_size']}); this run would train "
                             f"vocab {vocab_size}. Use another --out or delete {out}")
        return load_tokenizer(out / "tokenizer")  # trained by the interrupted run: do not train again
    # train on the very Source objects we will encode (same documents, same max_docs; split across processes)
    return BPETokenizer.train(list(sources), vocab_size=vocab_size, special_tokens=(EOT,), num_workers=num_workers,
                              progress=progress)


def _open_sources(specs, max_docs):
    sources = open_sources(list(specs), max_docs=max_docs)
    for src in sources:  # an empty source is a mistake worth stopping for before any work is done
        if next(iter(src.documents()), None) is None:  # (documents() raises for most empty sources itself)
            raise ValueError(f"{src.name}: no documents (empty source); give a file with text in it")
    return sources


def auto_val_tokens(sources) -> int:
    """The validation size when --val-tokens is not given: ~10% of the corpus at ~3.5 bytes/token, at least
    16,384 and at most 1,000,000 tokens; 1,000,000 when the size is unknown (the hub). `sources`: specs or Sources.
    (These are the numbers nano_core.run used before prepare had an automatic default: cached shards stay valid.)"""
    size = sum(src.num_bytes() for src in open_sources(list(sources) if isinstance(sources, (list, tuple))
                                                       else [sources]))
    return VAL_TOKENS_MAX if size == 0 else int(min(VAL_TOKENS_MAX, max(VAL_TOKENS_MIN, size / 3.5 / 10)))


def prepare(sources, out_dir, tokenizer=None, vocab_size: int | None = None,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, val_tokens: int | None = None,
            num_workers: int = 2, progress: bool = True, max_docs: int | None = None, encoder: str = "auto",
            on_shard=None) -> dict:
    """Tokenize `sources` into shards in `out_dir`; return the manifest. Re-running continues an interrupted run.

    tokenizer: None (train one with `vocab_size`, default 8192), a directory saved by tok.save, or a tokenizer.
    val_tokens: the validation shard's size; None = auto_val_tokens(sources) (a rerun in an OUT that already has
    shards keeps the size it was made with). A source of one document (TinyShakespeare) is cut at a token
    boundary so that val gets its share and the rest trains (see Sharder; manifest["val_cut"] records it).
    encoder: "auto" (tiktoken when installed), "tiktoken" or "python" — all give the same ids.
    on_shard: called with each shard's manifest entry once the shard and manifest are on disk.

    Errors are one-line ValueError/FileNotFoundError: bad options, binary sources, a corpus too small for val plus
    training data (OUT is then left without shards, so a rerun may change --val-tokens). OUT is never marked
    complete without training tokens. Ctrl-C (KeyboardInterrupt) leaves finished shards; rerunning continues.
    """
    specs = _check_options(sources, shard_tokens, val_tokens, num_workers, encoder, max_docs, vocab_size)
    out = Path(out_dir).expanduser()
    made = _first_missing(out)
    try:
        with notices_once():  # a file read by the tokenizer trainer and again by the encoder is reported once
            return _prepare(specs, out, tokenizer, vocab_size, shard_tokens, val_tokens, num_workers, progress,
                            max_docs, encoder, on_shard)
    except (ValueError, OSError):
        # A refusal (a bad --tokenizer, a source that turns out unreadable) leaves no OUT this call created and
        # never filled: nothing half-made behind a one-line error. Once a manifest exists OUT is kept, as it is
        # after Ctrl-C: it holds the trained tokenizer that a rerun continues with.
        if made is not None and out.is_dir() and not (out / "manifest.json").exists():
            shutil.rmtree(made, ignore_errors=True)
        raise


def _first_missing(path: Path) -> Path | None:
    """The outermost directory that creating `path` (with its parents) would make, or None if it exists."""
    if os.path.lexists(path):
        return None
    while path.parent != path and not os.path.lexists(path.parent):
        path = path.parent
    return path


def _prepare(specs, out, tokenizer, vocab_size, shard_tokens, val_tokens, num_workers, progress, max_docs,
             encoder, on_shard) -> dict:
    t0 = time.time()
    src = _open_sources(specs, max_docs)
    prior = open_out_dir(out)
    auto_val = val_tokens is None
    if auto_val:  # a run that already wrote shards keeps its size (even one made before the automatic default)
        val_tokens = prior["options"]["val_tokens"] if prior is not None and prior["shards"] else auto_val_tokens(src)
    tok = _get_tokenizer(tokenizer, vocab_size, src, prior, out, num_workers, progress)
    options = {"sources": specs, "max_docs": max_docs, "shard_tokens": shard_tokens, "val_tokens": val_tokens,
               "val_tokens_auto": auto_val,
               "train_vocab_size": (DEFAULT_VOCAB if vocab_size is None else vocab_size) if tokenizer is None else None}
    if prior is not None:
        check_resumable(prior, out, tok, options)
        if prior.get("complete") and train_tokens(prior) > 0:
            if progress:
                print(f"{out}: already prepared ({len(prior['shards'])} shards, {prior['total_tokens']:,} tokens)")
            return prior
        manifest = prior
        if prior.get("complete"):  # made by an older nano that put every token in val: unusable, so redo it
            notice(("redo", str(out)), f"{out} holds no training tokens (all {prior['total_tokens']:,} went to "
                   "validation, as older versions did with a single-document source); preparing it again")
        if prior.get("complete") or not prior["shards"]:
            manifest = reset_manifest(out, prior, options)
    else:
        manifest = start_manifest(out, tok, specs, src, options)
    ENCODERS[encoder](tok)  # fail here, in one line, rather than inside every worker process
    done_before = len(manifest["shards"])
    t_enc = time.time()
    text_bytes, encoded_bytes = _write_shards(src, out, manifest, encoder, num_workers, on_shard, progress, auto_val)
    finish_manifest(out, manifest, text_bytes)
    if progress:
        _print_summary(out, manifest, done_before, encoded_bytes, time.time() - t0, time.time() - t_enc)
    return manifest


def _check_options(sources, shard_tokens, val_tokens, num_workers, encoder, max_docs, vocab_size=None) -> list[str]:
    """Validate the options before any work; return the source specs (paths made absolute)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    specs = [_source_spec(s) for s in sources]
    if not specs:
        raise ValueError("no sources given; pass --source PATH (file, directory, .jsonl, .parquet, builtin, "
                         "fineweb-edu)")
    named = {"shard_tokens": shard_tokens, "workers": num_workers}
    if val_tokens is not None:
        named["val_tokens"] = val_tokens
    for name, v in named.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    if shard_tokens >= 2**31:
        raise ValueError(f"--shard-tokens {shard_tokens} exceeds the format's int32 token count; use at most 2**31-1")
    if val_tokens is not None and val_tokens >= 2**30:
        raise ValueError(f"--val-tokens {val_tokens} is too big for one shard (val may grow to twice it and a shard "
                         "holds under 2**31 tokens); use at most 2**30-1")
    if vocab_size is not None:
        check_vocab_size(vocab_size)
    if encoder not in ENCODERS:
        raise ValueError(f"--encoder must be one of {sorted(ENCODERS)}, got {encoder!r}")
    if num_workers > MAX_WORKERS:  # a typing slip would fork that many processes
        raise ValueError(f"--workers {num_workers} is more processes than any machine runs usefully; use at most "
                         f"{MAX_WORKERS} (default: the number of CPU cores)")
    if max_docs is not None and max_docs < 1:
        raise ValueError(f"--max-docs must be a positive integer, got {max_docs!r}")
    return specs


def _write_shards(src, out: Path, manifest: dict, encoder: str, num_workers: int, on_shard,
                  progress: bool, auto_val: bool = False) -> tuple[int, int]:
    """Encode the documents from the manifest's resume point on and write the remaining shards; return (text bytes
    of every document, text bytes encoded by this run)."""
    dtype, resume, options = manifest["dtype"], manifest["resume"], manifest["options"]
    val_tokens = options["val_tokens"]
    sharder = Sharder(out, manifest, dtype, options["shard_tokens"], val_tokens, on_shard, auto_val)
    total_bytes = sum(x.num_bytes() for x in src) if options["max_docs"] is None else 0
    skipped_bytes, encoded_bytes = 0, 0

    def on_skip(text):
        nonlocal skipped_bytes
        n = len(text.encode("utf-8", errors="surrogatepass"))
        skipped_bytes += n
        bar.update(n)

    end_doc = resume["next_doc"]  # one past the last document seen: where a rerun would start
    # the bar counts UTF-8 text bytes against file sizes: close enough for an ETA (jsonl escapes, CRLF
    # aside); made just before the try that closes it, so that a Ctrl-C leaves no bar unfinished
    bar = tqdm(total=total_bytes or None, unit="B", unit_scale=True, desc="prepare",
               disable=not progress, smoothing=0.1)
    try:
        chunks = chunks_of(interleaved_documents(src), resume["next_doc"], on_skip)
        for first, (ids, lengths, nbytes) in encoded_chunks(chunks, out / "tokenizer", encoder, dtype, num_workers):
            ends = np.cumsum(lengths)
            for j, piece in enumerate(np.split(ids, ends[:-1])):
                doc = first + j
                offset = resume["next_offset"] if doc == resume["next_doc"] else 0
                sharder.add(doc, piece[offset:], offset)
            encoded_bytes += nbytes
            end_doc = first + len(lengths)
            bar.update(nbytes)
        bar.total = bar.n  # the total was file sizes, the count is text bytes: end the bar at 100%
    finally:
        bar.close()
    sharder.finish(end_doc)
    if sharder.index == 0 or train_tokens(manifest) == 0:
        total = manifest["total_tokens"] if sharder.index else sharder.n
        reset_manifest(out, manifest, options)  # nothing usable: leave no shards, so a rerun may change --val-tokens
        raise ValueError(f"the sources give only {total:,} tokens, not enough for the validation shard "
                         f"(--val-tokens {val_tokens:,}) plus training data; lower --val-tokens (e.g. "
                         f"{max(1, total // 10):,}), leave it out (automatic), or add sources")
    return skipped_bytes + encoded_bytes, encoded_bytes  # every document counted once


def _print_summary(out: Path, manifest: dict, done_before: int, encoded_bytes: int, secs: float, enc_secs: float):
    enc_secs = max(enc_secs, 1e-9)
    val = manifest["shards"][0]["tokens"]
    print(f"prepared {out}: {len(manifest['shards'])} shards ({len(manifest['shards']) - done_before} new), "
          f"{manifest['total_documents']:,} documents, {val:,} val + {manifest['total_tokens'] - val:,} train "
          f"tokens ({manifest['dtype']}, vocab {manifest['vocab_size']}); encoded {encoded_bytes / 1e6:.1f} MB of "
          f"text at {encoded_bytes / 1e6 / enc_secs:.1f} MB/s, {secs:.1f}s total")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nano_core.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--source", nargs="+", action="extend", required=True, metavar="PATH",
                   help="text files, directories, .jsonl/.parquet, 'builtin' or 'fineweb-edu' (in this order)")
    p.add_argument("--out", required=True, help="output directory for shards, manifest.json and tokenizer/")
    p.add_argument("--tokenizer", help="directory of a saved tokenizer (default: train one on the sources)")
    p.add_argument("--vocab-size", type=int,
                   help=f"vocabulary size when training a tokenizer (default {DEFAULT_VOCAB})")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per training shard")
    p.add_argument("--val-tokens", type=int, default=None,
                   help=f"tokens (whole documents, from the start) in the validation shard_00000.bin (default: "
                        f"~10%% of the corpus, {VAL_TOKENS_MIN:,} to {VAL_TOKENS_MAX:,}; a single document is cut)")
    p.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2), help="encoding processes")
    p.add_argument("--max-docs", type=int, help="stop after this many documents (quick runs)")
    p.add_argument("--encoder", choices=sorted(ENCODERS), default="auto", help="tiktoken (fast) or python (same ids)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = p.parse_args(argv)
    # Ctrl-C and SIGTERM raise KeyboardInterrupt here, whatever this process inherited: a command started in the
    # background by a script (`cmd &`) inherits SIGINT ignored, and Python then leaves it ignored, so a Ctrl-C or
    # `kill -INT` went unheard and the run finished and exited 0. SIGTERM's default would end it with no word.
    restore = _interrupt_on_signals()
    try:
        prepare(args.source, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                shard_tokens=args.shard_tokens, val_tokens=args.val_tokens, num_workers=args.workers,
                progress=not args.quiet, max_docs=args.max_docs, encoder=args.encoder)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; 130 = 128 + SIGINT, as shells report it
        print(f"interrupted: finished shards in {args.out} are kept; rerun the same command to continue",
              file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        restore()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _interrupt_on_signals():
    """Make SIGINT and SIGTERM raise KeyboardInterrupt in this (main) thread; return a function restoring the
    previous handlers (main(argv) is also called in-process, by tests)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in previous.items()]


if __name__ == "__main__":
    main()
