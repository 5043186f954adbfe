"""Step 2 of training: learn the merges from the chunk counts (pure Python; the algorithm of nanochat's rustbpe).

Rule: repeatedly merge the most frequent adjacent pair of token ids, counted over all chunks weighted by how often
each chunk occurs; ties go to the smallest (left, right) pair. Bytes are ids 0..255, merge k makes id 256 + k.
With that rule the merges equal rustbpe's, merge for merge (tests/test_tokenizer_parity.py).

Data structures:
  words[w]   unique chunk w as a str with ONE CHARACTER PER TOKEN ID (chr(id)); counts[w] its corpus count
  pairs[ab]  total weighted count of the pair, keyed by the 2-character str chr(a) + chr(b)
  where[ab]  set of word indices that (may) contain the pair
  heap       lazy max-heap of single ints  -count * K*K + a*K + b  (K = vocab size): heappop gives the highest
             count, then the smallest (a, b) - the tie rule - and ints compare much faster than tuples.

Why it is fast enough in pure Python (each trick was kept because it measured faster: docs/data.md):
- Token strings: applying a merge to a word is `word.replace(ab, new)` and finding it is `word.find(ab)`, both in
  C, and str.replace is exactly BPE's left-to-right, non-overlapping merge (faster than lists of ints).
  A chunk's initial word is its UTF-8 bytes decoded as latin-1 (byte b -> chr(b)); an ASCII chunk already is it.
- Chunks of one byte can never merge: they are dropped up front.
- A merge touches only the words in where[ab], and updates counts locally around each occurrence with the exact
  rustbpe deltas: (left, a) and (b, right) lose `count`, (left, new) and (new, right) gain it. The left
  neighbour of an occurrence right after another one is the new token itself, which makes overlaps such as
  "aaaa" -> "AA" come out exact.
- where[] is never cleaned: a word that lost a pair stays in the set and costs one failed str.find when visited.
- The heap is lazy: counts of existing pairs only ever go DOWN (new pairs always involve the new id), so a popped
  entry whose count is stale is pushed back with its current count and the true maximum still comes out first.
- The first pass (count all pairs of all words) is numpy: one flat byte array of all words, pair keys by
  vectorised arithmetic, weighted counts by bincount, and the word sets per pair from one argsort.
"""
from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np
from tqdm import tqdm


def _initial_pairs(words: list[str], counts: list[int]):
    """Weighted pair counts and pair -> word-index sets of the initial byte-level words, vectorised."""
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    flat = np.frombuffer("".join(words).encode("latin-1"), dtype=np.uint8).astype(np.int64)
    word_of = np.repeat(np.arange(len(words), dtype=np.int64), lengths)
    ends = np.cumsum(lengths) - 1
    starts = np.ones(len(flat), dtype=bool)  # a pair starts at every position but the last of a word
    starts[ends] = False
    pos = np.nonzero(starts)[0]
    keys = flat[pos] * 256 + flat[pos + 1]
    wids = word_of[pos]
    weights = np.asarray(counts, dtype=np.int64)[wids]
    uniq, inverse = np.unique(keys, return_inverse=True)
    # Group pair occurrences by pair: sort them by pair, cut where the pair changes; sum exact int64 weights.
    order = np.argsort(inverse, kind="stable")
    cuts = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
    totals = np.add.reduceat(weights[order], cuts[:-1])
    names = [chr(k >> 8) + chr(k & 255) for k in uniq.tolist()]
    pairs = defaultdict(int, zip(names, totals.tolist()))
    bounds = cuts.tolist()
    sorted_w = wids[order].tolist()
    where = defaultdict(set)
    for i, name in enumerate(names):
        where[name] = set(sorted_w[bounds[i]:bounds[i + 1]])
    return pairs, where


def _initial_words(chunk_counts: dict[str, int]) -> tuple[list[str], list[int]]:
    """Each chunk as a word of one character per byte (latin-1 of its UTF-8), with its count; single bytes dropped."""
    words, counts = [], []
    for chunk, c in chunk_counts.items():
        w = chunk if chunk.isascii() else chunk.encode("utf-8").decode("latin-1")
        if len(w) >= 2:
            words.append(w)
            counts.append(c)
    return words, counts


def learn_merges(chunk_counts: dict[str, int], num_merges: int, vocab_size: int | None = None,
                 progress: bool = True) -> list[tuple[int, int]]:
    """chunk (str) -> count  ==>  list of merges (left id, right id); merge i creates id 256 + i."""
    K = max(vocab_size or 0, 256 + num_merges)
    KK = K * K
    words, counts = _initial_words(chunk_counts)
    merges: list[tuple[int, int]] = []
    if not words or num_merges <= 0:
        return merges
    pairs, where = _initial_pairs(words, counts)
    heap = [-c * KK + ord(p[0]) * K + ord(p[1]) for p, c in pairs.items()]
    heapq.heapify(heap)
    bar = tqdm(total=num_merges, desc="merges", unit="merge", disable=not progress, smoothing=0.05)
    try:
        _merge_loop(merges, num_merges, heap, K, words, counts, pairs, where, bar)
    finally:
        bar.close()  # also on Ctrl-C
    return merges


def _merge_loop(merges, num_merges, heap, K, words, counts, pairs, where, bar):
    KK = K * K
    heappush, heappop = heapq.heappush, heapq.heappop
    while len(merges) < num_merges and heap:
        top = heappop(heap)
        neg, p = divmod(top, KK)  # floor division: top = -count*KK + p with 0 <= p < KK
        a, b = divmod(p, K)
        ab = chr(a) + chr(b)
        count = pairs.get(ab, 0)
        if count != -neg:  # stale entry: re-queue with the current count (counts only decrease)
            if count > 0:
                heappush(heap, -count * KK + p)
            continue
        if count <= 0:
            break
        created = _apply_merge(ab, chr(256 + len(merges)), words, counts, pairs, where)
        merges.append((a, b))
        for q in created:
            heappush(heap, -pairs[q] * KK + ord(q[0]) * K + ord(q[1]))
        bar.update(1)


def _apply_merge(ab: str, cn: str, words: list[str], counts: list[int], pairs: dict, where: dict) -> set[str]:
    """Replace pair `ab` by the new token `cn` in every word holding it, updating pair counts and where[] around
    each occurrence; return the pairs this created (all contain the new token)."""
    ca, cb = ab[0], ab[1]
    created = set()
    for w in where.pop(ab):
        word = words[w]
        i = word.find(ab)
        if i < 0:  # stale index entry: the pair left this word in an earlier merge
            continue
        n = len(word)
        if n == 2:  # the commonest case: the word IS the pair, no neighbours
            words[w] = cn
            continue
        c = counts[w]
        end = -1  # where the previous occurrence ended: then the left neighbour is the new token
        while i >= 0:
            if i > 0:
                left = cn if i == end else word[i - 1]
                pairs[left + ca] -= c
                q = left + cn
                pairs[q] += c
                where[q].add(w)
                created.add(q)
            j = i + 2
            if j < n:
                r = word[j]
                pairs[cb + r] -= c
                q = cn + r
                pairs[q] += c
                where[q].add(w)
                created.add(q)
            end = j
            i = word.find(ab, j)
        words[w] = word.replace(ab, cn)
    del pairs[ab]  # after the loop: with a == b, "aaa" decrements (a, a) as a right neighbour too
    return created
