"""PyTorch model: causality, GQA, sliding windows, RoPE, KV cache, overfitting, checkpointing, eager == sdpa,
optimizer. tests/test_model_mlx.py mirrors this file."""
import math

import numpy as np
import pytest
import torch

from nano_core.config import ModelConfig
from nano_core.init import init_weights
from nano_torch import kernels, optim
from nano_torch.kernels import causal_mask, eager_attention
from nano_torch.model import GPT, apply_rope, banded_attention

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

from helpers import GPT_VARIANTS, SMALL, VARIANTS  # noqa: E402  (one table for both backends)


def make(name, attn_impl="sdpa", seed=0, **extra):
    cfg = ModelConfig(**{**SMALL, **VARIANTS[name], **extra})
    return GPT(cfg, attn_impl=attn_impl).init_weights(seed)


def tokens(B, T, V=97, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, V, (B, T)))


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_changing_a_future_token_leaves_past_logits_unchanged(name, attn_impl):
    model = make(name, attn_impl)
    x = tokens(2, 24)
    y = x.clone()
    y[:, 13] = (y[:, 13] + 1) % 97
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :13], b[:, :13], rtol=0, atol=1e-6)
    assert (a[:, 13] - b[:, 13]).abs().max() > 1e-4  # the changed token itself does matter


@pytest.mark.parametrize("name", GPT_VARIANTS)
def test_eager_and_sdpa_attention_give_the_same_logits(name):
    x = tokens(2, 24)
    with torch.no_grad():
        torch.testing.assert_close(make(name, "eager")(x), make(name, "sdpa")(x), rtol=1e-5, atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = make("rope-swiglu-gqa")
    cfg = gqa.cfg
    mha = GPT(ModelConfig(**{**cfg.to_dict(), "n_kv_head": None}))
    w = gqa.to_numpy()
    rep, hd = cfg.n_head // cfg.kv_heads, cfg.head_dim
    for i in range(cfg.n_layer):
        for p in ("wk", "wv"):
            k = f"h.{i}.attn.{p}.weight"
            w[k] = np.repeat(w[k].reshape(cfg.kv_heads, hd, -1), rep, axis=0).reshape(cfg.n_head * hd, -1)
    mha.load_numpy(w)
    x = tokens(2, 24)
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T,w,heads", [(23, 5, (4, 2)), (24, 8, (4, 4)), (7, 3, (2, 1)), (16, 16, (2, 2))])
def test_banded_sliding_window_equals_full_attention_with_the_band_mask(T, w, heads):
    g = torch.Generator().manual_seed(0)
    H, Hkv = heads
    q, k, v = (torch.randn(2, h, T, 8, generator=g) for h in (H, Hkv, Hkv))
    pos = torch.arange(T)
    ref = eager_attention(q, k, v, 0.3, causal_mask(pos, pos, w), 0.0)
    torch.testing.assert_close(banded_attention(q, k, v, 0.3, w, 0.0), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T,heads", [(128, (4, 4)), (131, (4, 2)), (200, (2, 1)), (127, (2, 2))])
def test_eager_causal_in_query_halves_equals_one_fully_masked_matrix_in_values_and_grads(T, heads):
    from nano_torch.kernels import eager_causal
    g = torch.Generator().manual_seed(0)
    H, Hkv = heads
    qkv = [torch.randn(2, h, T, 8, generator=g) for h in (H, Hkv, Hkv)]
    pos = torch.arange(T)
    outs, grads = [], []
    for fn in (lambda q, k, v: eager_causal(q, k, v, 0.3, 0.0),
               lambda q, k, v: eager_attention(q, k, v, 0.3, causal_mask(pos, pos, None), 0.0)):
        leaves = [t.clone().requires_grad_() for t in qkv]
        out = fn(*leaves)
        out.square().sum().backward()
        outs.append(out)
        grads.append([t.grad for t in leaves])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_window_at_least_as_long_as_the_sequence_equals_full_attention():
    x = tokens(2, 24)
    with torch.no_grad():
        torch.testing.assert_close(make("learned-gelu", window=24)(x), make("learned-gelu")(x), rtol=0, atol=0)
        assert (make("learned-gelu", window=4)(x) - make("learned-gelu")(x)).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["rope-swiglu-gqa", "rope-partial-yarn", "rope-ntk"])
def test_rope_scores_depend_only_on_relative_position(name):
    model = make(name)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, model.cfg.head_dim, generator=g), torch.randn(1, 1, 1, model.cfg.head_dim, generator=g)

    def score(m, n):
        def cs(p):
            return model.rope_cos[p:p + 1], model.rope_sin[p:p + 1]

        return (apply_rope(q, *cs(m)) * apply_rope(k, *cs(n))).sum()

    for shift in (1, 5, 11):
        torch.testing.assert_close(score(7, 3), score(7 + shift, 3 + shift), rtol=1e-5, atol=1e-6)
    assert abs(score(7, 3) - score(7, 5)) > 1e-4


