"""Text sources -> tokenizer -> token shards + manifest.json.  `python -m nano_core.prepare --help`

    python -m nano_core.prepare --source ../shared/data/fineweb_edu/sample-10BT-281docs.jsonl --out data/fw --vocab-size 512

What it does, in order:
1. trains a BPE tokenizer on the same sources (or loads --tokenizer DIR) and saves it to OUT/tokenizer/;
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
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nano_core.data import load_manifest, shard_dtype, write_shard
from tokenizer import BPETokenizer, load_tokenizer
from tokenizer.base import EOT
from tokenizer.files import atomic_write
from tokenizer.sources import open_sources

MANIFEST_FORMAT = 2  # 2: sources interleaved by size (1 read them one after another)
DEFAULT_VOCAB = 8192
DEFAULT_SHARD_TOKENS = 50_000_000   # 100 MB per uint16 shard: many shards to shuffle, few files to open
DEFAULT_VAL_TOKENS = 1_000_000
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
    pool = mp.get_context().Pool(num_workers, initializer=_init_worker, initargs=(str(tok_dir), encoder, dtype))
    try:
        pending = deque()
        for first, texts in chunks:
            pending.append((first, pool.apply_async(_encode_chunk, (texts,))))
            if len(pending) >= 2 * num_workers:
                f, r = pending.popleft()
                yield f, r.get()
        while pending:
            f, r = pending.popleft()
            yield f, r.get()
    finally:
        pool.terminate()  # also on an exception or interrupt: no orphaned workers
        pool.join()


class _Sharder:
    """Cuts the ordered token stream into shards and records, per shard, where the next one starts."""

    def __init__(self, out: Path, manifest: dict, dtype: str, shard_tokens: int, val_tokens: int, on_shard):
        self.out, self.manifest, self.dtype = out, manifest, dtype
        self.shard_tokens, self.val_tokens, self.on_shard = shard_tokens, val_tokens, on_shard
        self.pieces, self.n, self.docs = [], 0, 0

    @property
    def index(self) -> int:
        return len(self.manifest["shards"])

    def add(self, doc: int, toks: np.ndarray, offset: int):
        """Tokens of document `doc` from token `offset` on (offset > 0 only for the document a resume starts in)."""
        while len(toks):
            starts_here = offset == 0
            take = toks if self.index == 0 else toks[:self.shard_tokens - self.n]  # val keeps documents whole
            self.pieces.append(take)
            self.n += len(take)
            self.docs += starts_here
            toks, offset = toks[len(take):], offset + len(take)
            full = self.n >= self.val_tokens if self.index == 0 else self.n == self.shard_tokens
            if full:
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
    vocab_size = vocab_size or DEFAULT_VOCAB
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


def prepare(sources, out_dir, tokenizer=None, vocab_size: int | None = None,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, val_tokens: int = DEFAULT_VAL_TOKENS,
            num_workers: int = 2, progress: bool = True, max_docs: int | None = None, encoder: str = "auto",
            on_shard=None) -> dict:
    """Tokenize `sources` into shards in `out_dir`; return the manifest. Re-running continues an interrupted run.

    tokenizer: None (train one with `vocab_size`, default 8192), a directory saved by tok.save, or a tokenizer.
    encoder: "auto" (tiktoken when installed), "tiktoken" or "python" — all give the same ids.
    on_shard: called with each shard's manifest entry once the shard and manifest are on disk.
    """
    specs = _check_options(sources, shard_tokens, val_tokens, num_workers, encoder, max_docs)
    out = Path(out_dir).expanduser()
    t0 = time.time()
    src = _open_sources(specs, max_docs)
    prior = _open_out_dir(out)
    tok = _get_tokenizer(tokenizer, vocab_size, src, prior, out, num_workers, progress)
    options = {"sources": specs, "max_docs": max_docs, "shard_tokens": shard_tokens, "val_tokens": val_tokens,
               "train_vocab_size": (vocab_size or DEFAULT_VOCAB) if tokenizer is None else None}
    if prior is not None:
        _check_resumable(prior, out, tok, options)
        if prior.get("complete"):
            if progress:
                print(f"{out}: already prepared ({len(prior['shards'])} shards, {prior['total_tokens']:,} tokens)")
            return prior
        manifest = prior
    else:
        manifest = _start(out, tok, specs, src, options)
    ENCODERS[encoder](tok)  # fail here, in one line, rather than inside every worker process
    done_before = len(manifest["shards"])
    t_enc = time.time()
    text_bytes, encoded_bytes = _write_shards(src, out, manifest, encoder, num_workers, on_shard, progress)
    _finish(out, manifest, text_bytes)
    if progress:
        _print_summary(out, manifest, done_before, encoded_bytes, time.time() - t0, time.time() - t_enc)
    return manifest


def _check_options(sources, shard_tokens, val_tokens, num_workers, encoder, max_docs) -> list[str]:
    """Validate the options before any work; return the source specs (paths made absolute)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    specs = [_source_spec(s) for s in sources]
    if not specs:
        raise ValueError("no sources given; pass --source PATH (file, directory, .jsonl, .parquet, builtin, fineweb-edu)")
    for name, v in {"shard_tokens": shard_tokens, "val_tokens": val_tokens, "num_workers": num_workers}.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
    if shard_tokens >= 2**31:
        raise ValueError(f"shard-tokens {shard_tokens} exceeds the format's int32 token count; use at most 2**31-1")
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {encoder!r}")
    if max_docs is not None and max_docs < 1:
        raise ValueError(f"max-docs must be a positive integer, got {max_docs!r}")
    return specs


