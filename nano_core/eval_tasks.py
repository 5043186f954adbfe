"""The evaluation tasks, written once for both backends: bits per byte on any text, WikiText-2 perplexity, HellaSwag.

The backend supplies one thing: per-token losses of (B, T+1) windows (Backend.token_losses, inside
Backend.inference), wrapped by `Scorer`. Everything else is here:


- Token streams (bpb, wikitext2) are scored with a sliding window: a window holds up to `context + 1` tokens and
  scores only the targets no earlier window scored, so each target is scored exactly once, with up to
  `context - stride` tokens of left context (stride = context: non-overlapping windows; the HF perplexity guide's
  recipe). A stream starts with <|endoftext|>, as every document does in training, so the first real token is
  predicted too.
- Bits per byte sums the nats of targets that are text and divides by ln 2 x their UTF-8 bytes; special-token
  targets (<|endoftext|>) carry no bytes and are left out of both sums, so models with different vocabularies
  compare.
- WikiText-2 (raw test split): token perplexity, word perplexity = exp(nats over the whole text / its
  whitespace-separated word count) -- the figure that compares across tokenizers -- and bits per byte.
- HellaSwag (validation, 10,042 items), as lm-evaluation-harness 0.4 `hellaswag` asks it: the context is
  preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()) and each ending preprocess(ending)
  (`lm_eval_request`; a file with `ctx` alone takes ctx_b to be its lowercase tail after the last ". "). Each ending
  is scored as " " + ending (lm-eval's target delimiter) by the sum of its tokens' log-probabilities given
  <|endoftext|> + context (what `lm_eval --model hf --model_args ...,add_bos_token=True` feeds an export). acc takes
  the highest sum; acc_norm (lm-eval's) the highest sum per character of the ending, the delimiter excluded;
  acc_per_byte (what version 1 called acc_norm) the highest sum per UTF-8 byte of " " + ending. llm.c's HellaSwag
  divides by tokens: a third figure, not computed here. The 4 endings of an item go in one batch; items are sorted
  by length into batches so padding stays low. An item longer than the model's context loses tokens from the left
  of its context, never from its ending (an ending longer than the context itself is scored whole by sliding
  windows).
Rows of a batch are right-padded: with causal attention padding after a row's end changes none of its losses.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nano_core.shards import read_shard
from nano_io.sources import open_sources
from nano_io.text import read_text


# ----------------------------------------------------------------------------- scoring rows with a backend
@dataclass
class Scorer:
    """A model ready to score: the backend, the model, its tokenizer and how many rows go in one forward pass."""
    backend: object
    model: object
    tok: object
    batch_size: int = 16
    progress: bool = True  # progress bars (off inside a training run, which has its own)
    token_bytes: np.ndarray = field(init=False)

    def __post_init__(self):
        self.token_bytes = self.tok.token_byte_lengths()

    @property
    def context(self) -> int:
        return self.model.cfg.seq_len

    def row_nats(self, rows: list[list[int]]) -> list[np.ndarray]:
        """For each row of at most context + 1 tokens, the nats of predicting row[1:], as float64.
        Rows are batched as given (the caller groups rows of similar length)."""
        out = []
        for start in range(0, len(rows), self.batch_size):
            group = rows[start:start + self.batch_size]
            width = max(len(r) for r in group)
            batch = np.full((len(group), width), self.tok.eot_id, dtype=np.int32)
            for i, r in enumerate(group):
                batch[i, :len(r)] = r
            nats = self.backend.token_losses(self.model, batch)
            out += [nats[i, :len(r) - 1].astype(np.float64) for i, r in enumerate(group)]
        return out


def stream_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) windows over a stream of n_tokens: tokens [start, end) go in, and the targets
    first_scored..end-1 (indices into the stream) are scored -- each target index 1..n-1 exactly once."""
    if not 1 <= stride <= context:
        raise ValueError(f"--stride must be in [1, context={context}], got {stride}")
    windows, scored_to, start = [], 1, 0
    while scored_to < n_tokens:
        end = min(start + context + 1, n_tokens)
        windows.append((start, end, scored_to))
        scored_to = end
        start += stride
    return windows


