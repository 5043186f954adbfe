"""The shard writer of nano_core.prepare: cuts the ordered token stream into llm.c shards, decides the validation
shard, and rewrites manifest.json after every shard with where the next one starts.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nano_core.shards import write_shard
from nano_io.files import atomic_write
from nano_io.text import notice


def write_json(path: Path, obj: dict):
    """Write a manifest atomically (temp file, fsync, rename)."""
    atomic_write(path, json.dumps(obj, indent=1))


class Sharder:
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
        write_json(self.out / "manifest.json", self.manifest)
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
