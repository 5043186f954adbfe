"""Text sources: the ONE place that opens raw text (the tokenizer trainer and nano_core.prepare both go through it).

A source spec is a string:
  "path/to/file.txt" | "dir/"        plain text; one document per file (or split with `doc_separator`)
  "x.jsonl" | "x.parquet"           FineWeb-edu schema: a `text` column (other columns ignored)
  "builtin"                         CPython's own documentation (pydoc_data.topics: 79 documents, ~465 KB)
                                    - always there, the offline fallback
  "fineweb-edu" | "fineweb-edu:CFG" HuggingFaceFW/fineweb-edu streamed from the hub (config sample-10BT by default;
                                    needs `datasets` and network; use max_docs to take the first N documents)
A directory is searched recursively for *.txt, *.jsonl and *.parquet files (sorted).

Files are decoded by the policy of nano_io.text (UTF-8, else cp1252 with a notice; NUL characters removed).
Binary files: one named on its own (or a .jsonl) is a one-line ValueError naming it, raised when the source is
opened, before any work; inside a directory it is skipped with a one-line notice naming it (a directory of novels
with a stray .txt that is really a zip still trains), and a directory of nothing but binary files is an error.
Parquet files are binary by format and are not sniffed.

Splitting for parallel readers: `src.split(n)` returns n disjoint sources covering every document exactly once.
Multi-file sources are split by file (balanced by size) so each worker decodes only its own files; otherwise the
k-th part keeps documents whose index i has i % n == k. Sources are frozen dataclasses: picklable, cheap to send.
"""
from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from nano_io.text import NulStrip, not_text_error, notice, read_text, sniff

