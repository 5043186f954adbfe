"""Instruction data for fine-tuning: jsonl rows -> token ids + a loss mask -> packed (B, T+1) windows.

Rows (one JSON object per line; blank lines are ignored; other keys in a row or a message are ignored):

    {"prompt": "...", "completion": "..."}                              one user turn, one assistant turn
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   any number of turns

A prompt/completion row is exactly the messages row [user: prompt, assistant: completion], so both kinds go
through the ONE template below (`TEMPLATE`, `render`). Role markers are plain text, so any tokenizer encodes them
and no special token is added; the only special token is <|endoftext|> (tok.eot_id), which nano's pretraining data
already puts before every document. The loss is on assistant text and on the <|endoftext|> after each assistant
turn (so the model learns to stop); system and user text, and the "Assistant:" marker, are context only.

To generate with a model trained on this data, feed [eot_id] + tok.encode("User: {prompt}\\n\\nAssistant:") and
sample until eot_id: that is the untrained prefix of the template token for token (each piece is encoded on its
own, as `encode_rows` does, and the assistant text starts with its own space).

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

Bad rows (a line that is not JSON or not UTF-8, not an object, a missing field, a wrong type, an unknown role, no
assistant turn, an empty assistant turn, a row longer than the context) are a one-line ValueError
"FILE:LINE: what is wrong", or with skip_bad_rows=True are skipped and counted in one notice line.

Plain numpy: no torch, no mlx.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

ROLES = ("system", "user", "assistant")
SPLIT_SEED = 20240520  # the train/val permutation's seed: fixed, independent of the training seed

TEMPLATE = """A row renders as this text ({x}: a message's content, verbatim; \\n\\n: two newlines):

    <|endoftext|>System: {system}\\n\\nUser: {user}\\n\\nAssistant: {assistant}<|endoftext|>
    User: {user}\\n\\nAssistant: {assistant}<|endoftext|>          (one string, shown on two lines)

    <|endoftext|>                   the id, not text: starts the row                   no loss
    System: {system}\\n\\n            each system message, where it stands             no loss
    User: {user}\\n\\n                each user message (a row's "prompt")             no loss
    Assistant:                      before each assistant message                    no loss
     {assistant}<|endoftext|>       each assistant message (a row's "completion")    LOSS (text and the id)

A prompt/completion row is the messages row [user: prompt, assistant: completion]. The assistant content follows
"Assistant:" after one space; content that already starts with whitespace (" Paris", "\\ncode") is used as is.
Turns after the last assistant turn are dropped (nothing in them is trained). An assistant content that is empty
or only whitespace is a bad row. <|endoftext|> inside a content is ordinary text (encode never parses
special-token strings); nothing in a content is escaped."""

_PREFIX = {"system": "System: ", "user": "User: "}
_SUFFIX = "\n\n"
_ASSISTANT = "Assistant:"

# TEMPLATE as Jinja, for an exported chat model's tokenizer_config.json (nano_core/export.py): what transformers'
# apply_chat_template and mlx-lm's tokenizer render, then encode as one string. <|endoftext|> in it is the special
# token (HF tokenizers split special-token strings out of the text); add_generation_prompt ends with "Assistant:",
# the prefix nano's generate feeds. The ids equal encode_row's except for an assistant content that starts with a
# newline: nano encodes "Assistant:" and the content apart, a loader the whole string, whose pre-tokenizer keeps
# ":\n" together (the GPT-4 pattern's punctuation-then-newlines run).
CHAT_TEMPLATE = (
    "{{- '<|endoftext|>' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- 'Assistant:' + ('' if message['content'][:1].isspace() else ' ') + message['content'] + '<|endoftext|>' -}}"
    "{%- elif message['role'] == 'system' -%}{{- 'System: ' + message['content'] + '\\n\\n' -}}"
    "{%- elif message['role'] == 'user' -%}{{- 'User: ' + message['content'] + '\\n\\n' -}}"
    "{%- else -%}{{- raise_exception('nano chat roles are system, user and assistant, not ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)


class BadRow(ValueError):
    """A row that does not fit the format; `kind` names the check (for the skip notice), str() the reason."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def _show(x, limit: int = 40) -> str:
    """A short one-line repr of a user value for an error message."""
    r = repr(x)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _messages(row) -> list[dict]:
    """The messages of a row, validated (both row kinds); BadRow for anything else."""
    if not isinstance(row, dict):
        raise BadRow("not an object", f"row is a JSON {type(row).__name__}, not an object with \"prompt\"/"
                     "\"completion\" or \"messages\"")
    has_pc = "prompt" in row or "completion" in row
    if "messages" in row:
        if has_pc:
            raise BadRow("ambiguous", "row has both \"messages\" and \"prompt\"/\"completion\"; use one kind")
        msgs = row["messages"]
        if not isinstance(msgs, list):
            raise BadRow("wrong type", f"\"messages\" must be a list, got {type(msgs).__name__}")
        if not msgs:
            raise BadRow("no assistant turn", "\"messages\" is empty (no assistant turn to train on)")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise BadRow("wrong type", f"messages[{i}] must be an object, got {type(m).__name__}")
            for key in ("role", "content"):
                if key not in m:
                    raise BadRow("missing field", f"messages[{i}] has no \"{key}\"")
                if not isinstance(m[key], str):
                    raise BadRow("wrong type", f"messages[{i}].{key} must be a string, got {type(m[key]).__name__}")
            if m["role"] not in ROLES:
                raise BadRow("unknown role", f"messages[{i}].role is {_show(m['role'])}; allowed: "
                             + ", ".join(ROLES))
        if not any(m["role"] == "assistant" for m in msgs):
            raise BadRow("no assistant turn", "no message has role \"assistant\" (nothing to train on)")
        return msgs
    if not has_pc:
        raise BadRow("missing field", "row has neither \"prompt\"/\"completion\" nor \"messages\"")
    for key in ("prompt", "completion"):
        if key not in row:
            raise BadRow("missing field", f"row has no \"{key}\"")
        if not isinstance(row[key], str):
            raise BadRow("wrong type", f"\"{key}\" must be a string, got {type(row[key]).__name__}")
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]


def render(row: dict) -> list[tuple[str, bool]]:
    """The text pieces of a row and whether each is trained on, by TEMPLATE.

    Consecutive untrained pieces are merged (so a prompt is one string, encoded as generation would encode it);
    each trained piece is one assistant turn, and the tokenization step appends <|endoftext|> (trained) after it.
    The leading <|endoftext|> of the row is not a piece either: encode_rows adds it. Raises ValueError (a one-line
    reason, without file and line) for a row that does not fit the format.
    """
    msgs = _messages(row)
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    pieces: list[tuple[str, bool]] = []
    context = ""
    for i, m in enumerate(msgs[:last + 1]):
        text = m["content"]
        if m["role"] != "assistant":
            context += _PREFIX[m["role"]] + text + _SUFFIX
            continue
        if not text.strip():
            raise BadRow("empty assistant turn", f"messages[{i}] (assistant) is empty" if "messages" in row else
                         "\"completion\" is empty")
        pieces.append((context + _ASSISTANT, False))
        context = ""
        pieces.append((text if text[:1].isspace() else " " + text, True))
    return pieces


def encode_row(row: dict, tok, seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32, target mask bool) of one row: ids = [eot] + pieces, with eot after each trained piece; mask[i]
    says whether target ids[i + 1] is trained on. BadRow if the row breaks the format or has more than
    seq_len + 1 tokens (a window holds seq_len + 1)."""
    eot = tok.eot_id
    ids, mask = [eot], []
    for text, trained in render(row):
        try:
            piece = tok.encode(text)
        except ValueError as e:  # e.g. a lone surrogate from a "\ud800" escape
            raise BadRow("not encodable", str(e).splitlines()[0]) from None
        if trained:
            piece = piece + [eot]
        ids.extend(piece)
        mask.extend([trained] * len(piece))
    if seq_len is not None and len(ids) > seq_len + 1:
        raise BadRow("too long", f"row is {len(ids):,} tokens, longer than the context (seq_len + 1 = "
                     f"{seq_len + 1:,} tokens); shorten it, raise --seq-len, or pass --skip-bad-rows")
    return np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool)


def _skip_notice(where: str, total: int, bad: list[tuple[int | None, BadRow]]) -> str:
    kinds = Counter(e.kind for _, e in bad)
    line, first = bad[0]
    at = f"line {line}" if line is not None else "row"
    return (f"notice: {where}: skipped {len(bad):,} bad row{'s' if len(bad) != 1 else ''} of {total:,} ("
            + ", ".join(f"{k} {n:,}" for k, n in kinds.most_common()) + f"); first at {at}: {first}")


def encode_rows(path, tok, seq_len: int, skip_bad_rows: bool = False, log=print) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row of the jsonl at `path`: (int32 ids starting with eot, bool mask over the targets ids[1:]).

    A bad row is a one-line ValueError "PATH:LINE: reason"; with skip_bad_rows it is skipped and all skipped rows
    are reported in one notice line through `log`. An empty file (no non-blank line) and a file with no good row
    are one-line ValueErrors too.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: instruction data file not found")
    rows, bad, total = [], [], 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark
            if not raw.strip():
                continue
            total += 1
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise BadRow("not UTF-8", f"not UTF-8 (byte {e.start + 1})") from None
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BadRow("not JSON", f"not JSON ({e.msg} at column {e.colno})") from None
                rows.append(encode_row(row, tok, seq_len))
            except BadRow as e:
                if not skip_bad_rows:
                    raise ValueError(f"{path}:{lineno}: {e}") from None
                bad.append((lineno, e))
    if total == 0:
        raise ValueError(f"{path}: empty file: no rows (expected one JSON object per line with \"prompt\"/"
                         "\"completion\" or \"messages\")")
    if bad:
        log(_skip_notice(str(path), total, bad))
    if not rows:
        raise ValueError(f"{path}: no trainable rows: all {total:,} rows are bad (see the notice above)")
    return rows


def _encode_dicts(rows, tok, seq_len: int, skip_bad_rows: bool, log) -> list[tuple[np.ndarray, np.ndarray]]:
    """encode_rows for in-memory dicts (errors name the row index instead of a line)."""
    out, bad = [], []
    for i, row in enumerate(rows):
        try:
            out.append(encode_row(row, tok, seq_len))
        except BadRow as e:
            if not skip_bad_rows:
                raise ValueError(f"<rows>[{i}]: {e}") from None
            bad.append((None, BadRow(e.kind, f"[{i}]: {e}")))
    if bad:
        log(_skip_notice("<rows>", len(rows), bad))
    return out


def _check_encoded(rows, eot: int, seq_len: int) -> None:
    """Rows given already encoded: the shapes encode_rows makes, starting and ending with eot, fitting a window."""
    for i, (ids, mask) in enumerate(rows):
        if ids.ndim != 1 or mask.shape != (len(ids) - 1,):
            raise ValueError(f"row {i}: ids must be 1-D and mask have len(ids) - 1 = {len(ids) - 1} entries, got "
                             f"shapes {ids.shape} and {mask.shape}")
        if len(ids) < 2 or ids[0] != eot or ids[-1] != eot:
            raise ValueError(f"row {i}: ids must start and end with eot_id {eot} (encode_rows makes them so)")
        if len(ids) > seq_len + 1:
            raise ValueError(f"row {i}: {len(ids):,} tokens, longer than the context (seq_len + 1 = "
                             f"{seq_len + 1:,}); encode with this seq_len and skip_bad_rows to drop it")


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
                rows = _encode_dicts(items, tok, seq_len, skip_bad_rows, log)
                if not rows:
                    raise ValueError(f"no trainable rows: all {len(items):,} rows are bad (see the notice above)")
            else:
                rows = [(np.asarray(i, dtype=np.int32), np.asarray(m, dtype=bool)) for i, m in items]
                _check_encoded(rows, self.eot, seq_len)
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
