"""Step 1 of training: cut every document into regex chunks and count the unique chunks.

This is most of the training time on a big corpus (the regex engine runs over every character), so it runs in
parallel: each worker process reads ITS OWN part of the input (`Source.split(n)`: whole files where possible) and
counts chunks with a Counter; the main process only adds the counters up. Sending the texts to a pool instead
was measured slower than one process (pickling the text costs more than the regex saves).

Character caps: `max_chars_per_doc` truncates each document; `max_chars` caps the total. With n workers each
worker reads up to max_chars / n characters of its part, so which text is used depends on the number of workers
when max_chars is hit (the result is identical for any worker count when it is not).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import regex
from tqdm import tqdm

from nano_io.pool import report as pool_report
from nano_io.pool import WorkerPool
from nano_io.sources import Source
from nano_io.text import collect_notices, notice, notices_once

_PROGRESS_EVERY = 1 << 20  # characters between progress messages from a worker


@dataclass
class CountResult:
    counts: Counter                      # chunk (str) -> occurrences
    chars: int = 0                       # characters read (after caps)
    docs: int = 0
    sources: list = field(default_factory=list)
    notices: list = field(default_factory=list)  # (key, message) a worker collected (nano_io.text.notice)


def _count(sources: list[Source], pattern: str, max_chars: int | None, max_chars_per_doc: int | None,
           report=None) -> CountResult:
    """Count the chunks of every document of `sources` (runs inside a worker, or in-process)."""
    findall = regex.compile(pattern).findall
    counts = Counter()
    update = counts.update  # Counter.update(list) counts in C (collections._count_elements)
    chars = docs = unreported = 0
    for src in sources:
        for doc in src.documents():
            if max_chars_per_doc is not None:
                doc = doc[:max_chars_per_doc]
            if max_chars is not None:
                if chars >= max_chars:
                    break
                doc = doc[:max_chars - chars]
            update(findall(doc))
            chars += len(doc)
            docs += 1
            unreported += len(doc)
            if report is not None and unreported >= _PROGRESS_EVERY:
                report(unreported)
                unreported = 0
    if report is not None and unreported:
        report(unreported)
    return CountResult(counts, chars, docs)


def _count_worker(args) -> CountResult:
    sources, pattern, max_chars, max_chars_per_doc = args
    with collect_notices() as notices:  # printed once by the main process, not once per worker
        result = _count(sources, pattern, max_chars, max_chars_per_doc, report=pool_report)
    result.notices = list(notices)
    return result


def _coalesce(sources: list) -> list:
    """Join file sources of the same kind and options into one, so split(n) can hand out whole files
    (43 one-file sources split 2 ways would make both workers decode every file)."""
    out, groups = [], {}
    for src in sources:
        if isinstance(src, Source) and src.kind in ("txt", "jsonl", "parquet") and src.nparts == 1 \
                and src.max_docs is None:
            key = (src.kind, src.doc_separator, src.text_field)
            if key in groups:
                first = out[groups[key]]
                out[groups[key]] = replace(first, items=first.items + src.items, name=first.name + "+")
                continue
            groups[key] = len(out)
        out.append(src)
    return out


def count_chunks(sources: list[Source], pattern: str, num_workers: int = 2, max_chars: int | None = None,
                 max_chars_per_doc: int | None = None, progress: bool = True) -> CountResult:
    """All sources -> one CountResult. num_workers processes, each reading its own part of every source."""
    sources = _coalesce(sources)
    total = sum(s.num_bytes() for s in sources)
    if max_chars is not None:
        total = min(total, max_chars) if total else max_chars
    bar = tqdm(total=total or None, unit="B", unit_scale=True, desc="split+count", disable=not progress,
               smoothing=0.1)
    # Everything after the bar's first line runs under this try, so that a Ctrl-C at any moment (the bar is the
    # first thing a user sees, and a test interrupts right then) closes it and the next line starts on its own.
    try:
        if num_workers <= 1 or not all(isinstance(s, Source) for s in sources):  # plain iterators: in-process
            return _count(sources, pattern, max_chars, max_chars_per_doc, report=bar.update)
        parts = _count_in_workers(sources, pattern, num_workers, max_chars, max_chars_per_doc, bar)
    finally:
        bar.close()
    with notices_once():  # two workers reading parts of one file report the same thing once
        for key, message in (n for r in parts for n in r.notices):
            notice(key, message)
    # Add the counters up, biggest first: updating an empty Counter with a dict is a C-level copy.
    parts.sort(key=lambda r: -len(r.counts))
    counts = parts[0].counts
    for r in parts[1:]:
        counts.update(r.counts)
    return CountResult(counts, sum(r.chars for r in parts), sum(r.docs for r in parts))


def _count_in_workers(sources, pattern, num_workers, max_chars, max_chars_per_doc, bar) -> list[CountResult]:
    """One CountResult per worker process, each reading its own part of every source; progress goes to `bar`."""
    tasks = []
    for k in range(num_workers):
        part = [src.split(num_workers)[k] for src in sources]
        budget = None if max_chars is None else max_chars // num_workers + (k < max_chars % num_workers)
        tasks.append((part, pattern, budget, max_chars_per_doc))
    # workers ignore Ctrl-C (nano_io.pool); the main process gets it and `with` ends them
    with WorkerPool(num_workers) as pool:
        return pool.map(_count_worker, tasks, on_progress=bar.update)  # a worker's exception is raised here
