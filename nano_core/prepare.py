"""Text sources -> tokenizer -> token shards + manifest.json.  `python -m nano_core.prepare --help`

    python -m nano_core.prepare --source ../shared/data/fineweb_edu/sample-10BT-281docs.jsonl --out data/fw --vocab-size 512

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
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nano_core.data import load_manifest, shard_dtype, write_shard
from tokenizer import BPETokenizer, load_tokenizer
from tokenizer.base import EOT
from tokenizer.bpe import check_vocab_size
from nano_io.dirs import atomic_dir
from nano_io.files import atomic_write
from nano_io.pool import worker_pool
from nano_io.sources import changed_files, open_sources, source_files
from nano_io.text import notice, notices_once

MANIFEST_FORMAT = 2  # 2: sources interleaved by size (1 read them one after another)
DEFAULT_VOCAB = 8192
DEFAULT_SHARD_TOKENS = 50_000_000   # 100 MB per uint16 shard: many shards to shuffle, few files to open
# --val-tokens when not given (auto_val_tokens): 10% of the corpus at ~3.5 bytes/token, within these bounds
VAL_TOKENS_MIN, VAL_TOKENS_MAX = 16_384, 1_000_000
MAX_WORKERS = 512                   # --workers above this is a typing slip (each one is a process)
CHUNK_CHARS = 1 << 20               # text per task sent to a worker: big enough to amortise pickling


def _write_json(path: Path, obj: dict):
    atomic_write(path, json.dumps(obj, indent=1))


# -----------------------------------------------------------------------------
# worker side: one encoder per process

_ENCODE = None
_EOT_ID = None
_DTYPE = None


def _init_worker(tok_dir: str, encoder: str, dtype: str):
    global _ENCODE, _EOT_ID, _DTYPE
    tok = load_tokenizer(tok_dir)
    _EOT_ID, _DTYPE = tok.eot_id, dtype
    _ENCODE = ENCODERS[encoder](tok)


def _tiktoken_encoder(tok):
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        raise ValueError("--encoder tiktoken needs tiktoken (pip install tiktoken); or use --encoder python") from None
    return tok.to_tiktoken().encode_ordinary  # plain text: "<|endoftext|>" inside a document is not special


def _python_encoder(tok):
    return tok.encode


def _auto_encoder(tok):
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return _python_encoder(tok)
    return _tiktoken_encoder(tok) if hasattr(tok, "to_tiktoken") else _python_encoder(tok)


ENCODERS = {"auto": _auto_encoder, "tiktoken": _tiktoken_encoder, "python": _python_encoder}


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Encode documents; return (all tokens with EOT before each document, tokens per document, UTF-8 bytes)."""
    ids, lengths, nbytes = [], [], 0
    for text in texts:
        doc = _ENCODE(text)
        ids.append(_EOT_ID)
        ids.extend(doc)
        lengths.append(len(doc) + 1)
        nbytes += len(text.encode("utf-8", errors="surrogatepass"))
    return np.array(ids, dtype=_DTYPE), np.array(lengths, dtype=np.int64), nbytes


# -----------------------------------------------------------------------------
# main side

def _documents(sources):
    """(global document index, text), the sources interleaved in proportion to their sizes; empty documents are
    dropped (they would be a lone EOT).

    Why interleave: the val shard is the first --val-tokens of this stream. Read source after source, it would hold
    only the first source (e.g. all of FineWeb-edu and none of the novels that make up most of the training data),
    and val loss would measure a distribution the model never trained on. Taking the next document from the source
    that is least far through its bytes makes every prefix - the val shard first - mix the sources as the whole
    corpus does. The order depends only on the sources' sizes and texts, so a rerun sees the same stream."""
    streams = [iter(src.documents()) for src in sources]
    sizes = [max(src.num_bytes(), 1) for src in sources]  # 0 = unknown size (hub): weight it like a small source
    read = [0] * len(sources)
    live = list(range(len(sources)))
    i = 0
    while live:
        k = min(live, key=lambda j: read[j] / sizes[j])  # ties go to the earlier source (min keeps the first)
        text = next(streams[k], None)
        if text is None:
            live.remove(k)
            continue
        read[k] += len(text)
        if text:
            yield i, text
            i += 1


