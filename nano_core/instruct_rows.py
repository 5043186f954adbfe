"""Instruction rows: jsonl rows -> the one chat template -> token ids + a loss mask (nano_core/instruct.py packs
them into windows).

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

Bad rows (a line that is not JSON or not UTF-8, not an object, a missing field, a wrong type, an unknown role, no
assistant turn, an empty assistant turn, a row longer than the context) are a one-line ValueError
"FILE:LINE: what is wrong", or with skip_bad_rows=True are skipped and counted in one notice line.

Plain numpy: no torch, no mlx.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

ROLES = ("system", "user", "assistant")

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


def encode_dicts(rows, tok, seq_len: int, skip_bad_rows: bool, log) -> list[tuple[np.ndarray, np.ndarray]]:
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


def check_encoded(rows, eot: int, seq_len: int) -> None:
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
