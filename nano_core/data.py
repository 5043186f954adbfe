"""Token shards on disk and the memmap loader that feeds training.

Shard format (llm.c's, so shards move between nano, llm.c and modded-nanogpt unchanged):

    header: 256 x int32, little-endian (1024 bytes)
        [0] magic    20240520
        [1] version  1 -> tokens are uint16 (vocabularies up to 65,536 ids: 0..65535)
                     2 -> tokens are uint32 (our variant for bigger vocabularies)
        [2] number of tokens that follow
        [3..255] zero
    tokens: little-endian uint16 or uint32, nothing after them.

llm.c itself writes its 32-bit variant (Llama-3 tokens) with a different magic, 20240801, and version 7; we read
that header too, so `read_shard` accepts (20240520, 1), (20240520, 2) and (20240801, 7). We write version 2 under
the usual magic so that one magic number identifies every nano shard.

A prepared directory (see nano_core/prepare.py) holds shard_00000.bin (validation), shard_00001.bin.. (training),
manifest.json (tokenizer hash, vocab size, documents and tokens per shard) and tokenizer/. Every document is preceded
by the end-of-text id, so a window that spans two documents sees the separator the model must learn to predict.

The loader is plain numpy (no torch, no mlx): it returns int32 arrays (B, T+1) that either backend wraps.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from tokenizer import load_tokenizer
from nano_io.files import atomic_path
from nano_io.sources import changed_files, source_files

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# (magic, version) -> token dtype. The last entry is llm.c's Llama-3 header, read but never written.
HEADER_DTYPES = {
    (MAGIC, 1): np.dtype("<u2"),
    (MAGIC, 2): np.dtype("<u4"),
    (20240801, 7): np.dtype("<u4"),
}
VERSION_OF_DTYPE = {"uint16": 1, "uint32": 2}
UINT16_MAX_VOCAB = 1 << 16  # ids 0..65535 fit in uint16


def shard_dtype(vocab_size: int) -> str:
    """The narrowest token dtype for a vocabulary: uint16 up to 65,536 ids, uint32 above."""
    return "uint16" if vocab_size <= UINT16_MAX_VOCAB else "uint32"


# -----------------------------------------------------------------------------
# one shard: write, read, validate

def write_shard(path, tokens, dtype: str | None = None) -> Path:
    """Write `tokens` as one shard at `path`, atomically (nano_io.files.atomic_path: temp file, fsync, rename).

    dtype "uint16"/"uint32" picks the header version; None picks the narrowest that holds max(tokens).
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"write_shard({path.name}): tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0):
        raise ValueError(f"write_shard({path.name}): negative token id {int(tokens.min())}")
    top = int(tokens.max()) if tokens.size else 0
    dtype = dtype or shard_dtype(top + 1)
    if dtype not in VERSION_OF_DTYPE:
        raise ValueError(f"write_shard({path.name}): dtype must be uint16 or uint32, got {dtype!r}")
    if top >= np.iinfo(dtype).max + 1:
        raise ValueError(f"write_shard({path.name}): token id {top} does not fit {dtype}; use dtype='uint32'")
    if tokens.size >= 2**31:
        raise ValueError(f"write_shard({path.name}): {tokens.size} tokens overflow the int32 count; split the shard")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION_OF_DTYPE[dtype], tokens.size
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(f"<{np.dtype(dtype).str[1:]}", copy=False).tobytes())
    return path


