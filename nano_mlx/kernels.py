"""The MLX compute kernels nano_mlx/model.py calls; nano_torch/kernels.py has the same names for PyTorch.

Here live the parts of the model whose best form depends on the framework, kept out of model.py so that the two
models stay mirrors of each other line for line. On the MLX side most are the plain form, because mx.compile
fuses the step into one graph and there is no CPU path to route around:

- linear: x @ w.T, with the bias added by mx.addmm.
- gelu: the exact (erf) GELU with erf as a rational function, since MLX's CPU backend evaluates mx.erf one element
  at a time while mx.compile vectorises plain arithmetic; the backward is the exact derivative.
- gelu_tanh: GPT-2's tanh approximation of GELU (nn.gelu_approx, what mlx-lm's gpt2 runs), with tanh as a rational
  function for the same reason (docs/benchmarks.md gives the speed-up); the backward is the formula's derivative.
- attention: causal_mask, eager_attention (the GQA broadcast, an fp32 softmax), eager_causal (one masked call),
  mx.fast.scaled_dot_product_attention wrappers (falling back to the eager kernels for dropout, which the fused
  kernel lacks). flash-attn is a CUDA library for PyTorch: flash_available() is False here, so the model refuses
  attn_impl='flash' at construction.
- cross_entropy: mean(logsumexp - picked logit) in fp32; mx.compile fuses the upcast into the reduction. On the
  CPU a hand-written backward reuses the forward's exponentials (one exp per logit instead of two), as
  nano_torch/kernels.py does for its CPU path.
"""
from __future__ import annotations

import math

import mlx.core as mx


# ----------------------------------------------------------------------------- linear
def linear(x, w, b=None):
    """x @ w.T (+ b), as torch's F.linear."""
    if b is not None:
        return mx.addmm(b, x, w.T)
    return x @ w.T


# ----------------------------------------------------------------------------- activation
# No torch counterpart (torch has a vectorised erf): on a Linux CPU MLX evaluates transcendentals one scalar at a
# time (no x86 SIMD path), while mx.compile fuses plain arithmetic into a vectorised kernel; with mx.erf the exact
# GELU was a sizeable part of a compiled step. This form deviates from torch's erf-GELU by the same <= 1.5e-6 as
# mx.erf does. Fitted here: erf(x) = x P(x^2) / Q(x^2) on |x| <= 4 (weighted least squares, then rounded to fp32),
# max abs error 4e-7 in fp32; erf(4) rounds to 1 in fp32.
_ERF_P = (1.1283792257, 0.18289205432, 0.053291361779, 0.0036655860022, 3.4627693822e-4, 3.8138393847e-6,
          -8.3325817357e-9)
_ERF_Q = (1.0, 0.49541726708, 0.11236701161, 0.014972719364, 0.0012261697557, 5.5006366892e-5)


def _erf(x):
    x = mx.clip(x, -4.0, 4.0)
    t = x * x
    p, q = _ERF_P[-1], _ERF_Q[-1]
    for c in _ERF_P[-2::-1]:
        p = p * t + c
    for c in _ERF_Q[-2::-1]:
        q = q * t + c
    return x * p / q


@mx.custom_function
def gelu(x):
    """Exact (erf) GELU, x * Phi(x), as torch F.gelu; with _erf instead of mx.erf (see above)."""
    return 0.5 * x * (1.0 + _erf(x * (1.0 / math.sqrt(2.0))))


@gelu.vjp
def _gelu_vjp(primals, cotangent, output):
    # d/dx x Phi(x) = Phi(x) + x phi(x): the exact derivative, not the derivative of the fitted erf.
    x = primals[0] if isinstance(primals, (list, tuple)) else primals
    cdf = 0.5 * (1.0 + _erf(x * (1.0 / math.sqrt(2.0))))
    return cotangent * (cdf + x * mx.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi)))


# GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), torch's F.gelu(approximate="tanh"). tanh is
# evaluated as Eigen's float tanh (x P(x^2) / Q(x^2) on |x| <= 7.9, where tanh rounds to +-1 in fp32; max abs error
# 3e-7), for the speed reason given for _erf: mx.tanh runs one element at a time on a Linux CPU. Within 1e-6 of torch.
_TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
           -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
_GELU_C, _GELU_K = math.sqrt(2.0 / math.pi), 0.044715


def _tanh(x):
    x = mx.clip(x, -7.90531110763549805, 7.90531110763549805)
    t = x * x
    p, q = _TANH_P[-1], _TANH_Q[-1]
    for c in _TANH_P[-2::-1]:
        p = p * t + c
    for c in _TANH_Q[-2::-1]:
        q = q * t + c
    return x * p / q


@mx.custom_function
def gelu_tanh(x):
    """GPT-2's tanh-approximated GELU, as torch F.gelu(x, approximate="tanh") and MLX nn.gelu_approx."""
    return 0.5 * x * (1.0 + _tanh(_GELU_C * (x + _GELU_K * x * x * x)))