def _chunks(docs, skip: int, on_skip):
    """Group documents from index `skip` on into lists of about CHUNK_CHARS characters. Documents before `skip`
    were written by a previous run: they are read (the sources are streams) but only reported to on_skip."""
    batch, first, size = [], None, 0
    for i, text in docs:
        if i < skip:
            on_skip(text)
            continue
        if first is None:
            first = i
        batch.append(text)
        size += len(text)
        if size >= CHUNK_CHARS:
            yield first, batch
            batch, first, size = [], None, 0
    if batch:
        yield first, batch


def _encoded(chunks, tok_dir: Path, encoder: str, dtype: str, num_workers: int):
    """Encoded chunks in input order. At most 2*workers chunks in flight, so memory stays bounded on any corpus
    (Pool.imap would read the whole input ahead)."""
    if num_workers <= 1:
        _init_worker(str(tok_dir), encoder, dtype)
        for first, texts in chunks:
            yield first, _encode_chunk(texts)
        return
    # workers ignore Ctrl-C (nano_io.pool); leaving the block (also on Ctrl-C or close()) terminates them
    with worker_pool(mp.get_context(), num_workers, _init_worker, (str(tok_dir), encoder, dtype)) as pool:
        pending = deque()
        for first, texts in chunks:
            pending.append((first, pool.apply_async(_encode_chunk, (texts,))))
            if len(pending) >= 2 * num_workers:
                f, r = pending.popleft()
                yield f, r.get()
        while pending:
            f, r = pending.popleft()
            yield f, r.get()