def score_stream(scorer: Scorer, ids: list[int], stride: int, limit: int | None = None,
                 desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(nats, targets) of every target of the stream scored once by sliding windows (the first `limit` windows);
    a progress bar when `desc` names it."""
    windows = stream_windows(len(ids), scorer.context, stride)[:limit]
    nats, targets = [], []
    bar = tqdm(total=len(windows), desc=desc, unit="win", dynamic_ncols=True, mininterval=1.0, leave=False,
               disable=desc is None)
    for lo in range(0, len(windows), scorer.batch_size):
        group = windows[lo:lo + scorer.batch_size]
        for (start, end, first), row in zip(group, scorer.row_nats([ids[s:e] for s, e, _ in group])):
            nats.append(row[first - start - 1:])
            targets.append(np.asarray(ids[first:end]))
        bar.update(len(group))
    bar.close()
    return np.concatenate(nats), np.concatenate(targets)


def stream_figures(scorer: Scorer, nats: np.ndarray, targets: np.ndarray) -> dict:
    nbytes = scorer.token_bytes[targets]
    text = nbytes > 0
    return {"tokens": int(targets.size), "bytes": int(nbytes.sum()), "nats": float(nats.sum()),
            "token_ppl": math.exp(min(float(nats.mean()), 700.0)),
            "bpb": float(nats[text].sum() / (math.log(2) * nbytes.sum())) if nbytes.sum() else float("nan")}


# ----------------------------------------------------------------------------- tasks
def task_bpb(scorer: Scorer, specs: list[str], data_dir: str | None, stride: int, limit: int | None) -> dict:
    """Bits per byte of text sources (files, dirs, jsonl, parquet, builtin) or of "val", the run's val shard."""
    if specs == ["val"]:
        if not data_dir or not (Path(data_dir) / "shard_00000.bin").is_file():
            raise FileNotFoundError(f"the run's val shard is not at {data_dir}/shard_00000.bin (moved or deleted); "
                                    f"give text with --bpb-source PATH instead")
        ids = read_shard(Path(data_dir) / "shard_00000.bin").astype(np.int64).tolist()
        documents = ids.count(scorer.tok.eot_id)
    else:
        ids, documents = [], 0
        for source in open_sources(specs):
            for doc in source.documents():
                ids += [scorer.tok.eot_id] + scorer.tok.encode(doc)
                documents += 1
    nats, targets = score_stream(scorer, ids, stride, limit, desc="bpb" if scorer.progress else None)
    return {"source": specs, "documents": documents, "stride": stride, **stream_figures(scorer, nats, targets)}


def task_wikitext2(scorer: Scorer, path: Path, stride: int, limit: int | None) -> dict:
    """WikiText-2 raw test: token and word perplexity and bits per byte over the whole text as one stream."""
    text = read_text(path)
    if not text.strip():  # nothing to score: np.concatenate of no windows was the error
        raise ValueError(f"--wikitext2 {path} holds no text; pass the wiki.test.raw file")
    ids = [scorer.tok.eot_id] + scorer.tok.encode(text)
    nats, targets = score_stream(scorer, ids, stride, limit, desc="wikitext2" if scorer.progress else None)
    figures = stream_figures(scorer, nats, targets)
    complete = limit is None or len(targets) == len(ids) - 1
    words = len(text.split()) if complete else len(scorer.tok.decode(targets.tolist()).split())
    return {"file": str(path), "stride": stride, "complete": complete, "words": words, **figures,
            "word_ppl": math.exp(min(figures["nats"] / max(words, 1), 700.0))}


def read_hellaswag(path: Path, limit: int | None = None) -> list[dict]:
    """The items of a HellaSwag jsonl (idx, ctx, endings[4], label), checked: a bad line is a one-line error."""
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(_utf8_lines(f, path), 1):
            if limit is not None and len(items) >= limit:
                break
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                ok = (isinstance(item, dict) and (isinstance(item.get("ctx"), str) or (
                    isinstance(item.get("ctx_a"), str) and isinstance(item.get("ctx_b"), str)))
                      and isinstance(item.get("endings"), list) and len(item["endings"]) == 4
                      and all(isinstance(e, str) and e for e in item["endings"])
                      and item.get("label") in (0, 1, 2, 3, "0", "1", "2", "3"))  # Rowan/hellaswag: "0".."3"
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from None
            if not ok:
                raise ValueError(f"{path}:{lineno}: not a HellaSwag item (needs ctx: str, endings: 4 non-empty "
                                 f"strings, label: 0-3)")
            items.append({**item, "label": int(item["label"])})
    if not items:
        raise ValueError(f"{path} holds no HellaSwag items")
    return items


def _utf8_lines(f, path: Path):
    """The lines of a text file; a file that is not UTF-8 (a binary one) is a one-line error naming it."""
    try:
        yield from f
    except UnicodeDecodeError as e:
        raise ValueError(f"--hellaswag {path} is not UTF-8 text (byte {e.start} of a read); pass the "
                         "hellaswag_val.jsonl file") from None


def lm_eval_preprocess(text: str) -> str:
    """lm-eval's hellaswag text clean-up: WikiHow's "[title]" becomes a sentence end, other [markers] go."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def lm_eval_request(item: dict) -> tuple[str, list[str]]:
    """(context, 4 endings) of an item as lm-eval's hellaswag process_docs makes them. Without ctx_a/ctx_b (a file
    with the joined `ctx`), ctx_b is taken to be the tail after the last ". " when it starts in lowercase."""
    if isinstance(item.get("ctx_a"), str) and isinstance(item.get("ctx_b"), str):
        ctx = item["ctx_a"] + " " + item["ctx_b"].capitalize()
    else:
        head, dot, tail = item["ctx"].rpartition(". ")
        ctx = head + dot + tail.capitalize() if dot and tail[:1].islower() else item["ctx"]
    label = item.get("activity_label")
    query = lm_eval_preprocess(f"{label}: {ctx}" if isinstance(label, str) else ctx)
    return query, [lm_eval_preprocess(e) for e in item["endings"]]


def hellaswag_rows(scorer: Scorer, item: dict) -> tuple[list[list[int]], list[int]]:
    """(4 rows, 4 ending lengths in tokens): <|endoftext|> + context + " " + ending, in tokens."""
    query, endings = lm_eval_request(item)
    context = [scorer.tok.eot_id] + scorer.tok.encode(query)
    endings = [scorer.tok.encode(" " + e) for e in endings]
    return [context + e for e in endings], [len(e) for e in endings]


def fit_rows(scorer: Scorer, rows: list[list[int]], ending_lengths: list[int]) -> tuple[list[list[int]], bool]:
    """Rows that fit the model's context: left-truncate the shared context (never an ending) to the room the
    longest ending leaves. False when an ending alone does not fit: such an item is scored by sliding windows."""
    room = scorer.context + 1 - max(ending_lengths)
    if room < 2:  # at least one token of context
        return rows, False
    return [r[max(0, len(r) - n - room):] for r, n in zip(rows, ending_lengths)], True


def task_hellaswag(scorer: Scorer, path: Path, limit: int | None, log=print) -> dict:
    items = read_hellaswag(path, limit)
    t0 = time.perf_counter()
    prepared = [hellaswag_rows(scorer, item) for item in items]
    truncated = sum(max(len(r) for r in rows) > scorer.context + 1 for rows, _ in prepared)
    fitted = [fit_rows(scorer, rows, lengths) for rows, lengths in prepared]
    windowed = [i for i, (_, fits) in enumerate(fitted) if not fits]
    order = sorted((i for i, (_, fits) in enumerate(fitted) if fits), key=lambda i: max(map(len, fitted[i][0])))
    logliks = np.zeros((len(items), 4))
    per_batch = max(1, scorer.batch_size // 4)  # items per forward pass: their 4 endings together
    bar = tqdm(total=len(items), desc="hellaswag", unit="item", dynamic_ncols=True, mininterval=1.0, leave=False,
               disable=not scorer.progress)
    for lo in range(0, len(order), per_batch):
        chunk = order[lo:lo + per_batch]
        nats = scorer.row_nats([row for i in chunk for row in fitted[i][0]])
        for k, i in enumerate(chunk):
            for j, n_end in enumerate(prepared[i][1]):
                logliks[i, j] = -nats[4 * k + j][-n_end:].sum()
        bar.update(len(chunk))
    for i in windowed:  # an ending longer than the context: every token of it scored by sliding windows
        for j, (row, n_end) in enumerate(zip(*prepared[i])):
            nats, _ = score_stream(scorer, row, max(1, scorer.context // 2))
            logliks[i, j] = -nats[-n_end:].sum()
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    labels = np.array([item["label"] for item in items])
    endings = [lm_eval_request(item)[1] for item in items]
    ending_chars = np.array([[max(1, len(e)) for e in four] for four in endings])
    ending_bytes = np.array([[len((" " + e).encode("utf-8")) for e in four] for four in endings])
    acc = (logliks.argmax(1) == labels).astype(np.float64)
    acc_norm = ((logliks / ending_chars).argmax(1) == labels).astype(np.float64)
    acc_per_byte = ((logliks / ending_bytes).argmax(1) == labels).astype(np.float64)
    if truncated:
        log(f"notice: hellaswag: {truncated} of {len(items)} items are longer than the model's context of "
            f"{scorer.context} tokens: their contexts lose tokens on the left, the endings are scored whole"
            + (f" ({len(windowed)} endings longer than the context itself, by sliding windows)" if windowed else ""))
    return {"file": str(path), "items": len(items), "acc": float(acc.mean()), "acc_stderr": stderr(acc),
            "acc_norm": float(acc_norm.mean()), "acc_norm_stderr": stderr(acc_norm),
            "acc_per_byte": float(acc_per_byte.mean()), "acc_per_byte_stderr": stderr(acc_per_byte),
            "truncated_items": truncated,
            "windowed_items": len(windowed), "items_per_s": len(items) / seconds, "seconds": seconds,
            "logliks": logliks.tolist()}


def stderr(x: np.ndarray) -> float:
    """Standard error of a mean of 0/1 outcomes (sample standard deviation / sqrt(n)), as lm-eval reports it."""
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")
