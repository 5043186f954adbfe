"""The PyTorch compute kernels nano_torch/model.py calls; nano_mlx/kernels.py has the same names for MLX.

Here live the parts of the model whose best form depends on the framework, the device or the CPU, kept out of
model.py so that the two models stay mirrors of each other line for line:

- linear: F.linear, except fp32 on x86 CPUs with AVX-512, where the three GEMMs of a linear layer go to oneDNN
  (PyTorch's own MKL path runs AVX2 kernels on AMD processors); ONEDNN_FP32 switches that off.
- gelu: F.gelu, the exact (erf) GELU; gelu_tanh: F.gelu(approximate="tanh"), GPT-2's tanh approximation.
- attention: causal_mask, eager_attention (the GQA broadcast, the mask as an additive bias, the softmax in the
  compute dtype on CPU), eager_causal (two query halves, skipping the all-masked quarter of the scores),
  scaled_dot_product_attention wrappers, and flash-attn on CUDA.
- cross_entropy: a blockwise fp32 cross-entropy with a hand-written backward, which never materialises an fp32
  copy of the logits; on the CPU the forward writes the gradient too (one softmax per block instead of two).

Every kernel computes the same math as its plain PyTorch form (tests/test_model_torch.py checks each against it).
"""
from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula


# ----------------------------------------------------------------------------- linear
def _onednn_fp32_gemm_wanted() -> bool:
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.backends.cpu.get_cpu_capability() == "AVX512")


# Why route fp32 CPU matmuls around F.linear: PyTorch's CPU wheels send fp32 GEMMs to MKL, and MKL runs its AVX2
# kernels on AMD processors even when they have AVX-512. oneDNN (also inside every x86 wheel, already used for bf16)
# runs AVX-512 kernels on any x86 CPU that has them, in true fp32 (same results to rounding). Only CPUs with AVX-512
# take this path: that is where it pays (on Intel ones MKL uses AVX-512 itself, so the two are level); AVX2-only
# CPUs keep F.linear. `linear` reads this flag at every call: set nano_torch.kernels.ONEDNN_FP32 = False to compare.
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
    """x @ w.T (+ b), as F.linear: by oneDNN for fp32 on x86 CPUs (see ONEDNN_FP32); autocast and other devices use
    F.linear."""
    if ONEDNN_FP32 and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 \
            and not torch.is_autocast_enabled("cpu"):
        return _OneDNNLinear.apply(x, w, b)
    return F.linear(x, w, b)


# ----------------------------------------------------------------------------- activation
gelu = F.gelu  # exact (erf) GELU; torch's erf is vectorised, so no custom form is needed (see nano_mlx/kernels.py)