@pytest.mark.parametrize("name", list(VARIANTS))
def test_kv_cache_incremental_logits_equal_a_full_forward(name):
    model = make(name, window=None) if "sliding" not in name else make(name)
    x = tokens(2, 20)
    with torch.no_grad():
        full = model(x)
        cache = model.make_cache(2, 24)
        parts = [model(x[:, :7], cache=cache), model(x[:, 7:10], cache=cache)]
        parts += [model(x[:, t:t + 1], cache=cache) for t in range(10, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.pos == 20


@pytest.mark.parametrize("name", ["sinusoidal-x-sqrt-d", "rnn-emb-scale"])
def test_emb_scale_multiplies_the_embedding_lookup_and_not_a_tied_head(name):
    x = tokens(2, 24)
    s = make(name).cfg.emb_scale
    untied = make(name, tie_embeddings=False)
    w = untied.to_numpy()
    plain = GPT(ModelConfig(**{**untied.cfg.to_dict(), "emb_scale": 1.0}))
    plain.load_numpy({**w, "wte.weight": w["wte.weight"] * s})
    tied = make(name)
    wt = tied.to_numpy()
    # tied with emb_scale=s == untied, unscaled, with the lookup table x s and the head the unscaled weight
    two = GPT(ModelConfig(**{**tied.cfg.to_dict(), "emb_scale": 1.0, "tie_embeddings": False}))
    two.load_numpy({**wt, "wte.weight": wt["wte.weight"] * s, "lm_head.weight": wt["wte.weight"]})
    naive = GPT(ModelConfig(**{**tied.cfg.to_dict(), "emb_scale": 1.0}))
    naive.load_numpy({**wt, "wte.weight": wt["wte.weight"] * s})  # would scale the tied head too
    with torch.no_grad():
        torch.testing.assert_close(untied(x), plain(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tied(x), two(x), rtol=1e-5, atol=1e-5)
        assert (tied(x) - naive(x)).abs().max() > 1e-2
        assert (tied(x) - make(name, emb_scale=1.0)(x)).abs().max() > 1e-3  # the scale does change the model


def test_rope_cache_can_grow_past_the_training_context():
    model = make("rope-partial-yarn")
    x = tokens(1, 40)
    with torch.no_grad():
        cache = model.make_cache(1, 40)
        full = model(x)  # the tables were extended by make_cache
        inc = torch.cat([model(x[:, :30], cache=cache), model(x[:, 30:], cache=cache)], dim=1)
    torch.testing.assert_close(inc, full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the learned position table"):
        make("learned-gelu").make_cache(1, 100)


@pytest.mark.parametrize("name", ["rope-swiglu-gqa", "rnn-tanh"])
def test_tiny_model_overfits_one_batch_of_real_text(name, shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[:2 * 33]
    batch = torch.tensor(list(text), dtype=torch.long).view(2, 33)
    model = make(name, vocab_size=256, seq_len=32)
    opt = optim.build_optimizer(model, lr=1e-2, weight_decay=0.0)
    first = model.loss(batch[:, :-1], batch[:, 1:]).item()
    for _ in range(100):
        loss = model.loss(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm_(model, 1.0)
        opt.step()
    assert first > 5.0 and loss.item() < 0.5


def test_sinusoidal_positions_train_only_with_the_embeddings_scaled(shared_data):
    """docs/studies.md, the 44M reproduction: the fixed table (RMS 0.71) added to std-0.02 token embeddings drowns
    them and the model stays near the unigram loss (3.32 nats here); x sqrt(d) it learns (2.57 after 200 steps;
    with seeds 0-3 for init and batches the two are 0.70-0.76 nats apart)."""
    text = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[:200_000]
    data = torch.tensor(list(text), dtype=torch.long)
    train, val = data[:-20_000], data[-20_000:]
    T, B = 64, 8

    def windows(src, rng):
        ix = rng.integers(0, len(src) - T - 1, B)
        x = torch.stack([src[i:i + T + 1] for i in ix])
        return x[:, :-1], x[:, 1:]

    def val_loss(scale):
        model = GPT(ModelConfig(vocab_size=256, n_layer=2, n_head=2, n_embd=64, seq_len=T, mlp="relu",
                                pos="sinusoidal", emb_scale=scale)).init_weights(0)
        opt = optim.build_optimizer(model, lr=1e-2, weight_decay=0.0)
        rng = np.random.default_rng(0)
        for _ in range(200):
            loss = model.loss(*windows(train, rng))
            opt.zero_grad()
            loss.backward()
            opt.step()
        vrng = np.random.default_rng(123)
        with torch.no_grad():
            return float(np.mean([model.loss(*windows(val, vrng)).item() for _ in range(4)]))

    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: 2 threads on a busy 2-core machine took 60 s instead of 3 (test_muon.py)
    try:
        losses = {scale: val_loss(scale) for scale in (1.0, 8.0)}
    finally:
        torch.set_num_threads(saved)
    assert losses[8.0] < losses[1.0] - 0.3, losses


@pytest.mark.parametrize("name", ["learned-gelu", "sliding-SL-rope-gqa"])
def test_grad_checkpointing_gives_the_same_grads(name):
    x = tokens(2, 24)

    def grads(ckpt):
        model = make(name)
        model.grad_checkpoint = ckpt
        model.loss(x, x.roll(-1, 1)).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    a, b = grads(False), grads(True)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-7)


def test_dropout_is_active_in_train_mode_only():
    model = make("learned-gelu", dropout_emb=0.1, dropout_attn=0.1, dropout_resid=0.1)
    x = tokens(2, 24)
    with torch.no_grad():
        assert (model(x) - model(x)).abs().max() > 1e-4
        model.eval()
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_numpy_round_trip_and_clear_errors_on_mismatched_weights():
    model = make("rope-swiglu-gqa")
    w = model.to_numpy()
    assert list(w) == list(model.cfg.param_shapes())
    assert all(np.array_equal(w[k], v) for k, v in init_weights(model.cfg, 0).items())
    with pytest.raises(ValueError, match="missing"):
        model.load_numpy({k: v for k, v in w.items() if k != "ln_f.weight"})
    with pytest.raises(ValueError, match=r"wte.weight: shape \(3, 3\) in the weights"):
        model.load_numpy({**w, "wte.weight": np.zeros((3, 3), np.float32)})


def test_bf16_autocast_runs_and_stays_close_to_fp32():
    model = make("rope-swiglu-gqa")
    x = tokens(2, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert low.dtype == torch.float32
    assert (low - model(x)).abs().max() < 0.1


def test_adamw_decays_only_matrices_and_state_round_trips():
    x = tokens(2, 24)

    def step(model, opt):
        opt.zero_grad()
        model.loss(x, x.roll(-1, 1)).backward()
        norm = optim.clip_grad_norm_(model, 0.1)
        opt.step()
        return norm

    a = make("learned-gelu")
    opt_a = optim.build_optimizer(a, lr=1e-2, weight_decay=0.5)
    assert all(p.ndim >= 2 for p in opt_a.param_groups[0]["params"])
    assert all(p.ndim < 2 for p in opt_a.param_groups[1]["params"]) and opt_a.param_groups[1]["weight_decay"] == 0
    assert step(a, opt_a) > 0.1  # clipping was active
    state = optim.optimizer_state_numpy(opt_a, a)
    assert int(state["step"]) == 1 and "wte.weight.exp_avg_sq" in state
    b = GPT(a.cfg).load_numpy(a.to_numpy())
    opt_b = optim.build_optimizer(b, lr=1e-2, weight_decay=0.5)
    optim.load_optimizer_state_numpy(opt_b, b, state)
    step(a, opt_a)
    step(b, opt_b)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    optim.set_lr(opt_b, 0.5)
    assert all(g["lr"] == 0.5 for g in opt_b.param_groups)


# ----------------------------------------------------------------------------- the fp32 CPU GEMM path (torch only)
def test_fp32_linear_takes_the_onednn_path_on_avx512_x86():
    import platform

    x = torch.randn(3, 5, 16, requires_grad=True)
    y = kernels.linear(x, torch.randn(8, 16, requires_grad=True))
    wanted = platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() == "AVX512"
    # CI runs on an AVX-512 x86-64 CPU: there the fast path must really be taken, not silently fall back to F.linear
    assert kernels.ONEDNN_FP32 == wanted
    assert (type(y.grad_fn).__name__ == "_OneDNNLinearBackward") == wanted


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 7, 24), (5, 24), (1, 1, 24)])
def test_onednn_linear_values_and_all_three_grads_equal_f_linear(shape, bias):
    from nano_torch.kernels import _OneDNNLinear
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(40, 24, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    grad = torch.randn(*shape[:-1], 40, generator=g)
    results = []
    for fn in (_OneDNNLinear.apply, torch.nn.functional.linear):
        leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
        out = fn(leaves[0], leaves[1], leaves[2] if bias else None)
        out.backward(grad)
        results.append([out] + [t.grad for t in leaves])
    for ours, ref in zip(*results):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_onednn_path_gives_the_same_loss_and_grads_as_the_mkl_path(monkeypatch):
    x = tokens(2, 24)
    losses, grads = [], []
    for flag in (True, False):
        monkeypatch.setattr(kernels, "ONEDNN_FP32", flag)  # read by kernels.linear at every call
        model = make("learned-gelu")
        loss = model.loss(x[:, :-1], x[:, 1:])
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_autocast_bypasses_the_fp32_path_and_computes_in_bf16():
    from nano_torch.kernels import linear
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = linear(torch.randn(4, 8), torch.randn(3, 8))
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blockwise_cross_entropy_equals_fp32_f_cross_entropy_in_value_and_gradient(dtype):
    from nano_torch.kernels import cross_entropy
    g = torch.Generator().manual_seed(0)
    # 2500 rows of V=1000: blocks of 1048 rows, the last one partial
    logits = (torch.randn(2500, 1000, generator=g) * 3).to(dtype)
    targets = torch.randint(0, 1000, (2500,), generator=g)
    ours = logits.clone().requires_grad_()
    ref = logits.float().requires_grad_()
    loss = cross_entropy(ours, targets)
    expected = torch.nn.functional.cross_entropy(ref, targets)
    (2.0 * loss).backward()
    (2.0 * expected).backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert ours.grad.dtype == dtype
    rtol = 1e-5 if dtype == torch.float32 else 2 ** -8  # bf16: the rounding of the gradient itself (8 bits)
    torch.testing.assert_close(ours.grad.float(), ref.grad, rtol=rtol, atol=1e-9)


def _ce_loss_and_grad(logits, targets, weights=None, upstream=1.0):
    from nano_torch.kernels import cross_entropy
    x = logits.clone().requires_grad_()
    loss = cross_entropy(x, targets, weights)
    (upstream * loss).backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighted", [False, True])
def test_cpu_one_pass_cross_entropy_writes_the_two_pass_gradient_bit_for_bit(dtype, weighted, monkeypatch):
    # the CPU computes loss and gradient in the forward (one softmax per block); accelerators run the two passes
    # (kernels: the module, imported at the top)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2500, 1000, generator=g) * 3).to(dtype)
    targets = torch.randint(0, 1000, (2500,), generator=g)
    weights = torch.rand(2500, generator=g) / 2500 if weighted else None
    fused = _ce_loss_and_grad(logits, targets, weights)
    monkeypatch.setattr(kernels, "FUSED_CE", False)
    two_pass = _ce_loss_and_grad(logits, targets, weights)
    assert torch.equal(fused[1], two_pass[1])
    assert fused[0].item() == pytest.approx(two_pass[0].item(), rel=1e-6)  # log p[t] against log_softmax[t]


@pytest.mark.parametrize("upstream", [0.5, 3.0])
def test_cpu_one_pass_cross_entropy_scales_by_the_upstream_gradient(upstream, monkeypatch):
    # grad accumulation divides the loss by the number of micro-batches; fp16's GradScaler multiplies it
    # (kernels: the module, imported at the top)
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(700, 300, generator=g) * 3).bfloat16()
    targets = torch.randint(0, 300, (700,), generator=g)
    fused = _ce_loss_and_grad(logits, targets, upstream=upstream)[1]
    monkeypatch.setattr(kernels, "FUSED_CE", False)
    two_pass = _ce_loss_and_grad(logits, targets, upstream=upstream)[1]
    # one more bf16 rounding: at most one unit in the last place (2^-7 of the value at the bottom of a binade)
    torch.testing.assert_close(fused.float(), two_pass.float(), rtol=2 ** -7, atol=0)
    if upstream == 0.5:  # a power of two scales exactly
        assert torch.equal(fused, two_pass)


def test_cpu_one_pass_cross_entropy_backward_twice_gives_the_same_gradient_twice():
    # retain_graph: the gradient saved by the forward must not be scaled in place by the first backward
    from nano_torch.kernels import cross_entropy
    x = (torch.randn(300, 50, generator=torch.Generator().manual_seed(3)) * 3).requires_grad_()
    loss = cross_entropy(x, torch.arange(300) % 50)
    (3.0 * loss).backward(retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    (3.0 * loss).backward()
    assert torch.equal(x.grad, first)


def test_cpu_one_pass_cross_entropy_keeps_an_exact_loss_when_the_target_probability_underflows():
    # p[target] = exp(-200) is 0 in fp32: log(p) would be -inf; the block falls back to log_softmax
    logits = torch.zeros(4, 50)
    targets = torch.tensor([0, 1, 2, 3])
    logits[0, 0] = -200.0
    loss, grad = _ce_loss_and_grad(logits, targets)
    expected = torch.nn.functional.cross_entropy(logits, targets)
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    ref = logits.clone().requires_grad_()
    torch.nn.functional.cross_entropy(ref, targets).backward()
    torch.testing.assert_close(grad, ref.grad, rtol=1e-5, atol=1e-9)


def test_cpu_bf16_softmax_is_the_fp32_softmax_rounded_to_bf16():
    # eager_attention relies on this to run its softmax in bf16 on CPU: if a PyTorch release changes the kernel's
    # accumulation, this fails instead of the bf16 loss curve drifting silently.
    scores = (torch.randn(4, 3, 64, 256, generator=torch.Generator().manual_seed(0)) * 4).bfloat16()
    scores[..., 200:] = float("-inf")  # masked keys, as in causal attention
    expected = torch.softmax(scores.float(), dim=-1).bfloat16()
    assert torch.equal(torch.softmax(scores, dim=-1), expected)


def test_torch_compile_of_the_loss_matches_eager_in_loss_and_grads():
    # --compile runs the fp32 oneDNN linear as an opaque custom op inside an inductor graph (inductor's own lowering
    # of the oneDNN op would fail on trainable weights): this is the end-to-end check of that path.
    x = tokens(2, 17)
    results = []
    for compiled in (False, True):
        model = make("learned-gelu")
        loss_fn = torch.compile(model.loss) if compiled else model.loss
        loss = loss_fn(x[:, :-1], x[:, 1:])
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in model.named_parameters()}))
    torch._dynamo.reset()
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6)