class _Sharder:
    """Cuts the ordered token stream into shards and records, per shard, where the next one starts.

    The validation shard (index 0) is decided by one rule, a pure function of the token stream (so a resumed run
    cuts where an uninterrupted one does): val takes whole documents until it holds `val_tokens`; the document
    that crosses the mark is cut there, at a token boundary (its rest opens the training data), when keeping it
    whole would make val more than twice `val_tokens` or when it is the last document (kept whole, it would leave
    nothing to train on - a single-document corpus such as TinyShakespeare). Val is therefore held in memory
    (at most ~2 x val_tokens) until the document after the crossing one arrives or the stream ends. With
    `auto_val` and a corpus smaller than val_tokens, val is 10% of the tokens by the same rule.
    """

    def __init__(self, out: Path, manifest: dict, dtype: str, shard_tokens: int, val_tokens: int, on_shard,
                 auto_val: bool = False):
        self.out, self.manifest, self.dtype = out, manifest, dtype
        self.shard_tokens, self.val_tokens, self.on_shard, self.auto_val = shard_tokens, val_tokens, on_shard, auto_val
        self.pieces, self.n, self.docs = [], 0, 0
        self.val_docs: list[tuple[int, np.ndarray]] = []  # (document, tokens) while val is undecided
        self.pending = False  # val reached val_tokens with a whole document: is it the last one?

    @property
    def index(self) -> int:
        return len(self.manifest["shards"])

    def add(self, doc: int, toks: np.ndarray, offset: int):
        """Tokens of document `doc` from token `offset` on (offset > 0 only for the document a resume starts in)."""
        if self.index > 0:
            self._add_train(doc, toks, offset)
            return
        assert offset == 0, "val is written before any resume point inside a document"
        if self.pending:  # the document that filled val is not the last one: val keeps it whole
            self._cut_val(len(self.val_docs), None)
            self._add_train(doc, toks, 0)
            return
        before = self.n
        self.val_docs.append((doc, toks))
        self.n += len(toks)
        if self.n >= self.val_tokens:
            if self.n > 2 * self.val_tokens:
                self._cut_val(len(self.val_docs) - 1, self.val_tokens - before, "long")
            else:
                self.pending = True

    def finish(self, end_doc: int) -> None:
        """The stream ended (end_doc = one past its last document): decide val if still open, flush the rest."""
        if self.index == 0 and self.val_docs:
            if self.pending:  # the crossing document is the last: cut it so that something is left to train on
                last = len(self.val_docs[-1][1])
                self._cut_val(len(self.val_docs) - 1, self.val_tokens - (self.n - last), "last")
            elif self.auto_val:  # the whole corpus is smaller than the automatic size: val gets 10% of it
                target = max(1, self.n // 10)
                total = 0
                for k, (_, toks) in enumerate(self.val_docs):
                    before, total = total, total + len(toks)
                    if total >= target:
                        if k + 1 < len(self.val_docs) and total <= 2 * target:
                            self._cut_val(k + 1, None)
                        else:
                            self._cut_val(k, target - before, "small")
                        break
        if self.index > 0 and self.n:
            self.flush(next_doc=end_doc, next_offset=0)

    def _cut_val(self, whole: int, cut: int | None, why: str = ""):
        """Write val: the first `whole` buffered documents, plus the first `cut` tokens of the next one when cut is
        given; everything after that goes on to the training shards."""
        docs, self.val_docs, self.pending = self.val_docs, [], False
        self.pieces = [t for _, t in docs[:whole]]
        self.n, self.docs = sum(map(len, self.pieces)), whole
        if cut is None:
            self.flush(next_doc=docs[whole][0] if whole < len(docs) else docs[-1][0] + 1, next_offset=0)
            rest = docs[whole:]
        else:
            doc, toks = docs[whole]
            self.pieces.append(toks[:cut])
            self.n, self.docs = self.n + cut, self.docs + 1
            self.manifest["val_cut"] = {"document": doc, "document_tokens": len(toks), "val_tokens": cut,
                                        "reason": why}
            notice(("val_cut", str(self.out)), _cut_notice(why, doc, len(toks), cut, self.val_tokens, self.n))
            self.flush(next_doc=doc, next_offset=cut)
            self._add_train(doc, toks[cut:], cut)
            rest = docs[whole + 1:]
        for doc, toks in rest:
            self._add_train(doc, toks, 0)

    def _add_train(self, doc: int, toks: np.ndarray, offset: int):
        while len(toks):
            starts_here = offset == 0
            take = toks[:self.shard_tokens - self.n]
            self.pieces.append(take)
            self.n += len(take)
            self.docs += starts_here
            toks, offset = toks[len(take):], offset + len(take)
            if self.n == self.shard_tokens:
                self.flush(next_doc=doc if len(toks) else doc + 1, next_offset=offset if len(toks) else 0)

    def flush(self, next_doc: int, next_offset: int):
        name = f"shard_{self.index:05d}.bin"
        write_shard(self.out / name, np.concatenate(self.pieces), dtype=self.dtype)
        entry = {"file": name, "split": "val" if self.index == 0 else "train", "documents": self.docs,
                 "tokens": self.n}
        self.manifest["shards"].append(entry)
        self.manifest["resume"] = {"next_doc": next_doc, "next_offset": next_offset}
        self.manifest["total_tokens"] = sum(s["tokens"] for s in self.manifest["shards"])
        # shard file first, then the manifest that names it: a crash in between leaves a file the manifest does
        # not list yet, which the rerun simply rewrites with the same bytes
        _write_json(self.out / "manifest.json", self.manifest)
        self.pieces, self.n, self.docs = [], 0, 0
        if self.on_shard is not None:
            self.on_shard(entry)


def _cut_notice(why: str, doc: int, doc_tokens: int, cut: int, val_tokens: int, val: int) -> str:
    head = {"long": f"document {doc} ({doc_tokens:,} tokens) would make the validation shard over twice "
                    f"--val-tokens {val_tokens:,}",
            "last": f"document {doc} ({doc_tokens:,} tokens) is the last one, and kept whole in validation it would "
                    "leave nothing to train on",
            "small": f"the corpus is smaller than the automatic --val-tokens {val_tokens:,}, so validation is 10% "
                     f"of it"}[why]
    return (f"{head}: validation ends after its first {cut:,} tokens ({val:,} val tokens in all) and the rest of "
            "it is training data")


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
    boundary so that val gets its share and the rest trains (see _Sharder; manifest["val_cut"] records it).
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
    prior = _open_out_dir(out)
    auto_val = val_tokens is None
    if auto_val:  # a run that already wrote shards keeps its size (even one made before the automatic default)
        val_tokens = prior["options"]["val_tokens"] if prior is not None and prior["shards"] else auto_val_tokens(src)
    tok = _get_tokenizer(tokenizer, vocab_size, src, prior, out, num_workers, progress)
    options = {"sources": specs, "max_docs": max_docs, "shard_tokens": shard_tokens, "val_tokens": val_tokens,
               "val_tokens_auto": auto_val,
               "train_vocab_size": (DEFAULT_VOCAB if vocab_size is None else vocab_size) if tokenizer is None else None}
    if prior is not None:
        _check_resumable(prior, out, tok, options)
        if prior.get("complete") and _train_tokens(prior) > 0:
            if progress:
                print(f"{out}: already prepared ({len(prior['shards'])} shards, {prior['total_tokens']:,} tokens)")
            return prior
        manifest = prior
        if prior.get("complete"):  # made by an older nano that put every token in val: unusable, so redo it
            notice(("redo", str(out)), f"{out} holds no training tokens (all {prior['total_tokens']:,} went to "
                   "validation, as older versions did with a single-document source); preparing it again")
        if prior.get("complete") or not prior["shards"]:
            manifest = _reset(out, prior, options)
    else:
        manifest = _start(out, tok, specs, src, options)
    ENCODERS[encoder](tok)  # fail here, in one line, rather than inside every worker process
    done_before = len(manifest["shards"])
    t_enc = time.time()
    text_bytes, encoded_bytes = _write_shards(src, out, manifest, encoder, num_workers, on_shard, progress, auto_val)
    _finish(out, manifest, text_bytes)
    if progress:
        _print_summary(out, manifest, done_before, encoded_bytes, time.time() - t0, time.time() - t_enc)
    return manifest


def _train_tokens(manifest: dict) -> int:
    return sum(s["tokens"] for s in manifest.get("shards", []) if s["split"] == "train")


def _check_options(sources, shard_tokens, val_tokens, num_workers, encoder, max_docs, vocab_size=None) -> list[str]:
    """Validate the options before any work; return the source specs (paths made absolute)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    specs = [_source_spec(s) for s in sources]
    if not specs:
        raise ValueError("no sources given; pass --source PATH (file, directory, .jsonl, .parquet, builtin, fineweb-edu)")
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


def _open_out_dir(out: Path) -> dict | None:
    """Create OUT, clear what a killed run left half-written, and return the manifest of a previous run (or None)."""
    if out.exists() and not out.is_dir():  # mkdir would raise FileExistsError, a traceback in the CLI
        raise ValueError(f"--out {out} is a file, not a directory; pass a new or existing directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a parent of OUT is a file
        raise ValueError(f"--out {out}: a part of that path is a file, not a directory; pass another --out") from None
    except PermissionError:
        raise ValueError(f"--out {out} cannot be created (permission denied); pass a directory you can write") \
            from None
    prior = load_manifest(out) if (out / "manifest.json").exists() else None
    for stale in out.glob(".*.tmp"):  # atomic_path temp files (.NAME.XXXX.tmp) of a run killed mid-write
        stale.unlink()
    for stale in out.glob(".tokenizer.*"):  # a tokenizer directory _save_tokenizer had not renamed yet
        shutil.rmtree(stale, ignore_errors=True)
    if prior is None and any(out.glob("shard_*.bin")):
        raise ValueError(f"{out} holds shard files but no manifest.json; delete them or use another --out")
    return prior


def _check_resumable(prior: dict, out: Path, tok, options: dict) -> None:
    """A previous run in OUT may be continued only with the same tokenizer, sources and shard options."""
    if prior.get("format_version") != MANIFEST_FORMAT and not prior.get("complete"):
        raise ValueError(f"{out} holds an unfinished prepare from another nano version (manifest format "
                         f"{prior.get('format_version')}, this one {MANIFEST_FORMAT}); delete {out} and rerun")
    if prior["tokenizer_hash"] != tok.hash:
        raise ValueError(f"{out} already holds shards made with a different tokenizer (hash "
                         f"{prior['tokenizer_hash'][:12]}, vocab {prior['vocab_size']}; this one {tok.hash[:12]}, "
                         f"vocab {tok.vocab_size}). Use another --out or delete {out}")
    # The tokenizer in OUT was trained on the sources: those must match. The shard sizes must match only while
    # there are usable shards to continue (none yet, or a finished run without training tokens, are redone).
    redo = not prior["shards"] or (prior.get("complete") and _train_tokens(prior) == 0)
    if not redo and prior.get("source_files") is not None:  # shards of the files as they were: not to be mixed
        changed = changed_files(prior["source_files"], source_files(options["sources"]))
        if changed:
            raise ValueError(f"{out} was prepared from the sources as they were: {len(changed)} of their files "
                             f"changed since (added, removed or edited; first {changed[0]}); delete {out} to "
                             "prepare again, or use another --out")
    keys = ("sources", "max_docs") if redo else ("sources", "max_docs", "shard_tokens", "val_tokens")
    changed = [k for k in keys if prior["options"].get(k) != options[k]]
    if changed:
        was = ", ".join(f"{k}={prior['options'].get(k)!r}" for k in changed)
        raise ValueError(f"{out} was prepared with different {', '.join(changed)} ({was}); "
                         "repeat those options or use another --out")


def _start(out: Path, tok, specs: list[str], src, options: dict) -> dict:
    """A fresh run: save the tokenizer to OUT/tokenizer, write and return the empty manifest."""
    _save_tokenizer(tok, out)
    dtype = shard_dtype(tok.vocab_size)
    manifest = {
        "format": "nano-shards", "format_version": MANIFEST_FORMAT,
        "shard_version": {"uint16": 1, "uint32": 2}[dtype], "dtype": dtype,
        "tokenizer_hash": tok.hash, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
        "sources": specs, "source_names": [x.name for x in src],
        "source_files": source_files(specs),  # read before the text: an edit during the run shows as a change
        "options": options, "shards": [], "resume": {"next_doc": 0, "next_offset": 0},
        "total_tokens": 0, "total_documents": 0, "text_bytes": 0, "complete": False,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(out / "manifest.json", manifest)
    return manifest


def _reset(out: Path, manifest: dict, options: dict) -> dict:
    """Back to no shards (keeping the tokenizer) with the given options: for an OUT whose shards are unusable
    (no training tokens) or that has none yet."""
    for stale in out.glob("shard_*.bin"):
        stale.unlink()
    for key in ("completed", "val_cut"):
        manifest.pop(key, None)
    manifest.update(format_version=MANIFEST_FORMAT, options=options, shards=[], complete=False, total_tokens=0,
                    source_files=source_files(options["sources"]),
                    total_documents=0, text_bytes=0, resume={"next_doc": 0, "next_offset": 0})
    _write_json(out / "manifest.json", manifest)
    return manifest


def _write_shards(src, out: Path, manifest: dict, encoder: str, num_workers: int, on_shard,
                  progress: bool, auto_val: bool = False) -> tuple[int, int]:
    """Encode the documents from the manifest's resume point on and write the remaining shards; return (text bytes
    of every document, text bytes encoded by this run)."""
    dtype, resume, options = manifest["dtype"], manifest["resume"], manifest["options"]
    val_tokens = options["val_tokens"]
    sharder = _Sharder(out, manifest, dtype, options["shard_tokens"], val_tokens, on_shard, auto_val)
    total_bytes = sum(x.num_bytes() for x in src) if options["max_docs"] is None else 0
    # the bar counts UTF-8 text bytes against file sizes: close enough for an ETA (jsonl escapes, CRLF aside)
    bar = tqdm(total=total_bytes or None, unit="B", unit_scale=True, desc="prepare",
               disable=not progress, smoothing=0.1)
    skipped_bytes, encoded_bytes = 0, 0

    def on_skip(text):
        nonlocal skipped_bytes
        n = len(text.encode("utf-8", errors="surrogatepass"))
        skipped_bytes += n
        bar.update(n)

    end_doc = resume["next_doc"]  # one past the last document seen: where a rerun would start
    try:
        for first, (ids, lengths, nbytes) in _encoded(_chunks(_documents(src), resume["next_doc"], on_skip),
                                                     out / "tokenizer", encoder, dtype, num_workers):
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
    if sharder.index == 0 or _train_tokens(manifest) == 0:
        total = manifest["total_tokens"] if sharder.index else sharder.n
        _reset(out, manifest, options)  # nothing usable: leave no shards, so a rerun may change --val-tokens
        raise ValueError(f"the sources give only {total:,} tokens, not enough for the validation shard "
                         f"(--val-tokens {val_tokens:,}) plus training data; lower --val-tokens (e.g. "
                         f"{max(1, total // 10):,}), leave it out (automatic), or add sources")
    return skipped_bytes + encoded_bytes, encoded_bytes  # every document counted once


def _finish(out: Path, manifest: dict, text_bytes: int) -> None:
    """Mark the manifest complete (totals, timestamp, no resume point) and write it."""
    if _train_tokens(manifest) == 0:  # _write_shards refuses this first; never write "complete" without them
        raise ValueError(f"{out}: no training tokens; not marking it complete")
    manifest["total_documents"] = sum(s["documents"] for s in manifest["shards"])
    manifest["text_bytes"] = text_bytes
    manifest["complete"] = True
    manifest["completed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest.pop("resume", None)
    _write_json(out / "manifest.json", manifest)


def _print_summary(out: Path, manifest: dict, done_before: int, encoded_bytes: int, secs: float, enc_secs: float):
    enc_secs = max(enc_secs, 1e-9)
    val = manifest["shards"][0]["tokens"]
    print(f"prepared {out}: {len(manifest['shards'])} shards ({len(manifest['shards']) - done_before} new), "
          f"{manifest['total_documents']:,} documents, {val:,} val + {manifest['total_tokens'] - val:,} train "
          f"tokens ({manifest['dtype']}, vocab {manifest['vocab_size']}); encoded {encoded_bytes / 1e6:.1f} MB of "
          f"text at {encoded_bytes / 1e6 / enc_secs:.1f} MB/s, {secs:.1f}s total")


def _save_tokenizer(tok, out: Path):
    """Save to a temp directory, then rename (nano_io.dirs.atomic_dir): OUT/tokenizer is either absent or complete.
    Its temp and set-aside names start with ".tokenizer.", which _open_out_dir clears after a crash."""
    final = out / "tokenizer"
    with atomic_dir(final, prefix=".tokenizer.", aside=out / f".tokenizer.replaced-{os.getpid()}") as tmp:
        tok.save(tmp)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nano_core.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--source", nargs="+", action="extend", required=True, metavar="PATH",
                   help="text files, directories, .jsonl/.parquet, 'builtin' or 'fineweb-edu' (in this order)")
    p.add_argument("--out", required=True, help="output directory for shards, manifest.json and tokenizer/")
    p.add_argument("--tokenizer", help="directory of a saved tokenizer (default: train one on the sources)")
    p.add_argument("--vocab-size", type=int, help=f"vocabulary size when training a tokenizer (default {DEFAULT_VOCAB})")
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