def read_header(path) -> tuple[np.dtype, int]:
    """Validate the header and the file size of a shard; return (token dtype, token count). One-line errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes is shorter than the 1024-byte shard header (truncated or not a shard)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, count = (int(v) for v in header[:3])
    if magic not in {m for m, _ in HEADER_DTYPES}:
        raise ValueError(f"{path}: bad magic {magic} (expected {MAGIC}): not an llm.c/nano token shard")
    dtype = HEADER_DTYPES.get((magic, version))
    if dtype is None:
        known = ", ".join(f"{v}" for m, v in HEADER_DTYPES if m == magic)
        raise ValueError(f"{path}: unsupported shard version {version} (known for magic {magic}: {known})")
    expected = HEADER_BYTES + count * dtype.itemsize
    if count < 0 or size != expected:
        raise ValueError(f"{path}: header says {count} tokens ({expected} bytes) but the file has {size} bytes "
                         f"({'truncated' if size < expected else 'trailing bytes'}); re-run prepare")
    return dtype, count


def read_shard(path) -> np.memmap:
    """Memory-map a shard's tokens (uint16 or uint32, read-only) after validating its header."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)  # np.memmap refuses a zero-length map
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


# max token id per shard, computed once per (file, size, mtime) in this process: a full scan is cheap but not free
_MAX_ID_CACHE: dict[tuple, int] = {}


def shard_max_id(path, tokens=None) -> int:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _MAX_ID_CACHE:
        tokens = read_shard(path) if tokens is None else tokens
        _MAX_ID_CACHE[key] = int(tokens.max()) if len(tokens) else -1
    return _MAX_ID_CACHE[key]


# -----------------------------------------------------------------------------
# a prepared directory