def _open_out_dir(out: Path) -> dict | None:
    """Create OUT, clear what a killed run left half-written, and return the manifest of a previous run (or None)."""
    out.mkdir(parents=True, exist_ok=True)
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
    changed = [k for k in ("sources", "max_docs", "shard_tokens", "val_tokens")
               if prior["options"].get(k) != options[k]]
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
        "options": options, "shards": [], "resume": {"next_doc": 0, "next_offset": 0},
        "total_tokens": 0, "total_documents": 0, "text_bytes": 0, "complete": False,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(out / "manifest.json", manifest)
    return manifest


def _write_shards(src, out: Path, manifest: dict, encoder: str, num_workers: int, on_shard,
                  progress: bool) -> tuple[int, int]:
    """Encode the documents from the manifest's resume point on and write the remaining shards; return (text bytes
    of every document, text bytes encoded by this run)."""
    dtype, resume, options = manifest["dtype"], manifest["resume"], manifest["options"]
    val_tokens = options["val_tokens"]
    sharder = _Sharder(out, manifest, dtype, options["shard_tokens"], val_tokens, on_shard)
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
    if sharder.index == 0:
        raise ValueError(f"the sources give only {sharder.n:,} tokens, not enough for the validation shard "
                         f"(--val-tokens {val_tokens:,}) plus training data; lower --val-tokens or add sources")
    if sharder.n:
        sharder.flush(next_doc=end_doc, next_offset=0)
    return skipped_bytes + encoded_bytes, encoded_bytes  # every document counted once


def _finish(out: Path, manifest: dict, text_bytes: int) -> None:
    """Mark the manifest complete (totals, timestamp, no resume point) and write it."""
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
    """Save to a temp directory, then rename: OUT/tokenizer is either absent or complete."""
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=out))
    tok.save(tmp)
    final = out / "tokenizer"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nano_core.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--source", nargs="+", required=True, metavar="PATH",
                   help="text files, directories, .jsonl/.parquet, 'builtin' or 'fineweb-edu' (in this order)")
    p.add_argument("--out", required=True, help="output directory for shards, manifest.json and tokenizer/")
    p.add_argument("--tokenizer", help="directory of a saved tokenizer (default: train one on the sources)")
    p.add_argument("--vocab-size", type=int, help=f"vocabulary size when training a tokenizer (default {DEFAULT_VOCAB})")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per training shard")
    p.add_argument("--val-tokens", type=int, default=DEFAULT_VAL_TOKENS,
                   help="tokens (whole documents, from the start) in the validation shard_00000.bin")
    p.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2), help="encoding processes")
    p.add_argument("--max-docs", type=int, help="stop after this many documents (quick runs)")
    p.add_argument("--encoder", choices=sorted(ENCODERS), default="auto", help="tiktoken (fast) or python (same ids)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = p.parse_args(argv)
    try:
        prepare(args.source, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                shard_tokens=args.shard_tokens, val_tokens=args.val_tokens, num_workers=args.workers,
                progress=not args.quiet, max_docs=args.max_docs, encoder=args.encoder)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"interrupted: finished shards in {args.out} are kept; run the same command again to continue")


if __name__ == "__main__":
    main()
