"""The nano GPT (and Elman RNN baseline) in MLX. Mirrors nano_torch/model.py name for name.

Every option of nano_core.config.ModelConfig is implemented here, and LoRA adapters on the Linear layers
(nano_core/lora.py: GPT(cfg, lora=LoraConfig) freezes the base). Weights come from the shared numpy initializer
(nano_core.init), never from MLX's default inits (nn.Embedding/nn.Linear are not used for that reason).
"""
from __future__ import annotations

import functools
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from nano_core.config import ModelConfig
from nano_core.init import init_weights as numpy_init
from nano_core.init import rope_attention_scale, rope_tables, sinusoidal_table
from nano_core.lora import LoraConfig, is_adapter_name, layer_targets
from nano_mlx.kernels import (causal_mask, cross_entropy, eager_attention, eager_causal, flash_available,
                              flash_causal, gelu, gelu_tanh, linear, sdpa_attention, sdpa_causal)


# ----------------------------------------------------------------------------- building blocks
def _param(*shape: int) -> mx.array:
    # Filled by load_numpy(); zeros so no framework default init runs (and none is ever relied on).
    return mx.zeros(shape, dtype=mx.float32)


class Linear(nn.Module):
    """x W^T + b, plus with a LoRA adapter scale * (dropout(x) A^T) B^T (nano_core/lora.py): A (r, in) and B (out, r)
    stay two small GEMMs, the (out, in) update is never formed."""

    def __init__(self, inp: int, out: int, bias: bool, lora: LoraConfig | None = None):
        super().__init__()
        self.weight = _param(out, inp)  # (out, in), as in the canonical spec
        self.bias = _param(out) if bias else None
        self.lora_a = _param(lora.rank, inp) if lora else None
        self.lora_b = _param(out, lora.rank) if lora else None
        self.lora_scale = lora.scale if lora else 0.0
        self.lora_dropout = nn.Dropout(lora.dropout) if lora else None

    def __call__(self, x):
        y = linear(x, self.weight, self.bias)
        return y if self.lora_a is None else y + self.adapter(x)

    def adapter(self, x):
        """The LoRA term scale * (dropout(x) A^T) B^T (the scale applied to the rank-r activations)."""
        return linear(linear(self.lora_dropout(x), self.lora_a) * self.lora_scale, self.lora_b)


class Embedding(nn.Module):
    def __init__(self, num: int, dim: int):
        super().__init__()
        self.weight = _param(num, dim)

    def __call__(self, idx):
        return self.weight[idx]


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool, params: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = _param(dim) if params else None
        self.bias = _param(dim) if bias and params else None

    def __call__(self, x):
        return mx.fast.layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool = False, params: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = _param(dim) if params else None

    def __call__(self, x):
        return mx.fast.rms_norm(x, self.weight, self.eps)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def model_norm(cfg: ModelConfig):
    """A norm over the model width as the config asks: its kind, eps, bias, and whether it has parameters."""
    return NORMS[cfg.norm](cfg.n_embd, cfg.norm_eps, cfg.bias, cfg.norm_params)

ACTIVATIONS = {
    "gelu": gelu,                        # exact (erf) GELU in both backends (see kernels.py)
    "gelu_tanh": gelu_tanh,              # GPT-2's tanh approximation (HF "gelu_new", mlx-lm's gpt2)
    "relu": nn.relu,
    "relu2": lambda x: mx.square(nn.relu(x)),
    "swiglu": nn.silu,                   # applied to the gate branch
}

RNN_ACTIVATIONS = {
    "tanh": mx.tanh,
    "slide": lambda a: mx.clip(a, 0.0, 1.0),  # min(1, max(0, a))
}


def apply_rope(x, cos, sin):
    """Half-split ("rotate_half") rotation of the first 2*cos.shape[-1] dims of each head; the rest pass through."""
    h = cos.shape[-1]
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    x1, x2, rest = x[..., :h], x[..., h:2 * h], x[..., 2 * h:]
    return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


