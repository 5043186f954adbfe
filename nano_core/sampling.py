"""Choosing the next token from logits: temperature, top-k, top-p (backend-free numpy).

Both generate.py files call this one function with a seeded numpy Generator, so a sample drawn in the middle of
training touches no framework RNG (the run stays bit-identical) and the two backends pick alike from alike logits.
"""
from __future__ import annotations

import math

import numpy as np

# --max-new-tokens above this is a typing slip, not a sample anyone reads (and it would run for days on a laptop)
MAX_NEW_TOKENS = 1_000_000
# --num-samples above this is a slip too: the samples are one batch, and its KV cache grows with each of them
MAX_NUM_SAMPLES = 1024


def check_sampling(temperature: float, top_k: int, top_p: float, max_new_tokens: int) -> None:
    """One-line errors for settings that would sample nonsense (or silently sample something else)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0: off), got {top_k}")
    if not (0 < top_p <= 1):  # also false for NaN
        raise ValueError(f"--top-p must be in (0, 1] (1: off), got {top_p}")
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"--max-new-tokens must be >= 0 and at most {MAX_NEW_TOKENS:,}, got {max_new_tokens}")


def sample_next(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng) -> int:
    """One token id from a (V,) float logits vector."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        # keep the smallest prefix of most-likely tokens whose mass reaches top_p (always at least one)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(p.size, p=p))