@gelu_tanh.vjp
def _gelu_tanh_vjp(primals, cotangent, output):
    # d/dx: 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 k x^2), t = tanh(c (x + k x^3)) (not the clipped fit's slope).
    x = primals[0] if isinstance(primals, (list, tuple)) else primals
    t = _tanh(_GELU_C * (x + _GELU_K * x * x * x))
    return cotangent * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_K * x * x))


# ----------------------------------------------------------------------------- attention
def _dropout(x, p):
    keep = mx.random.bernoulli(1.0 - p, x.shape)
    return mx.where(keep, x / (1.0 - p), mx.zeros_like(x))


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
    q = q.reshape(B, Hkv, H // Hkv, *q.shape[2:])
    k, v = mx.expand_dims(k, 2), mx.expand_dims(v, 2)
    # Scale folded into q and the mask applied before the fp32 upcast, as in nano_torch/kernels.py (see there why).
    scores = (q * scale) @ mx.swapaxes(k, -1, -2)
    if mask is not None:
        scores = mx.where(mask, scores, mx.array(-mx.inf, scores.dtype))
    probs = mx.softmax(scores.astype(mx.float32), axis=-1)
    if dropout_p > 0:
        probs = _dropout(probs, dropout_p)
    y = probs.astype(v.dtype) @ v
    return y.reshape(B, H, *y.shape[3:])


def eager_causal(q, k, v, scale, dropout_p):
    pos = mx.arange(q.shape[2])
    return eager_attention(q, k, v, scale, causal_mask(pos, pos, None), dropout_p)


def sdpa_attention(q, k, v, scale, mask, dropout_p):
    if dropout_p > 0:  # the fused kernel has no dropout
        return eager_attention(q, k, v, scale, mask, dropout_p)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)


def sdpa_causal(q, k, v, scale, dropout_p):
    if dropout_p > 0:
        return eager_causal(q, k, v, scale, dropout_p)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")


def flash_causal(q, k, v, scale, dropout_p, window=None):
    """Never called: flash_available() is False, so GPT refuses attn_impl='flash' before any forward."""
    raise ValueError("attn_impl='flash' is flash-attn for PyTorch on CUDA; MLX has no such kernel: use "
                     "attn_impl='sdpa'")


def flash_available() -> bool:
    return False  # flash-attn is a CUDA library for PyTorch


# ----------------------------------------------------------------------------- loss
# The CPU's loss with one exp per logit (_nats_one_pass); set nano_mlx.kernels.FUSED_CE = False to compare with the
# plain form that a GPU runs.
FUSED_CE = True


def cross_entropy(logits, targets, weights=None):
    """Mean cross-entropy of (N, V) logits (any float dtype) against (N,) integer targets, fp32 reduction:
    mean(logsumexp(logits) - logits[target]); with (N,) float `weights` the weighted sum sum(nats * weights) (a
    masked mean for weights = mask / mask.sum()). On a GPU this is the plain form, differentiated by MLX; on the
    CPU, where every exp costs, _nats_one_pass gives the same values and the same gradient with half the exps."""
    if FUSED_CE and mx.default_device() == mx.cpu:
        nats = _nats_one_pass(logits, targets)[0]
    else:
        logits = logits.astype(mx.float32)
        picked = mx.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
        nats = mx.logsumexp(logits, axis=-1) - picked
    return mx.mean(nats) if weights is None else mx.sum(nats * weights.astype(mx.float32))


@mx.custom_function
def _nats_one_pass(logits, targets):
    """(nats, e, 1/s) with e = exp(logits - max) and s its row sum. MLX's own backward of logsumexp computes the
    softmax again, a second exp over all N x V logits, and the CPU backend evaluates exp one element at a time; this
    backward reuses e (p = e / s), so the step pays one exp per logit. The gradient is MLX's own to fp32 rounding
    (e / s against exp(x - logsumexp); tested); e is kept from the forward to the backward, N x V fp32, which is why
    a GPU - where exp is cheap and memory is the limit - does not take this path."""
    x = logits.astype(mx.float32)
    m = mx.max(x, axis=-1, keepdims=True)  # no stop_gradient needed: the vjp below is the whole backward
    e = mx.exp(x - m)
    s = mx.sum(e, axis=-1, keepdims=True)
    picked = mx.take_along_axis(x, targets[:, None], axis=-1)
    return (mx.log(s) + m - picked)[:, 0], e, 1.0 / s


@_nats_one_pass.vjp
def _nats_one_pass_vjp(primals, cotangents, outputs):
    # d nats_i / d logits_ij = p_ij - [j == t_i]; only the nats output is differentiated (e and 1/s are internals).
    logits, targets = primals
    d = cotangents[0][:, None]
    _, e, inv_s = outputs
    onehot = mx.arange(e.shape[-1])[None, :] == targets[:, None]
    return (e * (inv_s * d) - onehot * d).astype(logits.dtype), mx.zeros_like(targets)