# ----------------------------------------------------------------------------- attention
def banded_attention(q, k, v, scale, window, dropout_p, attend=eager_attention):
    """Sliding-window causal attention in O(T * window) work: queries in blocks of `window` attend to their own key
    block and the previous one (2*window keys) under a band mask, instead of a T x T masked matrix."""
    B, H, T, hd = q.shape
    w = window
    nb = -(-T // w)
    pad = nb * w - T
    if pad:
        q, k, v = (mx.pad(t, [(0, 0), (0, 0), (0, pad), (0, 0)]) for t in (q, k, v))
    qb = q.reshape(B, H, nb, w, hd)                               # (B, H, nb, w, hd)

    def two_blocks(t):
        t = t.reshape(t.shape[0], t.shape[1], nb, w, hd)
        prev = mx.pad(t[:, :, :-1], [(0, 0), (0, 0), (1, 0), (0, 0), (0, 0)])  # block b sees block b-1
        return mx.concatenate([prev, t], axis=3)                  # (B, Hkv, nb, 2w, hd)

    kb, vb = two_blocks(k), two_blocks(v)
    i = mx.arange(w)[:, None]
    j = mx.arange(2 * w)[None, :]
    band = (j > i) & (j <= i + w)                                 # query b*w+i, key (b-1)*w+j: 0 <= distance < w
    first = mx.arange(nb)[:, None, None] > 0
    mask = band & (first | (j >= w))                              # (nb, w, 2w): block 0 has no previous block
    y = attend(qb, kb, vb, scale, mask, dropout_p)
    return y.reshape(B, H, nb * w, hd)[:, :, :T]


ATTENTION = {  # attn_impl -> (causal kernel, masked kernel)
    "eager": (eager_causal, eager_attention),
    "sdpa": (sdpa_causal, sdpa_attention),
    "flash": (flash_causal, sdpa_attention),  # PyTorch on CUDA only; the KV-cache (masked) path uses sdpa
}


# ----------------------------------------------------------------------------- cache
class KVCache:
    """Per-layer K/V buffers (B, Hkv, max_len, hd), allocated on first use in the dtype of the keys, and the
    number of positions already written. For arch='rnn' it holds the hidden state of each layer instead."""

    def __init__(self, n_layer: int, batch_size: int, max_len: int):
        self.batch_size, self.max_len, self.pos = batch_size, max_len, 0
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.h = [None] * n_layer

    def update(self, layer: int, k, v):
        """Write k, v (B, Hkv, T, hd) at self.pos; return the buffers up to the new end."""
        B, Hkv, T, hd = k.shape
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} positions needed, max_len={self.max_len}; make a larger cache")
        if self.k[layer] is None:
            self.k[layer] = mx.zeros((B, Hkv, self.max_len, hd), dtype=k.dtype)
            self.v[layer] = mx.zeros((B, Hkv, self.max_len, hd), dtype=v.dtype)
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


