"""One seeded initializer (numpy) and the position tables, shared by both backends.

Both backends load exactly these arrays, so MLX and PyTorch start from bit-identical weights and use bit-identical
RoPE / sinusoidal tables (computed here in float64, stored float32) -- the first half of the parity recipe.
"""
from __future__ import annotations

import math

import numpy as np

from nano_core.config import ModelConfig

STD = 0.02  # GPT-2


def init_weights(cfg: ModelConfig, seed: int = 0, zero_proj: bool = False) -> dict[str, np.ndarray]:
    """Canonical name -> float32 array. GPT-2 style: N(0, 0.02) for matrices and embeddings, residual output
    projections (attn.wo, mlp.proj) N(0, 0.02 / sqrt(2 * n_layer)), zero biases, unit norm weights.
    zero_proj: those projections start at zero instead (modded-nanogpt's init): every block is the identity at step
    0 and the first update sizes them. They are drawn and then zeroed, so every other weight is the same draw.

    The Elman RNN does not follow GPT-2: tiny 0.02 matrices would shrink the signal layer by layer, so its
    input matrix is N(0, 1/sqrt(d)) and its recurrent matrix N(0, 0.5/sqrt(d)) (spectral radius ~0.5, stable).
    Draws happen in param_shapes() order from one np.random.default_rng(seed), in float32 (deterministic).
    """
    cfg.validate()
    rng = np.random.default_rng(seed)
    resid_std = STD / math.sqrt(2 * cfg.n_layer)
    d = cfg.n_embd
    out: dict[str, np.ndarray] = {}
    for name, shape in cfg.param_shapes().items():
        if name.endswith(".bias"):
            w = np.zeros(shape, np.float32)
        elif len(shape) == 1:  # norm weights (ln_emb, ln_*, ln_f, q_norm, k_norm)
            w = np.ones(shape, np.float32)
        else:
            std = STD
            if name.endswith(("attn.wo.weight", "mlp.proj.weight")):
                std = resid_std
            elif name.endswith("w_ih.weight"):
                std = 1.0 / math.sqrt(d)
            elif name.endswith("w_hh.weight"):
                std = 0.5 / math.sqrt(d)
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            if zero_proj and name.endswith(("attn.wo.weight", "mlp.proj.weight")):
                w = np.zeros(shape, np.float32)  # after the draw: the rest of the stream is unchanged
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def sinusoidal_table(length: int, dim: int) -> np.ndarray:
    """Vaswani et al. positions: pe[p, 2i] = sin(p / 10000^(2i/dim)), pe[p, 2i+1] = cos(same). float32 (length, dim)."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    inv = 1.0 / (10000.0 ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    pe = np.zeros((length, dim), np.float64)
    pe[:, 0::2] = np.sin(pos * inv)
    pe[:, 1::2] = np.cos(pos * inv)
    return pe.astype(np.float32)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Rotation frequencies theta_j = base^(-2j/r) for j < r/2 (r = cfg.rope_dim), after rope_scaling (float64).

    linear: theta_j / s (positions squeezed by the factor s).
    ntk:    base' = base * s^(r / (r - 2)) (NTK-aware: stretches low frequencies, keeps the highest one).
    yarn:   Peng et al. 2023 "YaRN", eq. for h(theta_j): with wavelength lambda_j = 2*pi/theta_j and the ratio
            rho_j = L_orig / lambda_j, ramp g = clip((rho_j - beta_slow) / (beta_fast - beta_slow), 0, 1) and
            theta'_j = (1 - g) * theta_j / s + g * theta_j  (long wavelengths interpolated, short ones kept);
            defaults beta_fast=32, beta_slow=1. The attention temperature is in rope_attention_scale().
    """
    r = cfg.rope_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, r, 2, dtype=np.float64) / r))
    rs = cfg.rope_scaling
    if rs is None:
        return inv
    s = float(rs["factor"])
    kind = rs["type"]
    if kind == "linear":
        return inv / s
    if kind == "ntk":
        base = cfg.rope_theta * s ** (r / max(r - 2, 1))
        return 1.0 / (base ** (np.arange(0, r, 2, dtype=np.float64) / r))
    # yarn
    beta_fast, beta_slow = float(rs.get("beta_fast", 32.0)), float(rs.get("beta_slow", 1.0))
    rho = rs["original_max_len"] * inv / (2 * math.pi)
    g = np.clip((rho - beta_slow) / (beta_fast - beta_slow), 0.0, 1.0)
    return (1.0 - g) * inv / s + g * inv


def rope_attention_scale(cfg: ModelConfig) -> float:
    """Multiplier on the 1/sqrt(head_dim) softmax scale. YaRN: sqrt(1/t) = 0.1 ln(s) + 1, and q.k is divided by t,
    so the logits are multiplied by (0.1 ln s + 1)^2 (applied to the whole score, rotated dims or not)."""
    rs = cfg.rope_scaling
    if cfg.pos != "rope" or rs is None or rs["type"] != "yarn" or rs["factor"] <= 1:
        return 1.0
    return (0.1 * math.log(rs["factor"]) + 1.0) ** 2


def rope_tables(cfg: ModelConfig, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin tables, float32 (length, rope_dim/2), for the half-split ("rotate_half", GPT-NeoX/Llama) convention:
    x = [x1, x2] (the first rope_dim dims of a head, split in halves), out = [x1 cos - x2 sin, x2 cos + x1 sin]."""
    ang = np.arange(length, dtype=np.float64)[:, None] * rope_inv_freq(cfg)[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