def load_manifest(data_dir) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m nano_core.prepare --source ... --out {data_dir}`")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not text (overwritten or damaged); delete it and re-run prepare") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); delete it and re-run prepare") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: holds a {type(manifest).__name__}, not a shard manifest; delete it and re-run "
                         "prepare")
    return manifest


def default_data_dir(source_name: str, vocab_size: int) -> Path:
    """Where prepared shards live by default: $NANO_CACHE/data/{name}-v{vocab} ($NANO_CACHE = ~/.cache/nano)."""
    root = Path(os.environ.get("NANO_CACHE") or Path.home() / ".cache" / "nano").expanduser()
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(source_name)).strip("-.") or "data"
    return root / "data" / f"{name}-v{vocab_size}"


def drop_stale_cache(out, log=print) -> bool:
    """For a cache of --source shards (a directory nano made, never a --data directory: this deletes it): when the
    files of its sources changed since it was made (added, removed, or another size or mtime than manifest.json
    records), say so in one line and remove the cache so that it is prepared again; return whether it did. A cache
    made before manifests recorded the files is prepared again too (its data cannot be vouched for)."""
    out = Path(out)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):  # none, or unreadable: the caller prepares or reports it as before
        return False
    specs = [str(s) for s in manifest.get("sources", [])]
    now = source_files(specs)
    recorded = manifest.get("source_files")
    if recorded is None:
        if not now:  # named sources only (builtin, the hub): nothing on disk to compare
            return False
        log(f"data: {out} was made before nano recorded its source files' sizes and times: preparing again")
    else:
        changed = changed_files(recorded, now)
        if not changed:
            return False
        where = [s for s in specs if any(f == s or f.startswith(s.rstrip(os.sep) + os.sep) for f in changed)]
        log(f"data: {' + '.join(where or specs)} changed since the cache was made ({len(changed)} "
            f"file{'s' * (len(changed) != 1)}): preparing again")
    shutil.rmtree(out)
    return True


def _split_files(data_dir: Path, manifest: dict | None) -> dict[str, list[Path]]:
    """Shard files by split. With a manifest its list is the truth; without one (llm.c/modded-nanogpt output)
    names containing "val"/"train" decide, and failing that shard 0 is validation (our convention)."""
    if manifest is not None:
        splits = {"train": [], "val": []}
        for s in manifest.get("shards", []):
            splits[s["split"]].append(data_dir / s["file"])
        return splits
    files = sorted(data_dir.glob("*.bin"))
    named = {"val": [f for f in files if "val" in f.name], "train": [f for f in files if "train" in f.name]}
    if named["val"] or named["train"]:
        return named
    return {"val": files[:1], "train": files[1:]}


def _resolve(data, split: str) -> tuple[Path, list[Path], dict | None]:
    """data is a prepared directory, an llm.c directory, one shard file, or a glob ("dir/fineweb_train_*.bin").
    A file or a glob is used as given, whatever the split."""
    text = str(data)
    if any(c in text for c in "*?["):
        pattern = Path(text).expanduser()
        files = sorted(pattern.parent.glob(pattern.name))
        if not files:
            raise FileNotFoundError(f"no shard matches {text}")
        return pattern.parent, files, None
    path = Path(text).expanduser()
    if path.is_file():
        return path.parent, [path], None
    if not path.is_dir():
        raise FileNotFoundError(f"data directory {path} not found: run `python -m nano_core.prepare --out {path} ...`")
    manifest = load_manifest(path) if (path / "manifest.json").is_file() else None
    if manifest is not None and not manifest.get("complete", True):
        raise ValueError(f"{path}: prepare did not finish (manifest says incomplete); re-run the same prepare command")
    files = _split_files(path, manifest)[split]
    if not files:
        fix = ("re-run the same `python -m nano_core.prepare` command (it redoes data without training tokens)"
               if manifest is not None and split == "train" else
               "shard_00000.bin is validation, shard_00001.bin.. training")
        raise ValueError(f"{path}: no {split} shards; {fix}")
    return path, files, manifest


# -----------------------------------------------------------------------------
# the loader

class ShardLoader:
    """Batches of (B, T+1) int32 windows from token shards, with an exact-resume state.

    A window is T+1 consecutive tokens starting at a multiple of T inside one shard (so x = w[:-1], y = w[1:]).
    One epoch visits every window start of the split exactly once. With shuffle=True the shard order and the window
    order inside each shard are permuted by generators seeded from (seed, epoch[, shard]), so epoch e is a pure
    function of the seed and resuming needs only (epoch, position). Rank r of world_size takes every world_size-th
    window of the epoch's sequence: ranks are disjoint and together cover the epoch, except the last
    (windows mod world_size) windows, which are dropped so that every rank holds the same number and all ranks
    wrap into the next epoch at the same step (so rank 0's state is every rank's state, up to the rank).

    The state is a global position: `start + pos * world_size` windows of the epoch are consumed (`start` is
    where this world size took over). A state saved by another world size resumes from the same global position
    (load_state_dict): nothing is seen twice or skipped in that epoch, but which rank reads which window, and so
    the order of the windows inside the steps, changes from there.
    shuffle=False walks shards and windows in file order (evaluation), the same order every epoch.
    """

    def __init__(self, data_dir, batch_size: int, seq_len: int, split: str = "train", seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, vocab_size: int | None = None,
                 verbose: bool = True):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.data_dir, self.files, self.manifest = _resolve(data_dir, split)
        self.batch_size, self.seq_len, self.split = batch_size, seq_len, split
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        # The vocabulary bound for the id check: the manifest's, else the caller's, else no check (said out loud).
        if self.manifest is not None:
            if vocab_size is not None and vocab_size != self.manifest["vocab_size"]:
                raise ValueError(f"vocab_size={vocab_size} but {self.data_dir}/manifest.json says "
                                 f"{self.manifest['vocab_size']}; drop the argument or use the right data")
            self.vocab_size = int(self.manifest["vocab_size"])
            self.vocab_check = f"token ids checked against vocab_size={self.vocab_size} from manifest.json"
        elif vocab_size is not None:
            self.vocab_size = int(vocab_size)
            self.vocab_check = f"no manifest.json: token ids checked against vocab_size={vocab_size} (argument)"
        else:
            self.vocab_size = None
            self.vocab_check = "no manifest.json and no vocab_size: token ids NOT checked against a vocabulary"
        if verbose and self.manifest is None:
            print(f"ShardLoader({self.data_dir}): {self.vocab_check}", file=sys.stderr)
        # Only headers are read here; token memmaps open lazily, per process (see _tokens).
        self.lengths = [read_header(f)[1] for f in self.files]
        self.windows = np.array([max(0, (n - 1) // seq_len) for n in self.lengths], dtype=np.int64)
        self.windows_per_epoch = int(self.windows.sum())
        if self.windows_per_epoch < world_size:
            raise ValueError(self._too_short_message())
        self._maps: dict[int, np.ndarray] = {}
        self._pid = os.getpid()
        self._plan_epoch = None
        self._perm_cache: dict[int, np.ndarray] = {}
        self.epoch, self.pos = 0, 0  # pos = windows of this rank already consumed in this epoch
        self.start = 0  # global windows of this epoch consumed before this world size took over (a resume)

    def _too_short_message(self) -> str:
        """One line: what is too short, and the two fixes (a shorter window, or more data in this split)."""
        n, T, w = sum(self.lengths), self.seq_len, self.world_size
        has = f"{n:,} tokens" + (f" in {len(self.files)} shards" if len(self.files) > 1 else "")
        need = (f"one window of seq_len + 1 = {T + 1:,} tokens" if w == 1 else
                f"{w} windows of seq_len + 1 = {T + 1:,} tokens (one per rank, world_size={w})")
        longest = max(self.lengths, default=0)
        shorter = (f"a smaller --seq-len (at most {longest - 1:,} for this data)" if w == 1 and longest > 1 else
                   "a smaller --seq-len")
        more = ("prepare more validation data (a larger --val-tokens)" if self.split == "val" else
                "prepare more training data (more or bigger --source)")
        return f"{self.split} split of {self.data_dir} has {has}, fewer than {need}; use {shorter} or {more}"

    # -- sizes -----------------------------------------------------------------
    @property
    def rank_windows_per_epoch(self) -> int:
        """This rank's windows in the current epoch: the same for every rank (the remainder is dropped)."""
        return (self.windows_per_epoch - self.start) // self.world_size

    @property
    def batches_per_epoch(self) -> int:
        """Batches that hold only this epoch's windows (the last partial batch would spill into the next epoch)."""
        return self.rank_windows_per_epoch // self.batch_size

    @property
    def tokens(self) -> int:
        return int(sum(self.lengths))

    # -- per-process memmaps -----------------------------------------------------
    def _tokens(self, shard: int) -> np.ndarray:
        # A memmap inherited through fork shares a file offset and pages in ways numpy does not promise are safe,
        # and one pickled to a spawned worker is a copy: re-open whenever the process changed.
        if os.getpid() != self._pid:
            self._maps, self._pid = {}, os.getpid()
        m = self._maps.get(shard)
        if m is None:
            m = read_shard(self.files[shard])
            if self.vocab_size is not None:
                top = shard_max_id(self.files[shard], m)
                if top >= self.vocab_size:
                    raise ValueError(f"{self.files[shard]}: token id {top} >= vocab_size {self.vocab_size}; "
                                     "the shard was made with another tokenizer; re-run prepare")
            self._maps[shard] = m
        return m

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    # -- the epoch plan ------------------------------------------------------------
    def _plan(self, epoch: int):
        """Shard order and cumulative window offsets for an epoch (cheap; window permutations come per shard)."""
        if self._plan_epoch != epoch:
            n = len(self.files)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order = order
            self._offsets = np.concatenate([[0], np.cumsum(self.windows[order])])
            self._plan_epoch, self._perm_cache = epoch, {}
        return self._order, self._offsets

    def _window_perm(self, epoch: int, shard: int) -> np.ndarray:
        perm = self._perm_cache.get(shard)
        if perm is None:
            n = int(self.windows[shard])
            perm = (np.random.default_rng([self.seed, epoch, shard]).permutation(n) if self.shuffle
                    else np.arange(n))
            if len(self._perm_cache) > 4:  # the walk is shard by shard: keep only a few recent permutations
                self._perm_cache.clear()
            self._perm_cache[shard] = perm
        return perm

    def _next_window(self) -> tuple[int, int]:
        """(shard, start token) of this rank's next window; advances the state."""
        if self.pos >= self.rank_windows_per_epoch:
            self.epoch, self.pos, self.start = self.epoch + 1, 0, 0
        order, offsets = self._plan(self.epoch)
        g = self.start + self.rank + self.pos * self.world_size  # index into the epoch's global window sequence
        k = int(np.searchsorted(offsets, g, side="right")) - 1
        shard = int(order[k])
        local = int(self._window_perm(self.epoch, shard)[g - offsets[k]])
        self.pos += 1
        return shard, local * self.seq_len

    def next_batch(self) -> np.ndarray:
        T = self.seq_len
        out = np.empty((self.batch_size, T + 1), dtype=np.int32)
        for b in range(self.batch_size):
            shard, start = self._next_window()
            out[b] = self._tokens(shard)[start:start + T + 1]  # assignment casts uint16/uint32 -> int32
        return out

    # -- exact resume ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": 2, "epoch": self.epoch, "pos": self.pos, "start": self.start, "seed": self.seed,
            "shuffle": self.shuffle, "split": self.split, "seq_len": self.seq_len, "rank": self.rank,
            "world_size": self.world_size, "shards": [[f.name, n] for f, n in zip(self.files, self.lengths)],
        }

    def load_state_dict(self, state: dict) -> bool:
        """Continue from `state` (any rank's: they differ only in the rank). Returns True when the state was saved
        by another world size: the run then continues from the same global position with a new window-to-rank
        assignment (the caller says so). The batch size may change too (the window stream does not depend on it);
        nothing else may."""
        for key in ("seed", "shuffle", "split", "seq_len"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"loader state has {key}={state.get(key)!r} but this loader has "
                                 f"{getattr(self, key)!r}; resume with the same data settings")
        mine = [[f.name, n] for f, n in zip(self.files, self.lengths)]
        if [list(s) for s in state.get("shards", [])] != mine:
            raise ValueError(f"loader state was saved for different shards than those in {self.data_dir}; "
                             "resume on the same prepared data")
        saved_world = int(state.get("world_size", 1))
        epoch, pos, start = int(state["epoch"]), int(state["pos"]), int(state.get("start", 0))
        if saved_world == self.world_size:
            self.epoch, self.pos, self.start = epoch, pos, start
            return False
        self.epoch, self.pos, self.start = epoch, 0, start + pos * saved_world  # the same global position
        if self.rank_windows_per_epoch <= 0:  # too few windows left in this epoch for one each: the next one
            self.epoch, self.start = epoch + 1, 0
        return True

    # -- helpers for training ------------------------------------------------------------
    @property
    def tokenizer(self):
        if not hasattr(self, "_tokenizer"):
            tok_dir = self.data_dir / "tokenizer"
            if not tok_dir.is_dir():
                raise FileNotFoundError(f"{tok_dir} not found: this data was not made by nano_core.prepare; "
                                        "pass a tokenizer explicitly")
            self._tokenizer = load_tokenizer(tok_dir)
        return self._tokenizer


def unigram_entropy(data_dir, max_tokens: int | None = None) -> float:
    """Entropy (nats/token) of the unigram distribution of the training shards: the loss a model that ignores
    context would reach, so the first bar a trained model must beat. Counts in chunks to bound memory."""
    data_dir, files, manifest = _resolve(data_dir, "train")
    counts = np.zeros(int(manifest["vocab_size"]) if manifest else 0, dtype=np.int64)
    seen, chunk = 0, 1 << 24
    for f in files:
        toks = read_shard(f)
        for i in range(0, len(toks), chunk):
            part = toks[i:i + chunk] if max_tokens is None else toks[i:i + min(chunk, max_tokens - seen)]
            c = np.bincount(part, minlength=len(counts))
            if len(c) > len(counts):
                counts = np.concatenate([counts, np.zeros(len(c) - len(counts), dtype=np.int64)])
            counts[:len(c)] += c
            seen += len(part)
            if max_tokens is not None and seen >= max_tokens:
                break
        if max_tokens is not None and seen >= max_tokens:
            break
    if seen == 0:
        raise ValueError(f"{data_dir}: training shards are empty")
    p = counts[counts > 0] / seen
    return float(-(p * np.log(p)).sum())
