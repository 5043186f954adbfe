"""Encoding for nano_core.prepare: the documents of all sources in one interleaved order, cut into chunks, encoded
in worker processes (one encoder per process) and handed back in input order.

The order of documents and the token ids depend only on the sources and the tokenizer, never on worker timing or
on the number of workers: that is what makes a resumed prepare write the bytes an uninterrupted one would.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nano_io.pool import WorkerPool
from tokenizer import load_tokenizer

CHUNK_CHARS = 1 << 20               # text per task sent to a worker: big enough to amortise pickling


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


def _encode_numbered(chunk: tuple[int, list[str]]):
    first, texts = chunk
    return first, _encode_chunk(texts)


# main side: the document stream, its chunks, the encoded chunks in order

def interleaved_documents(sources):
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


def chunks_of(docs, skip: int, on_skip):
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


def encoded_chunks(chunks, tok_dir: Path, encoder: str, dtype: str, num_workers: int):
    """Encoded chunks in input order. At most 2*workers chunks out at a time (WorkerPool.imap), so memory stays
    bounded on any corpus."""
    if num_workers <= 1:
        _init_worker(str(tok_dir), encoder, dtype)
        for first, texts in chunks:
            yield first, _encode_chunk(texts)
        return
    # workers ignore Ctrl-C (nano_io.pool); leaving the block (also on Ctrl-C or close()) ends them
    with WorkerPool(num_workers, _init_worker, (str(tok_dir), encoder, dtype)) as pool:
        yield from pool.imap(_encode_numbered, chunks)
