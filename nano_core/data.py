"""The memmap loader that feeds training: (B, T+1) int32 windows from token shards, with an exact-resume state.

Shards are nano_core/shards.py's format; a data directory is found and split by nano_core/data_dir.py. Every
document is preceded by the end-of-text id, so a window that spans two documents sees the separator the model must
learn to predict. The loader is plain numpy (no torch, no mlx): it returns int32 arrays that either backend wraps.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from nano_core.data_dir import find_shards
from nano_core.shards import read_header, read_shard, shard_max_id
from tokenizer import load_tokenizer


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
        self.data_dir, self.files, self.manifest = find_shards(data_dir, split)
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
    data_dir, files, manifest = find_shards(data_dir, "train")
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
