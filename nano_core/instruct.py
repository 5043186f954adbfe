"""Instruction data for fine-tuning: encoded rows (nano_core/instruct_rows.py: the format, the template, the loss
mask) -> a train/val split by row -> packed (B, T+1) windows.

Packing or padding: PACKED. Rows are greedily packed, in a seeded per-epoch order, into windows of T+1 tokens;
a row is never split across windows (one that does not fit starts the next window), and what is left of a window
is padding (<|endoftext|> ids with mask 0). Why pack: instruction rows are short next to a context (a chat turn or
a TinyShakespeare line is tens of tokens, a context 1024), so one padded row per window would spend most of each
step's compute on padding. Why packing is sound here without a per-row attention mask (nano's models have none):
every row starts with <|endoftext|>, exactly as every pretraining document does and as pretraining windows span
documents, so the model has already learned to treat it as "new document, forget what came before"; and the loss
never falls on a row's first tokens predicted from the previous row (those are prompt tokens, masked). A row ends
with the <|endoftext|> after its last assistant turn and the next row starts with one: packed rows share that one
token (rows cost len(ids) - 1 = their number of targets, a window holds T targets), so the window reads like a
stream of pretraining documents. `pack=False` puts one row per window (padding), for comparison.

Train/val split: by row. The rows (those that parse, in file order) are permuted by a generator with a fixed seed
(SPLIT_SEED, not the training seed: changing --seed never moves a row between train and val), and the last
ceil(n * val_frac) of that permutation are validation. Editing the file (adding or removing rows) reshuffles the
split. Each train epoch packs the train rows in the order of a permutation seeded by (seed, epoch), so an epoch is
a pure function of the seed and resuming needs only (epoch, position); every train row is in exactly one window of
each epoch. The val split is packed in file order, the same every epoch (shuffle=False), as evaluation wants.

Plain numpy: no torch, no mlx.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from nano_core.instruct_rows import check_encoded, encode_dicts, encode_rows

SPLIT_SEED = 20240520  # the train/val permutation's seed: fixed, independent of the training seed


def split_rows(n: int, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) row indices, each sorted: the last ceil(n * val_frac) of a SPLIT_SEED permutation are val."""
    if not 0.0 <= val_frac < 1.0:
        raise ValueError(f"val_frac must be in [0, 1), got {val_frac}")
    n_val = math.ceil(n * val_frac - 1e-9) if val_frac > 0 else 0
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[:n - n_val]), np.sort(perm[n - n_val:])