HUB_DATASET = "HuggingFaceFW/fineweb-edu"
HUB_DEFAULT_CONFIG = "sample-10BT"
FILE_KINDS = {".txt": "txt", ".md": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
BLANK_LINES = "blank-lines"  # doc_separator value: split on one or more empty lines
_BLANK_LINES_RE = re.compile(r"\n[ \t]*\n\s*")


# ----------------------------------------------------------------------------------------------------------------
# readers: kind -> function(source, item) yielding documents of one item (a file, the builtin topics, the hub)

def _read_txt(src: "Source", path: str) -> Iterator[str]:
    text = read_text(path)
    if "\0" in text:  # past the first 8 KiB (a NUL before that makes the file binary)
        strip = NulStrip(path)
        text = strip(text, f"character {text.find(chr(0)):,}")
        strip.report()
    if src.doc_separator is None:
        if text.strip():
            yield text
        return
    parts = _BLANK_LINES_RE.split(text) if src.doc_separator == BLANK_LINES else text.split(src.doc_separator)
    yield from (p for p in parts if p.strip())


def _read_jsonl(src: "Source", path: str) -> Iterator[str]:
    strip = NulStrip(path)
    try:
        for lineno, line in enumerate(read_text(path).split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one JSON object per line") \
                    from None
            if not isinstance(row, dict) or src.text_field not in row:
                raise ValueError(f"{path}:{lineno}: no {src.text_field!r} field; each line needs "
                                 f'{{"{src.text_field}": "..."}}')
            text = _text_value(row[src.text_field], f"{path}:{lineno}", src.text_field)
            text = strip(text, f"line {lineno}")
            if text:
                yield text
    finally:  # also when the reader stops early (max_docs): report what was removed so far
        strip.report()


def _text_value(value, where: str, field: str) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    raise ValueError(f"{where}: {field!r} is a {type(value).__name__}, not a string; the text column must hold text")


def _read_parquet(src: "Source", path: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading parquet needs pyarrow (pip install 'nano-train[data]')") from None
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except Exception as e:  # pyarrow raises several types for corrupt files; all mean the same to the user
        raise ValueError(f"cannot read {path} as parquet: {str(e).splitlines()[0]}") from None
    if src.text_field not in names:
        raise ValueError(f"{path}: no {src.text_field!r} column (columns: {', '.join(names)})")
    strip, row = NulStrip(path), 0
    try:
        for batch in pf.iter_batches(columns=[src.text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                text = strip(_text_value(value, f"{path} row {row}", src.text_field), f"row {row}")
                row += 1
                if text:
                    yield text
    finally:
        strip.report()


def _read_builtin(src: "Source", item: str) -> Iterator[str]:
    from pydoc_data.topics import topics  # ships with every CPython: the offline fallback corpus
    for key in sorted(topics):
        yield topics[key]


def _read_hub(src: "Source", config: str) -> Iterator[str]:
    # Kept thin on purpose: this machine cannot reach the hub, so the path is exercised only where it can.
    try:
        import datasets
    except ImportError:
        raise ValueError("the fineweb-edu hub source needs `datasets` (pip install 'nano-train[data]')") from None
    try:
        ds = datasets.load_dataset(HUB_DATASET, name=config, split="train", streaming=True)
        strip = NulStrip(f"{HUB_DATASET} ({config})")
        try:
            for i, row in enumerate(ds):
                text = strip(row["text"] or "", f"row {i}")
                if text:
                    yield text
        finally:
            strip.report()
    except (ConnectionError, OSError) as e:
        raise ConnectionError(f"cannot stream {HUB_DATASET} ({config}) from the hub: {str(e).splitlines()[0]}; "
                              "use local parquet/jsonl files or 'builtin'") from None


def _read_texts(src: "Source", text: str) -> Iterator[str]:
    yield text


READERS = {"txt": _read_txt, "jsonl": _read_jsonl, "parquet": _read_parquet, "builtin": _read_builtin,
           "hub": _read_hub, "texts": _read_texts}


# ----------------------------------------------------------------------------------------------------------------
# Source

@dataclass(frozen=True)
class Source:
    """A stream of documents. `items` are files (txt/jsonl/parquet), the hub config, or in-memory texts."""
    name: str
    kind: str                       # key into READERS
    items: tuple = ()
    part: int = 0                   # keep documents with index % nparts == part
    nparts: int = 1
    max_docs: int | None = None     # only the first max_docs documents (counted before the part filter)
    doc_separator: str | None = None
    text_field: str = "text"

    def documents(self) -> Iterator[str]:
        reader = READERS[self.kind]
        index = 0
        for item in self.items:
            for doc in reader(self, item):
                if self.max_docs is not None and index >= self.max_docs:
                    return
                if index % self.nparts == self.part:
                    yield doc
                index += 1
        if index == 0 and self.nparts == 1:
            raise ValueError(f"{self.name}: no documents (empty source); give a file with text in it")

    def split(self, n: int) -> list["Source"]:
        """n disjoint parts that together yield every document once (for n worker processes)."""
        if n < 1:
            raise ValueError(f"split(n) needs n >= 1, got {n}")
        if n == 1:
            return [self]
        if self.kind in ("txt", "jsonl", "parquet", "texts") and self.max_docs is None \
                and self.nparts == 1 and len(self.items) >= n:
            return [replace(self, items=group, name=f"{self.name}[{k}/{n}]")
                    for k, group in enumerate(_balance(self.items, n, self.kind))]
        # Modulo parts compose: part p of N, split in n -> parts p + N*k of N*n.
        return [replace(self, part=self.part + self.nparts * k, nparts=self.nparts * n,
                        name=f"{self.name}[{k}/{n}]") for k in range(n)]

    def num_bytes(self) -> int:
        """Approximate input size (for progress bars); 0 when unknown."""
        if self.kind in ("txt", "jsonl", "parquet"):
            return sum(os.path.getsize(p) for p in self.items) // self.nparts
        if self.kind == "texts":
            return sum(len(t) for t in self.items) // self.nparts
        if self.kind == "builtin":
            return 465_000 // self.nparts
        return 0


def _balance(items: tuple, n: int, kind: str) -> list[tuple]:
    """Greedy largest-first packing of files (or texts) into n groups of similar total size; order kept inside."""
    size = (lambda t: len(t)) if kind == "texts" else os.path.getsize
    groups, loads = [[] for _ in range(n)], [0] * n
    for idx in sorted(range(len(items)), key=lambda i: -size(items[i])):
        k = loads.index(min(loads))
        groups[k].append(idx)
        loads[k] += size(items[idx])
    return [tuple(items[i] for i in sorted(g)) for g in groups]


def _files_in(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_KINDS)


def source_files(specs) -> dict[str, list[int]]:
    """{file: [size in bytes, mtime in ns]} for every file the path specs would read (a directory: its .txt, .md,
    .jsonl and .parquet files, recursively; a file: itself). Named sources (builtin, the hub) and missing paths have
    none. What a cache of prepared shards is keyed on: a file edited, added or removed changes it."""
    files: dict[str, list[int]] = {}
    for spec in [specs] if isinstance(specs, (str, Path)) else specs:
        path = Path(str(spec))
        if not path.exists():
            continue
        for f in _files_in(path) if path.is_dir() else [path]:
            st = f.stat()
            files[str(f)] = [st.st_size, st.st_mtime_ns]
    return files


def changed_files(recorded: dict, now: dict) -> list[str]:
    """The files of two source_files() results that differ: added, removed, or of another size or mtime."""
    return sorted(f for f in recorded.keys() | now.keys() if recorded.get(f) != now.get(f))


def open_source(spec: str | Path, max_docs: int | None = None, doc_separator: str | None = None,
                text_field: str = "text") -> list[Source]:
    """One spec -> its sources (a directory gives one source per file kind found in it)."""
    if isinstance(spec, Source):
        return [spec]
    s = str(spec)
    common = dict(max_docs=max_docs, doc_separator=doc_separator, text_field=text_field)
    if s == "builtin":
        return [Source("builtin", "builtin", ("pydoc_data.topics",), **common)]
    if s == "fineweb-edu" or s.startswith("fineweb-edu:"):
        config = s.partition(":")[2] or HUB_DEFAULT_CONFIG
        return [Source(s, "hub", (config,), **common)]
    path = Path(s)
    if not path.exists():
        raise FileNotFoundError(f"{s}: no such file or directory (give a .txt/.jsonl/.parquet file, a directory, "
                                "'builtin' or 'fineweb-edu')")
    files = _files_in(path) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{s}: no .txt, .jsonl or .parquet files in this directory")
    by_kind: dict[str, list[str]] = {}
    skipped = 0
    for f in files:
        kind = FILE_KINDS.get(f.suffix, "txt")  # an explicitly named file with another suffix is read as text
        if f.stat().st_size == 0:
            raise ValueError(f"{f}: empty file (no documents)")
        if not os.access(f, os.R_OK):
            raise ValueError(f"cannot read {f}: permission denied")
        reason = sniff(f) if kind != "parquet" else None
        if reason is not None:
            if not path.is_dir():
                raise not_text_error(f, reason)
            notice(("binary", str(f)), f"skipping {f}: not a text file ({reason})")
            skipped += 1
            continue
        by_kind.setdefault(kind, []).append(str(f))
    if not by_kind:
        raise ValueError(f"{s}: none of its {skipped} .txt/.jsonl files is text (all binary); give a directory of "
                         "text files")
    return [Source(s if len(by_kind) == 1 else f"{s}:{kind}", kind, tuple(fs), **common)
            for kind, fs in by_kind.items()]


def open_sources(specs, max_docs: int | None = None, doc_separator: str | None = None,
                 text_field: str = "text") -> list[Source]:
    """Source specs (see the module docstring) -> Source objects. Missing paths fail here, before any work."""
    if isinstance(specs, (str, Path, Source)):
        specs = [specs]
    out = [src for spec in specs for src in open_source(spec, max_docs, doc_separator, text_field)]
    if not out:
        raise ValueError("no sources given; pass files, directories, 'builtin' or 'fineweb-edu'")
    return out


def texts_source(texts, name: str = "texts") -> Source:
    """In-memory strings as a Source (picklable; split by balanced groups)."""
    texts = tuple(texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name}: every text must be a str")
    return Source(name, "texts", texts)


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when huggingface.co answers on port 443 within `timeout` seconds (and offline mode is not set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------------------------
# training inputs: what BPETokenizer.train / CharTokenizer.train accept

class _IterSource:
    """An iterator of texts that cannot be split: counted in the main process."""
    name = "texts"

    def __init__(self, it):
        self._it = it

    def documents(self):
        for t in self._it:
            if not isinstance(t, str):
                raise ValueError(f"texts must be str, got {type(t).__name__}")
            yield t

    def split(self, n):
        raise ValueError("an iterator of texts cannot be split; pass a list or files for parallel reading")

    def num_bytes(self):
        return 0


def _looks_like_spec(s) -> bool:
    if isinstance(s, (Path, Source)):
        return True
    if not isinstance(s, str) or "\n" in s or len(s) > 4096:
        return False
    return (s in ("builtin", "fineweb-edu") or s.startswith("fineweb-edu:") or os.path.exists(s) or "/" in s
            or os.sep in s or Path(s).suffix in (".txt", ".jsonl", ".parquet", ".md"))


def resolve_inputs(inputs) -> list:
    """Training inputs -> sources. Rules: a str/Path/Source, or a list/tuple whose items all look like specs
    (existing path, has a '/' or a known suffix, 'builtin', 'fineweb-edu[:cfg]') -> sources (missing paths are an
    error); another list/tuple of str -> in-memory texts (split across workers); any other iterable of str ->
    texts counted in the main process."""
    if isinstance(inputs, (str, Path, Source)):
        return open_sources([inputs])
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise ValueError("empty corpus: no inputs given")
        if all(_looks_like_spec(s) for s in inputs):
            return open_sources(list(inputs))
        return [texts_source(inputs)]
    return [_IterSource(iter(inputs))]
