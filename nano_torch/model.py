"""The nano GPT (and Elman RNN baseline) in PyTorch. nano_mlx/model.py mirrors this file name for name.

Every option of nano_core.config.ModelConfig is implemented here. Weights come from the shared numpy initializer
(nano_core.init), never from PyTorch's default inits, so both backends start from the same bits.
MPS is designed in: no float64, no 0-d CPU tensors mixed with device tensors, tables made fp32 on the model device.
"""
from __future__ import annotations

import functools
import math
import platform

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import register_flop_formula

from nano_core.config import ModelConfig
from nano_core.init import init_weights as numpy_init
from nano_core.init import rope_attention_scale, rope_tables, sinusoidal_table


# ----------------------------------------------------------------------------- building blocks
def _param(*shape: int) -> nn.Parameter:
    # Filled by load_numpy(); empty so no framework default init runs (and none is ever relied on).
    return nn.Parameter(torch.empty(*shape))


def _onednn_fp32_gemm_wanted() -> bool:
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.backends.cpu.get_cpu_capability() == "AVX512")


# Why route fp32 CPU matmuls around F.linear: PyTorch's CPU wheels send fp32 GEMMs to MKL, and MKL runs its AVX2
# kernels on AMD processors even when they have AVX-512. oneDNN (also inside every x86 wheel, already used for bf16)
# runs AVX-512 kernels on any x86 CPU that has them. Measured on this project's 2-core AMD EPYC (Zen 5): 190 vs
# 410-450 GFLOP/s for the GEMM shapes of a 384-wide GPT, in true fp32 (same results to rounding). Only CPUs with
# AVX-512 take this path: that is where the gain was measured (on Intel ones MKL uses AVX-512 itself, so the two are
# level); AVX2-only CPUs keep F.linear. Set nano_torch.model.ONEDNN_FP32 = False to compare.
ONEDNN_FP32 = _onednn_fp32_gemm_wanted()


# A custom op, so torch.compile keeps the call opaque (inductor's own lowering of the oneDNN op wants frozen weights).
@torch.library.custom_op("nano::onednn_linear", mutates_args=())
def _onednn_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w.T (+ b) for 2-D x by oneDNN; both operands may be strided views (no copies for the transposes)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


@_onednn_linear.register_fake
def _(x, w, b=None):
    return x.new_empty(x.shape[0], w.shape[0])


# So torch.utils.flop_counter.FlopCounterMode counts this GEMM like aten's mm (2 * M * K * N).
@register_flop_formula(torch.ops.nano.onednn_linear)
def _(x_shape, w_shape, *args, **kwargs) -> int:
    return 2 * x_shape[0] * x_shape[1] * w_shape[0]


class _OneDNNLinear(torch.autograd.Function):
    """F.linear in fp32 with all three GEMMs (forward, input grad, weight grad) done by oneDNN."""

    @staticmethod
    def forward(ctx, x, w, b):
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, w)
        ctx.has_bias = b is not None
        return _onednn_linear(x2, w, b).view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, w = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        gx = _onednn_linear(g2, w.t()).view(*grad.shape[:-1], w.shape[1]) if ctx.needs_input_grad[0] else None
        gw = _onednn_linear(g2.t(), x2.t()) if ctx.needs_input_grad[1] else None
        gb = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear(x, w, b=None):
    """F.linear, by oneDNN for fp32 on x86 CPUs (see ONEDNN_FP32); autocast and other devices use F.linear."""
    if ONEDNN_FP32 and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 \
            and not torch.is_autocast_enabled("cpu"):
        return _OneDNNLinear.apply(x, w, b)
    return F.linear(x, w, b)


class Linear(nn.Module):
    def __init__(self, inp: int, out: int, bias: bool):
        super().__init__()
        self.weight = _param(out, inp)  # (out, in), as in the canonical spec
        self.bias = _param(out) if bias else None

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    def __init__(self, num: int, dim: int):
        super().__init__()
        self.weight = _param(num, dim)

    def forward(self, idx):
        return F.embedding(idx, self.weight)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = _param(dim)
        self.bias = _param(dim) if bias else None

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = _param(dim)

    def forward(self, x):
        # fp32 statistics even under bf16 autocast (and the fused kernel needs matching dtypes)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight, self.eps).to(x.dtype)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}