def gelu_tanh(x):
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (HF activation "gelu_new")."""
    return F.gelu(x, approximate="tanh")


# ----------------------------------------------------------------------------- attention
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
    # 0 where p = 0) instead of another masked pass over the T x T scores.
    scores = (q * scale) @ k.transpose(-1, -2)
    if mask is not None:
        scores += torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~mask, float("-inf"))
    # Softmax in the compute dtype on CPU: its bf16 kernel accumulates in fp32 and returns exactly the fp32 softmax
    # rounded to bf16 (tested) -- the values the P @ V matmul would get anyway -- while an fp32 softmax plus casts
    # would add two passes over the T x T scores in fp32 (it made eager bf16 attention several times slower). Other
    # devices keep the explicit fp32 softmax.
    probs = scores.softmax(dim=-1) if scores.device.type == "cpu" else scores.softmax(dim=-1, dtype=torch.float32)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return (probs.to(v.dtype) @ v).flatten(1, 2)


def eager_causal(q, k, v, scale, dropout_p):
    """Causal attention in two query halves: the first half only scores the first half of the keys, so the upper-
    right quarter of the T x T matrix (all masked) is never computed -- 25% less attention work. Short sequences go
    in one piece (the split would not pay for its overhead)."""
    T = q.shape[2]
    pos = torch.arange(T, device=q.device)
    if T < 128:
        return eager_attention(q, k, v, scale, causal_mask(pos, pos, None), dropout_p)
    h = T // 2
    first = eager_attention(q[:, :, :h], k[:, :, :h], v[:, :, :h], scale, causal_mask(pos[:h], pos[:h], None),
                            dropout_p)
    second = eager_attention(q[:, :, h:], k, v, scale, causal_mask(pos[h:], pos, None), dropout_p)
    return torch.cat([first, second], dim=2)


def sdpa_attention(q, k, v, scale, mask, dropout_p):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])


def sdpa_causal(q, k, v, scale, dropout_p):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])


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


# ----------------------------------------------------------------------------- loss
# The CPU's one-pass loss and gradient (_CrossEntropy's docstring); set nano_torch.kernels.FUSED_CE = False to compare
# with the two-pass form accelerators run.
FUSED_CE = True


class _CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy = -mean(log_softmax(logits)[target]), computed in fp32 over blocks of rows.

    Why not F.cross_entropy(logits.float(), ...): with a large vocabulary the (B*T, V) logits are the largest tensor
    of the step, and that path writes an fp32 copy, fp32 log-probs, a zero-filled fp32 gradient and its bf16 cast --
    pure memory traffic. Here each block of rows goes through one fused log_softmax (bf16 in, fp32 math) while it is
    in cache, only the picked log-probs are kept, and backward writes softmax - onehot straight into a gradient of
    the logits' own dtype, one fused fp32 softmax per block. (An upcast + logsumexp + sub + exp version is slower;
    F.cross_entropy on bf16 logits directly is fast too but rounds the per-token losses to bf16, which lowers the
    loss measurably -- not the same math.)

    On the CPU, when the logits need a gradient, the forward does both halves at once (_fused_blocks): one fp32
    softmax per block gives the picked log-prob (log p[target]) and the gradient, so each block is read and upcast
    once instead of twice. The gradient is the same bf16 tensor the two-pass backward writes (tested bit for bit);
    the loss differs from log_softmax's by fp32 rounding. An upstream gradient other than 1 (1 / grad_accum for a
    number of micro-batches that is not a power of two) multiplies the finished bf16 gradient, one more rounding:
    within a unit in the last place of the two-pass one. Accelerators keep the two passes: the fused form checks
    for an underflowed p[target] on the host, a sync per block there."""

    @staticmethod
    def forward(ctx, logits, targets, weights):
        rows = max(1, (1 << 20) // logits.shape[-1])  # ~4 MB of fp32 per block
        if FUSED_CE and logits.requires_grad and logits.device.type == "cpu":
            picked, grad = _fused_blocks(logits, targets, weights, rows)
            ctx.save_for_backward(grad)
            ctx.fused = True
        else:
            picked = torch.cat([torch.log_softmax(blk, dim=-1, dtype=torch.float32).gather(1, t[:, None]).squeeze(1)
                                for blk, t in zip(logits.split(rows), targets.split(rows))])
            ctx.save_for_backward(logits, targets, weights)
            ctx.fused = False
        ctx.rows = rows
        return -picked.mean() if weights is None else -(picked * weights).sum()

    @staticmethod
    def backward(ctx, grad):
        if ctx.fused:  # the gradient of a loss whose own gradient is 1, written by the forward
            (out,) = ctx.saved_tensors
            # x 1 changes nothing; any other factor (1 / grad_accum, a loss scale) rounds once more in bf16. Not in
            # place: the saved tensor must stay as saved for a second backward (retain_graph)
            return (out if grad.item() == 1.0 else out * grad), None, None
        logits, targets, weights = ctx.saved_tensors
        n, rows = logits.shape[0], ctx.rows
        out = torch.empty_like(logits)
        scale = grad / n
        for s in range(0, n, rows):
            p = torch.softmax(logits[s:s + rows], dim=-1, dtype=torch.float32)  # a new fp32 block
            p[torch.arange(p.shape[0], device=p.device), targets[s:s + rows]] -= 1.0
            out[s:s + rows] = p.mul_(scale if weights is None else grad * weights[s:s + rows, None])
        return out, None, None


def _fused_blocks(logits, targets, weights, rows):
    """(picked log-probs in fp32, d loss / d logits for a unit upstream gradient) from one softmax per block."""
    n = logits.shape[0]
    out = torch.empty_like(logits)
    picked = torch.empty(n, dtype=torch.float32)
    scale = torch.ones((), dtype=torch.float32) / n  # the same fp32 1/n the two-pass backward multiplies by
    index = torch.arange(rows)
    for s in range(0, n, rows):
        blk, t = logits[s:s + rows], targets[s:s + rows]
        r = index[:blk.shape[0]]
        p = torch.softmax(blk, dim=-1, dtype=torch.float32)
        p_t = p[r, t]
        if bool((p_t < 1e-30).any()):  # log(p) would lose its digits in the denormals, or be log(0)
            picked[s:s + rows] = torch.log_softmax(blk, dim=-1, dtype=torch.float32)[r, t]
        else:
            picked[s:s + rows] = p_t.log_()
        p[r, t] -= 1.0
        torch.mul(p, scale if weights is None else weights[s:s + rows, None], out=out[s:s + rows])
    return picked, out


def cross_entropy(logits, targets, weights=None):
    """Mean cross-entropy of (N, V) logits (any float dtype) against (N,) integer targets, fp32 reduction; with
    (N,) float `weights` the weighted sum sum(nats * weights) (a masked mean for weights = mask / mask.sum())."""
    return _CrossEntropy.apply(logits, targets.long(), None if weights is None else weights.float())