# ----------------------------------------------------------------------------- transformer
class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, window: int | None, attn_impl: str, lora: LoraConfig | None = None,
                 targets: frozenset[str] = frozenset()):
        super().__init__()
        d, hd = cfg.n_embd, cfg.head_dim
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, hd
        self.wq = Linear(d, cfg.n_head * hd, cfg.bias, lora if "wq" in targets else None)
        self.wk = Linear(d, cfg.kv_heads * hd, cfg.bias, lora if "wk" in targets else None)
        self.wv = Linear(d, cfg.kv_heads * hd, cfg.bias, lora if "wv" in targets else None)
        self.q_norm = RMSNorm(hd, cfg.norm_eps, params=cfg.norm_params) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps, params=cfg.norm_params) if cfg.qk_norm else None
        self.wo = Linear(cfg.n_head * hd, d, cfg.bias, lora if "wo" in targets else None)
        self.qkv_adapted = bool(targets & {"wq", "wk", "wv"})
        self.window = window
        self.scale = rope_attention_scale(cfg) / math.sqrt(hd)
        self.dropout_attn = cfg.dropout_attn
        self.drop_resid = nn.Dropout(cfg.dropout_resid)
        self.causal, self.masked = ATTENTION[attn_impl]
        self.native_window = attn_impl == "flash"  # the kernel takes the window itself: no banded fallback
        if self.native_window:
            self.causal = functools.partial(flash_causal, window=window)

    def __call__(self, x, rope, cache: KVCache | None, layer: int):
        B, T, _ = x.shape
        H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
        # One GEMM for q, k, v: the canonical weights are concatenated at run time (a small copy of the weights
        # buys one large matmul instead of three).
        w = mx.concatenate([self.wq.weight, self.wk.weight, self.wv.weight])
        b = None if self.wq.bias is None else mx.concatenate([self.wq.bias, self.wk.bias, self.wv.bias])
        q, k, v = mx.split(linear(x, w, b), [H * hd, (H + Hkv) * hd], axis=-1)
        if self.qkv_adapted:  # LoRA: each adapted projection adds its own low-rank term to its slice
            q, k, v = (t if m.lora_a is None else t + m.adapter(x)
                       for t, m in zip((q, k, v), (self.wq, self.wk, self.wv)))
        q = q.reshape(B, T, H, hd).transpose(0, 2, 1, 3)
        k = k.reshape(B, T, Hkv, hd).transpose(0, 2, 1, 3)
        v = v.reshape(B, T, Hkv, hd).transpose(0, 2, 1, 3)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        p = self.dropout_attn if self.training else 0.0
        if cache is None:
            if self.window is None or T <= self.window or self.native_window:
                y = self.causal(q, k, v, self.scale, p)
            else:
                y = banded_attention(q, k, v, self.scale, self.window, p)
        else:
            start = cache.pos
            k, v = cache.update(layer, k, v)
            k0 = 0 if self.window is None else max(0, start - self.window + 1)  # only the keys the window can see
            k, v = k[:, :, k0:], v[:, :, k0:]
            q_pos = mx.arange(start, start + T)
            k_pos = mx.arange(k0, k0 + k.shape[2])
            mask = None if T == 1 and (self.window is None or k.shape[2] <= self.window) else \
                causal_mask(q_pos, k_pos, self.window)
            y = self.masked(q, k, v, self.scale, mask, p)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, H * hd)
        return self.drop_resid(self.wo(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, lora: LoraConfig | None = None, targets: frozenset[str] = frozenset()):
        super().__init__()
        self.fc = Linear(cfg.n_embd, cfg.hidden, cfg.bias, lora if "fc" in targets else None)
        self.gate = Linear(cfg.n_embd, cfg.hidden, cfg.bias, lora if "gate" in targets else None) \
            if cfg.mlp == "swiglu" else None
        self.proj = Linear(cfg.hidden, cfg.n_embd, cfg.bias, lora if "proj" in targets else None)
        self.act = ACTIVATIONS[cfg.mlp]
        self.drop_resid = nn.Dropout(cfg.dropout_resid)

    def __call__(self, x):
        h = self.fc(x)
        h = self.act(h) if self.gate is None else self.act(self.gate(x)) * h
        return self.drop_resid(self.proj(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, window: int | None, attn_impl: str, lora: LoraConfig | None = None,
                 targets: frozenset[str] = frozenset()):
        super().__init__()
        self.ln_1 = model_norm(cfg)
        self.attn = Attention(cfg, window, attn_impl, lora, targets)
        self.ln_2 = model_norm(cfg)
        self.mlp = MLP(cfg, lora, targets)

    def __call__(self, x, rope=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------- Elman RNN baseline
class ElmanLayer(nn.Module):
    """h_t = act(W_ih x_t + W_hh h_{t-1} + b). The input projection runs for all steps in one GEMM."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.n_embd
        self.w_ih = Linear(d, d, bias=False)
        self.w_hh = Linear(d, d, bias=False)
        self.bias = _param(d)
        self.act = RNN_ACTIVATIONS[cfg.rnn_act]

    def __call__(self, x, h):
        a = linear(x, self.w_ih.weight, self.bias)
        h = mx.zeros((a.shape[0], a.shape[2]), dtype=a.dtype) if h is None else h
        outs = []
        for t in range(a.shape[1]):
            h = self.act(a[:, t] + linear(h, self.w_hh.weight))
            outs.append(h)
        return mx.stack(outs, axis=1), h


# ----------------------------------------------------------------------------- the model
class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, attn_impl: str = "sdpa", lora: LoraConfig | None = None):
        super().__init__()
        cfg.validate()
        if lora is not None:
            lora.check(cfg)
        if attn_impl not in ATTENTION:
            raise ValueError(f"attn_impl={attn_impl!r} is not one of {', '.join(ATTENTION)}")
        if attn_impl == "flash" and not flash_available():
            raise ValueError("attn_impl='flash' needs the flash_attn package (PyTorch on CUDA: pip install "
                             "flash-attn); use attn_impl='sdpa'")
        self.cfg, self.attn_impl, self.lora = cfg, attn_impl, lora
        self.grad_checkpoint = False
        d = cfg.n_embd
        self.wte = Embedding(cfg.vocab_size, d)
        self.wpe = Embedding(cfg.seq_len, d) if cfg.pos == "learned" else None
        self.ln_emb = model_norm(cfg) if cfg.emb_norm else None
        self.drop_emb = nn.Dropout(cfg.dropout_emb)
        if cfg.arch == "rnn":
            self.rnn = [ElmanLayer(cfg) for _ in range(cfg.n_layer)]
        else:
            self.h = [Block(cfg, w, attn_impl, lora, layer_targets(cfg, lora, i))
                      for i, w in enumerate(cfg.layer_windows())]
        self.ln_f = model_norm(cfg)
        self.lm_head = None if cfg.tie_embeddings else Linear(d, cfg.vocab_size, bias=False)
        self._build_tables(cfg.seq_len)
        if lora is not None:  # LoRA: the base is frozen, only the adapters train
            self.freeze()
            self.unfreeze(keys=["lora_a", "lora_b"])

    def _build_tables(self, length: int):
        """Position tables from the shared numpy code (bit-identical to PyTorch), fp32. Underscore names keep them
        out of the parameters."""
        self.table_len = length
        if self.cfg.pos == "rope":
            cos, sin = rope_tables(self.cfg, length)
            self._rope_cos, self._rope_sin = mx.array(cos), mx.array(sin)
        if self.cfg.pos == "sinusoidal":
            self._pos_table = mx.array(sinusoidal_table(length, self.cfg.n_embd))

    # -- weights ------------------------------------------------------------------
    def init_weights(self, seed: int = 0):
        self.load_numpy(numpy_init(self.cfg, seed))
        return self

    def load_numpy(self, weights: dict[str, np.ndarray]):
        """The base weights (canonical names; adapters go in with load_adapters)."""
        return self._load(weights, adapters=False)

    def load_adapters(self, adapters: dict[str, np.ndarray]):
        """The LoRA adapters (`....lora_a` / `....lora_b`, nano_core/lora.py)."""
        return self._load(adapters, adapters=True)

    def _load(self, weights: dict[str, np.ndarray], adapters: bool):
        params = {n: p for n, p in tree_flatten(self.parameters()) if is_adapter_name(n) == adapters}
        missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        if missing or unexpected:
            what = "adapters" if adapters else "weights"
            raise ValueError(f"{what} do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        new = []
        for name, p in params.items():
            w = np.asarray(weights[name])
            if tuple(w.shape) != tuple(p.shape):
                raise ValueError(f"{name}: shape {tuple(w.shape)} in the weights, {tuple(p.shape)} in the model")
            new.append((name, mx.array(np.ascontiguousarray(w, dtype=np.float32))))
        self.update(tree_unflatten(new))
        mx.eval(self.parameters())
        return self

    def to_numpy(self, adapters: bool = False) -> dict[str, np.ndarray]:
        """The base weights (adapters=False) or the LoRA adapters (adapters=True), float32 copies."""
        return {n: np.array(p.astype(mx.float32)) for n, p in tree_flatten(self.parameters())
                if is_adapter_name(n) == adapters}

    # -- forward ------------------------------------------------------------------
    def make_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        max_len = self.cfg.seq_len if max_len is None else max_len
        if self.cfg.pos == "learned" and max_len > self.cfg.seq_len:
            raise ValueError(f"max_len={max_len} exceeds the learned position table (seq_len={self.cfg.seq_len})")
        if max_len > self.table_len:
            self._build_tables(max_len)
        return KVCache(self.cfg.n_layer, batch_size, max_len)

    def __call__(self, idx, cache: KVCache | None = None):
        return self.head(self.features(idx, cache)).astype(mx.float32)

    def features(self, idx, cache: KVCache | None = None):
        """Token ids (B, T) -> final normalised hidden states (B, T, d); advances the cache."""
        B, T = idx.shape
        p = 0 if cache is None else cache.pos
        if p + T > self.table_len and self.cfg.pos in ("rope", "sinusoidal", "learned"):
            raise ValueError(f"sequence of {p + T} tokens is longer than the model context {self.table_len}")
        x = self.wte(idx)
        if self.cfg.emb_scale != 1.0:  # the lookup only: a tied head uses the unscaled weight (as Vaswani et al.)
            x = x * self.cfg.emb_scale
        if self.wpe is not None:
            x = x + self.wpe.weight[p:p + T]
        if self.cfg.pos == "sinusoidal":
            x = x + self._pos_table[p:p + T]
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        x = self.drop_emb(x)
        if self.cfg.arch == "rnn":
            for i, layer in enumerate(self.rnn):
                x, h = layer(x, None if cache is None else cache.h[i])
                if cache is not None:
                    cache.h[i] = h
        else:
            rope = (self._rope_cos[p:p + T], self._rope_sin[p:p + T]) if self.cfg.pos == "rope" else None
            for i, block in enumerate(self.h):
                if self.grad_checkpoint and cache is None:
                    x = _checkpointed(block, x, rope)
                else:
                    x = block(x, rope, cache, i)
        if cache is not None:
            cache.pos += T
        return self.ln_f(x)

    def head(self, x):
        """Hidden states -> logits in the compute dtype; the soft cap is applied in fp32."""
        w = self.wte.weight if self.lm_head is None else self.lm_head.weight
        logits = linear(x, w)
        if self.cfg.logit_softcap is not None:
            c = self.cfg.logit_softcap
            logits = c * mx.tanh(logits.astype(mx.float32) / c)
        return logits

    def loss(self, idx, targets, weights=None):
        """Mean cross-entropy over all B*T tokens, reduced in fp32; with `weights` (B, T) the weighted sum
        sum(nats * weights) instead (a masked mean when the weights are mask / mask.sum())."""
        logits = self.head(self.features(idx))
        return cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                             None if weights is None else weights.reshape(-1))


def _checkpointed(block, x, rope):
    """mx.checkpoint differentiates only explicit arguments, so the block's parameters are passed in
    (nn.utils.checkpoint does that); rope tables go in as arrays too."""
    if rope is None:
        return nn.utils.checkpoint(block, lambda x: block(x))(x)
    return nn.utils.checkpoint(block, lambda x, cos, sin: block(x, (cos, sin)))(x, *rope)