ACTIVATIONS = {
    "gelu": F.gelu,                      # exact (erf) GELU, same as mlx.nn.gelu
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
    "swiglu": F.silu,                    # applied to the gate branch
}

RNN_ACTIVATIONS = {
    "tanh": torch.tanh,
    "slide": lambda a: torch.clamp(a, 0.0, 1.0),  # min(1, max(0, a))
}


def apply_rope(x, cos, sin):
    """Half-split ("rotate_half") rotation of the first 2*cos.shape[-1] dims of each head; the rest pass through."""
    h = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2, rest = x[..., :h], x[..., h:2 * h], x[..., 2 * h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


# ----------------------------------------------------------------------------- attention kernels
def causal_mask(q_pos, k_pos, window):
    """Boolean keep-mask (Tq, Tk) from absolute positions: key <= query, and within the window when one is set."""
    rel = q_pos[:, None] - k_pos[None, :]
    keep = rel >= 0
    if window is not None:
        keep = keep & (rel < window)
    return keep


def eager_attention(q, k, v, scale, mask, dropout_p):
    """softmax(q k^T * scale) v with a boolean keep-mask (None = no mask). GQA without copying K/V: the query heads
    are grouped (B, Hkv, rep, ...) and broadcast against (B, Hkv, 1, ...). Extra dims between heads and time work."""
    B, H = q.shape[:2]
    Hkv = k.shape[1]
    q = q.unflatten(1, (Hkv, H // Hkv))
    k, v = k.unsqueeze(2), v.unsqueeze(2)
    # Scale folded into q (a T x hd multiply, not T x T): same values as scaling the scores when scale is a power of
    # two (hd = 64: bit-identical), within rounding otherwise. The mask is added in place as a 0 / -inf bias in the
    # compute dtype: the same scores as masked_fill, and its backward is the identity (softmax's gradient is already
    # 0 where p = 0) instead of another masked pass -- ~20% faster attention per layer than masked_fill on CPU.
    scores = (q * scale) @ k.transpose(-1, -2)
    if mask is not None:
        scores += torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~mask, float("-inf"))
    # Softmax in the compute dtype on CPU: its bf16 kernel accumulates in fp32 and returns exactly the fp32 softmax
    # rounded to bf16 (tested) -- the values the P @ V matmul would get anyway -- while an fp32 softmax plus casts
    # made eager bf16 attention 3x slower (31 vs 11 ms per layer, fwd+bwd, at the comparison config). Other
    # devices keep the explicit fp32 softmax.
    probs = scores.softmax(dim=-1) if scores.device.type == "cpu" else scores.softmax(dim=-1, dtype=torch.float32)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return (probs.to(v.dtype) @ v).flatten(1, 2)


def sdpa_attention(q, k, v, scale, mask, dropout_p):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])


def sdpa_causal(q, k, v, scale, dropout_p):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])


def eager_causal(q, k, v, scale, dropout_p):
    """Causal attention in two query halves: the first half only scores the first half of the keys, so the upper-
    right quarter of the T x T matrix (all masked) is never computed -- 25% less attention work, measured 30% faster
    per layer at T=256 in bf16 on CPU. Short sequences go in one piece (the split would not pay for its overhead)."""
    T = q.shape[2]
    pos = torch.arange(T, device=q.device)
    if T < 128:
        return eager_attention(q, k, v, scale, causal_mask(pos, pos, None), dropout_p)
    h = T // 2
    first = eager_attention(q[:, :, :h], k[:, :, :h], v[:, :, :h], scale, causal_mask(pos[:h], pos[:h], None),
                            dropout_p)
    second = eager_attention(q[:, :, h:], k, v, scale, causal_mask(pos[h:], pos, None), dropout_p)
    return torch.cat([first, second], dim=2)