class InstructLoader:
    """Packed (B, T+1) windows of instruction rows with a (B, T) loss mask; ShardLoader's interface.

    path_or_rows: a jsonl path (encoded with encode_rows), a list of row dicts, or a list of (ids, mask) pairs
    from encode_rows (encode once, build the train and val loaders from the same list). next_batch() returns
    (ids int32 (B, T+1), mask float32 (B, T)), mask 1 where the target ids[:, 1:] counts. The window stream does
    not depend on batch_size, so the state moves between runs with different batch sizes.
    """

    def __init__(self, path_or_rows, tok, batch_size: int, seq_len: int, split: str = "train", seed: int = 0,
                 val_frac: float = 0.1, skip_bad_rows: bool = False, shuffle: bool | None = None,
                 pack: bool = True, log=print):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        self._tok, self.eot = tok, tok.eot_id
        self.batch_size, self.seq_len, self.split, self.seed = batch_size, seq_len, split, seed
        self.val_frac, self.pack = float(val_frac), bool(pack)
        self.shuffle = (split == "train") if shuffle is None else bool(shuffle)
        if isinstance(path_or_rows, (str, Path)):
            self.source = str(path_or_rows)
            rows = encode_rows(path_or_rows, tok, seq_len, skip_bad_rows=skip_bad_rows, log=log)
        else:
            items = list(path_or_rows)
            self.source = "<rows>"
            if not items:
                raise ValueError("no rows given (an empty list)")
            if isinstance(items[0], dict):
                rows = encode_dicts(items, tok, seq_len, skip_bad_rows, log)
                if not rows:
                    raise ValueError(f"no trainable rows: all {len(items):,} rows are bad (see the notice above)")
            else:
                rows = [(np.asarray(i, dtype=np.int32), np.asarray(m, dtype=bool)) for i, m in items]
                check_encoded(rows, self.eot, seq_len)
        train, val = split_rows(len(rows), self.val_frac)
        if len(train) == 0:
            raise ValueError(f"{self.source}: val_frac={val_frac} leaves no train rows of {len(rows):,}; "
                             "lower val_frac or add rows")
        if split == "val" and len(val) == 0:
            raise ValueError(f"{self.source}: val_frac={val_frac} leaves no val rows of {len(rows):,}; "
                             "raise val_frac")
        self.row_index = train if split == "train" else val  # which rows (in file order) this split holds
        self.rows = [rows[i] for i in self.row_index]
        # a row costs its targets (len - 1): consecutive rows share the eot between them; a window holds T targets
        self.costs = np.array([len(ids) - 1 for ids, _ in self.rows], dtype=np.int64)
        h = hashlib.sha256()
        for ids, mask in self.rows:
            h.update(np.int64(len(ids)).tobytes() + ids.tobytes() + mask.tobytes())
        self.fingerprint = h.hexdigest()[:16]
        self._plan_epoch, self._windows = None, None
        self.epoch, self.pos = 0, 0  # pos = windows already consumed in this epoch

    # -- sizes -----------------------------------------------------------------
    @property
    def tokenizer(self):
        return self._tok

    @property
    def tokens(self) -> int:
        """Tokens this split feeds per epoch (row ids, an eot shared between packed rows counted once)."""
        return int(self.costs.sum()) + 1

    @property
    def target_tokens(self) -> int:
        """Targets the loss counts per epoch (assistant tokens and their end-of-text ids)."""
        return int(sum(int(m.sum()) for _, m in self.rows))

    @property
    def windows_per_epoch(self) -> int:
        """Windows of the current epoch (the packing, so the count, can differ by a few between epochs)."""
        return len(self._plan(self.epoch))

    @property
    def batches_per_epoch(self) -> int:
        """Batches that hold only the current epoch's windows (a last partial batch spills into the next)."""
        return self.windows_per_epoch // self.batch_size

    # -- the epoch plan ------------------------------------------------------------
    def _plan(self, epoch: int) -> list[np.ndarray]:
        """The windows of an epoch: each an array of row numbers (into self.rows) packed in that order."""
        if self._plan_epoch != epoch:
            n = len(self.rows)
            order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n))
            windows, start, used, T = [], 0, 0, self.seq_len
            costs = self.costs[order].tolist()
            for k, c in enumerate(costs):
                if k > start and (not self.pack or used + c > T):
                    windows.append(order[start:k])
                    start, used = k, 0
                used += c
            windows.append(order[start:])
            self._plan_epoch, self._windows = epoch, windows
        return self._windows

    def _next_window(self) -> np.ndarray:
        if self.pos >= len(self._plan(self.epoch)):
            self.epoch, self.pos = self.epoch + 1, 0
        w = self._plan(self.epoch)[self.pos]
        self.pos += 1
        return w

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        T = self.seq_len
        ids = np.full((self.batch_size, T + 1), self.eot, dtype=np.int32)  # padding: eot, mask 0
        mask = np.zeros((self.batch_size, T), dtype=np.float32)
        for b in range(self.batch_size):
            at = 0  # tokens written; the row's leading eot overwrites the previous row's trailing one
            for r in self._next_window():
                row_ids, row_mask = self.rows[r]
                ids[b, at:at + len(row_ids)] = row_ids
                mask[b, at:at + len(row_mask)] = row_mask
                at += len(row_mask)
        return ids, mask

    # -- exact resume ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": 1, "kind": "instruct", "epoch": self.epoch, "pos": self.pos, "seed": self.seed,
                "shuffle": self.shuffle, "pack": self.pack, "split": self.split, "seq_len": self.seq_len,
                "val_frac": self.val_frac, "rows": len(self.rows), "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict):
        # The batch size may change between runs (the window stream does not depend on it); nothing else may.
        if state.get("kind") != "instruct":
            raise ValueError("loader state is not an instruction-data state (kind="
                             f"{state.get('kind')!r}); resume with the same kind of data")
        for key in ("seed", "shuffle", "pack", "split", "seq_len", "val_frac"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"loader state has {key}={state.get(key)!r} but this loader has "
                                 f"{getattr(self, key)!r}; resume with the same data settings")
        if (state.get("rows"), state.get("fingerprint")) != (len(self.rows), self.fingerprint):
            raise ValueError(f"loader state was saved for different rows ({state.get('rows')} rows, fingerprint "
                             f"{state.get('fingerprint')}) than {self.source} gives ({len(self.rows)} rows, "
                             f"{self.fingerprint}); resume on the same data and tokenizer")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