def banded_attention(q, k, v, scale, window, dropout_p, attend=eager_attention):
    """Sliding-window causal attention in O(T * window) work: queries in blocks of `window` attend to their own key
    block and the previous one (2*window keys) under a band mask, instead of a T x T masked matrix."""
    B, H, T, hd = q.shape
    w = window
    nb = -(-T // w)
    pad = nb * w - T
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qb = q.unflatten(2, (nb, w))                                  # (B, H, nb, w, hd)

    def two_blocks(t):
        t = t.unflatten(2, (nb, w))
        prev = F.pad(t[:, :, :-1], (0, 0, 0, 0, 1, 0))            # block b sees block b-1 (zeros before block 0)
        return torch.cat([prev, t], dim=3)                        # (B, Hkv, nb, 2w, hd)

    kb, vb = two_blocks(k), two_blocks(v)
    i = torch.arange(w, device=q.device)[:, None]
    j = torch.arange(2 * w, device=q.device)[None, :]
    band = (j > i) & (j <= i + w)                                 # query b*w+i, key (b-1)*w+j: 0 <= distance < w
    first = torch.arange(nb, device=q.device)[:, None, None] > 0
    mask = band & (first | (j >= w))                              # (nb, w, 2w): block 0 has no previous block
    y = attend(qb, kb, vb, scale, mask, dropout_p)
    return y.flatten(2, 3)[:, :, :T]


def flash_causal(q, k, v, scale, dropout_p, window=None):
    """flash-attn 2 on CUDA: (B, T, H, D) layout, GQA and the sliding window native (window_size=(w-1, 0))."""
    if not q.is_cuda:
        raise ValueError(f"attn_impl='flash' runs on CUDA only, got a {q.device.type} tensor; use attn_impl='sdpa'")
    from flash_attn import flash_attn_func
    left = -1 if window is None else window - 1
    y = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p, softmax_scale=scale,
                        causal=True, window_size=(left, 0))
    return y.transpose(1, 2)


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


ATTENTION = {  # attn_impl -> (causal kernel, masked kernel)
    "eager": (eager_causal, eager_attention),
    "sdpa": (sdpa_causal, sdpa_attention),
    "flash": (flash_causal, sdpa_attention),  # torch + CUDA only; the KV-cache (masked) path uses sdpa
}


# ----------------------------------------------------------------------------- cache
class KVCache:
    """Per-layer K/V buffers (B, Hkv, max_len, hd), allocated on first use in the dtype/device of the keys, and the
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
            self.k[layer] = k.new_zeros(B, Hkv, self.max_len, hd)
            self.v[layer] = v.new_zeros(B, Hkv, self.max_len, hd)
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


# ----------------------------------------------------------------------------- transformer
class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, window: int | None, attn_impl: str):
        super().__init__()
        d, hd = cfg.n_embd, cfg.head_dim
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, hd
        self.wq = Linear(d, cfg.n_head * hd, cfg.bias)
        self.wk = Linear(d, cfg.kv_heads * hd, cfg.bias)
        self.wv = Linear(d, cfg.kv_heads * hd, cfg.bias)
        self.q_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.wo = Linear(cfg.n_head * hd, d, cfg.bias)
        self.window = window
        self.scale = rope_attention_scale(cfg) / math.sqrt(hd)
        self.dropout_attn = cfg.dropout_attn
        self.drop_resid = nn.Dropout(cfg.dropout_resid)
        self.causal, self.masked = ATTENTION[attn_impl]
        self.native_window = attn_impl == "flash"  # the kernel takes the window itself: no banded fallback
        if self.native_window:
            self.causal = functools.partial(flash_causal, window=window)

    def forward(self, x, rope, cache: KVCache | None, layer: int):
        B, T, _ = x.shape
        H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
        # One GEMM for q, k, v: the canonical weights are concatenated at run time (a small copy of the weights
        # buys one large matmul instead of three).
        w = torch.cat([self.wq.weight, self.wk.weight, self.wv.weight])
        b = None if self.wq.bias is None else torch.cat([self.wq.bias, self.wk.bias, self.wv.bias])
        q, k, v = linear(x, w, b).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)
        k = k.view(B, T, Hkv, hd).transpose(1, 2)
        v = v.view(B, T, Hkv, hd).transpose(1, 2)
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
            q_pos = torch.arange(start, start + T, device=x.device)
            k_pos = torch.arange(k0, k0 + k.shape[2], device=x.device)
            mask = None if T == 1 and (self.window is None or k.shape[2] <= self.window) else \
                causal_mask(q_pos, k_pos, self.window)
            y = self.masked(q, k, v, self.scale, mask, p)
        y = y.transpose(1, 2).reshape(B, T, H * hd)
        return self.drop_resid(self.wo(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = Linear(cfg.n_embd, cfg.hidden, cfg.bias)
        self.gate = Linear(cfg.n_embd, cfg.hidden, cfg.bias) if cfg.mlp == "swiglu" else None
        self.proj = Linear(cfg.hidden, cfg.n_embd, cfg.bias)
        self.act = ACTIVATIONS[cfg.mlp]
        self.drop_resid = nn.Dropout(cfg.dropout_resid)

    def forward(self, x):
        h = self.fc(x)
        h = self.act(h) if self.gate is None else self.act(self.gate(x)) * h
        return self.drop_resid(self.proj(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, window: int | None, attn_impl: str):
        super().__init__()
        self.ln_1 = NORMS[cfg.norm](cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.attn = Attention(cfg, window, attn_impl)
        self.ln_2 = NORMS[cfg.norm](cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, rope=None, cache=None, layer=0):
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

    def forward(self, x, h):
        a = linear(x, self.w_ih.weight, self.bias)
        h = a.new_zeros(a.shape[0], a.shape[2]) if h is None else h
        outs = []
        for t in range(a.shape[1]):
            h = self.act(a[:, t] + linear(h, self.w_hh.weight))
            outs.append(h)
        return torch.stack(outs, dim=1), h


# ----------------------------------------------------------------------------- the model
class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, attn_impl: str = "sdpa"):
        super().__init__()
        cfg.validate()
        if attn_impl not in ATTENTION:
            raise ValueError(f"attn_impl={attn_impl!r} is not one of {', '.join(ATTENTION)}")
        if attn_impl == "flash" and not flash_available():
            raise ValueError("attn_impl='flash' needs the flash_attn package (pip install flash-attn, CUDA only); "
                             "use attn_impl='sdpa'")
        self.cfg, self.attn_impl = cfg, attn_impl
        self.grad_checkpoint = False
        d = cfg.n_embd
        self.wte = Embedding(cfg.vocab_size, d)
        self.wpe = Embedding(cfg.seq_len, d) if cfg.pos == "learned" else None
        self.drop_emb = nn.Dropout(cfg.dropout_emb)
        if cfg.arch == "rnn":
            self.rnn = nn.ModuleList([ElmanLayer(cfg) for _ in range(cfg.n_layer)])
        else:
            self.h = nn.ModuleList([Block(cfg, w, attn_impl) for w in cfg.layer_windows()])
        self.ln_f = NORMS[cfg.norm](d, cfg.norm_eps, cfg.bias)
        self.lm_head = None if cfg.tie_embeddings else Linear(d, cfg.vocab_size, bias=False)
        self._build_tables(cfg.seq_len, torch.device("cpu"))

    def _build_tables(self, length: int, device):
        """Position tables from the shared numpy code (bit-identical to MLX), fp32, on the model's device."""
        self.table_len = length
        if self.cfg.pos == "rope":
            cos, sin = rope_tables(self.cfg, length)
            self.register_buffer("rope_cos", torch.from_numpy(cos).to(device), persistent=False)
            self.register_buffer("rope_sin", torch.from_numpy(sin).to(device), persistent=False)
        if self.cfg.pos == "sinusoidal":
            pe = sinusoidal_table(length, self.cfg.n_embd)
            self.register_buffer("pos_table", torch.from_numpy(pe).to(device), persistent=False)

    # -- weights ------------------------------------------------------------------
    def init_weights(self, seed: int = 0):
        self.load_numpy(numpy_init(self.cfg, seed))
        return self

    def load_numpy(self, weights: dict[str, np.ndarray]):
        params = dict(self.named_parameters())
        missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        if missing or unexpected:
            raise ValueError(f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, p in params.items():
                w = np.asarray(weights[name])
                if tuple(w.shape) != tuple(p.shape):
                    raise ValueError(f"{name}: shape {tuple(w.shape)} in the weights, {tuple(p.shape)} in the model")
                p.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
        return self

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {n: p.detach().float().cpu().numpy().copy() for n, p in self.named_parameters()}

    def estimate_flops(self) -> int:
        return self.cfg.estimate_flops()

    # -- forward ------------------------------------------------------------------
    def make_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        max_len = self.cfg.seq_len if max_len is None else max_len
        if self.cfg.pos == "learned" and max_len > self.cfg.seq_len:
            raise ValueError(f"max_len={max_len} exceeds the learned position table (seq_len={self.cfg.seq_len})")
        if max_len > self.table_len:
            self._build_tables(max_len, self.wte.weight.device)
        return KVCache(self.cfg.n_layer, batch_size, max_len)

    def forward(self, idx, cache: KVCache | None = None):
        return self.head(self.features(idx, cache)).float()

    def features(self, idx, cache: KVCache | None = None):
        """Token ids (B, T) -> final normalised hidden states (B, T, d); advances the cache."""
        B, T = idx.shape
        p = 0 if cache is None else cache.pos
        if p + T > self.table_len and self.cfg.pos in ("rope", "sinusoidal", "learned"):
            raise ValueError(f"sequence of {p + T} tokens is longer than the model context {self.table_len}")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe.weight[p:p + T]
        if self.cfg.pos == "sinusoidal":
            x = x + self.pos_table[p:p + T]
        x = self.drop_emb(x)
        if self.cfg.arch == "rnn":
            for i, layer in enumerate(self.rnn):
                x, h = layer(x, None if cache is None else cache.h[i])
                if cache is not None:
                    cache.h[i] = h
        else:
            rope = (self.rope_cos[p:p + T], self.rope_sin[p:p + T]) if self.cfg.pos == "rope" else None
            for i, block in enumerate(self.h):
                if self.grad_checkpoint and cache is None and torch.is_grad_enabled():
                    x = checkpoint(block, x, rope, use_reentrant=False)
                else:
                    x = block(x, rope, cache, i)
        if cache is not None:
            cache.pos += T
        return self.ln_f(x)

    def head(self, x):
        """Hidden states -> logits in the compute dtype (bf16 under autocast); the soft cap is applied in fp32."""
        w = self.wte.weight if self.lm_head is None else self.lm_head.weight
        logits = linear(x, w)
        if self.cfg.logit_softcap is not None:
            c = self.cfg.logit_softcap
            logits = c * torch.tanh(logits.float() / c)
        return logits

    def loss(self, idx, targets):
        """Mean cross-entropy over all B*T tokens, reduced in fp32 (without an fp32 copy of the logits)."""
        logits = self.head(self.features(idx))
        return cross_entropy(logits.flatten(0, 1), targets.flatten())


# ----------------------------------------------------------------------------- loss
class _CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy = -mean(log_softmax(logits)[target]), computed in fp32 over blocks of rows.

    Why not F.cross_entropy(logits.float(), ...): with V=8192 the (B*T, V) logits are the largest tensor of the
    step, and that path writes an fp32 copy, fp32 log-probs, a zero-filled fp32 gradient and its bf16 cast -- pure
    memory traffic that cost ~15% of a bf16 step on CPU. Here each block of rows goes through one fused
    log_softmax (bf16 in, fp32 math) while it is in cache, only the picked log-probs are kept, and backward writes
    softmax - onehot straight into a gradient of the logits' own dtype, one fused fp32 softmax per block. (An earlier
    upcast + logsumexp + sub + exp version was 3x slower; F.cross_entropy on bf16 logits directly is fast too but
    rounds the per-token losses to bf16: measured 0.04 nats lower loss at init -- not the same math.)"""

    @staticmethod
    def forward(ctx, logits, targets):
        rows = max(1, (1 << 20) // logits.shape[-1])  # ~4 MB of fp32 per block
        picked = torch.cat([torch.log_softmax(blk, dim=-1, dtype=torch.float32).gather(1, t[:, None]).squeeze(1)
                            for blk, t in zip(logits.split(rows), targets.split(rows))])
        ctx.save_for_backward(logits, targets)
        ctx.rows = rows
        return -picked.mean()

    @staticmethod
    def backward(ctx, grad):
        logits, targets = ctx.saved_tensors
        n, rows = logits.shape[0], ctx.rows
        out = torch.empty_like(logits)
        scale = grad / n
        for s in range(0, n, rows):
            p = torch.softmax(logits[s:s + rows], dim=-1, dtype=torch.float32)  # a new fp32 block
            p[torch.arange(p.shape[0], device=p.device), targets[s:s + rows]] -= 1.0
            out[s:s + rows] = p.mul_(scale)
        return out, None


def cross_entropy(logits, targets):
    """Mean cross-entropy of (N, V) logits (any float dtype) against (N,) integer targets, fp32 reduction."""
    return _CrossEntropy.apply(logits, targets.long())
