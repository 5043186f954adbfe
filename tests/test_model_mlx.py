"""MLX model: causality, GQA, sliding windows, RoPE, KV cache, overfitting, checkpointing, eager == sdpa,
optimizer. Mirrors tests/test_model_torch.py."""
import os

os.environ.setdefault("MLX_ENABLE_TF32", "0")

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from nano_core.config import ModelConfig
from nano_core.init import init_weights
from nano_mlx import optim
from nano_mlx.kernels import causal_mask, eager_attention
from nano_mlx.model import GPT, apply_rope, banded_attention

mx.set_default_device(mx.cpu)

from helpers import GPT_VARIANTS, SMALL, VARIANTS  # noqa: E402  (one table for both backends)


def make(name, attn_impl="sdpa", seed=0, **extra):
    cfg = ModelConfig(**{**SMALL, **VARIANTS[name], **extra})
    return GPT(cfg, attn_impl=attn_impl).init_weights(seed)


def tokens(B, T, V=97, seed=0):
    return mx.array(np.random.default_rng(seed).integers(0, V, (B, T)).astype(np.int32))


def assert_close(a, b, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=rtol, atol=atol)


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_changing_a_future_token_leaves_past_logits_unchanged(name, attn_impl):
    model = make(name, attn_impl)
    x = np.array(tokens(2, 24))
    y = x.copy()
    y[:, 13] = (y[:, 13] + 1) % 97
    a, b = model(mx.array(x)), model(mx.array(y))
    assert_close(a[:, :13], b[:, :13], rtol=0, atol=1e-6)
    assert mx.abs(a[:, 13] - b[:, 13]).max().item() > 1e-4  # the changed token itself does matter


@pytest.mark.parametrize("name", GPT_VARIANTS)
def test_eager_and_sdpa_attention_give_the_same_logits(name):
    x = tokens(2, 24)
    assert_close(make(name, "eager")(x), make(name, "sdpa")(x))


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
    assert_close(gqa(x), mha(x))


@pytest.mark.parametrize("T,w,heads", [(23, 5, (4, 2)), (24, 8, (4, 4)), (7, 3, (2, 1)), (16, 16, (2, 2))])
def test_banded_sliding_window_equals_full_attention_with_the_band_mask(T, w, heads):
    key = mx.random.key(0)
    H, Hkv = heads
    q, k, v = (mx.random.normal((2, h, T, 8), key=kk) for h, kk in zip((H, Hkv, Hkv), mx.random.split(key, 3)))
    pos = mx.arange(T)
    ref = eager_attention(q, k, v, 0.3, causal_mask(pos, pos, w), 0.0)
    assert_close(banded_attention(q, k, v, 0.3, w, 0.0), ref, rtol=1e-5, atol=1e-6)


def test_window_at_least_as_long_as_the_sequence_equals_full_attention():
    x = tokens(2, 24)
    assert_close(make("learned-gelu", window=24)(x), make("learned-gelu")(x), rtol=0, atol=0)
    assert mx.abs(make("learned-gelu", window=4)(x) - make("learned-gelu")(x)).max().item() > 1e-4


@pytest.mark.parametrize("name", ["rope-swiglu-gqa", "rope-partial-yarn", "rope-ntk"])
def test_rope_scores_depend_only_on_relative_position(name):
    model = make(name)
    k1, k2 = mx.random.split(mx.random.key(0))
    shape = (1, 1, 1, model.cfg.head_dim)
    q, k = mx.random.normal(shape, key=k1), mx.random.normal(shape, key=k2)

    def score(m, n):
        def cs(p):
            return model._rope_cos[p:p + 1], model._rope_sin[p:p + 1]

        return (apply_rope(q, *cs(m)) * apply_rope(k, *cs(n))).sum().item()

    for shift in (1, 5, 11):
        assert abs(score(7, 3) - score(7 + shift, 3 + shift)) < 1e-5
    assert abs(score(7, 3) - score(7, 5)) > 1e-4


@pytest.mark.parametrize("name", list(VARIANTS))
def test_kv_cache_incremental_logits_equal_a_full_forward(name):
    model = make(name, window=None) if "sliding" not in name else make(name)
    x = tokens(2, 20)
    full = model(x)
    cache = model.make_cache(2, 24)
    parts = [model(x[:, :7], cache=cache), model(x[:, 7:10], cache=cache)]
    parts += [model(x[:, t:t + 1], cache=cache) for t in range(10, 20)]
    assert_close(mx.concatenate(parts, axis=1), full)
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
    assert_close(untied(x), plain(x))
    assert_close(tied(x), two(x))
    assert mx.abs(tied(x) - naive(x)).max().item() > 1e-2
    assert mx.abs(tied(x) - make(name, emb_scale=1.0)(x)).max().item() > 1e-3  # the scale does change the model


def test_rope_cache_can_grow_past_the_training_context():
    model = make("rope-partial-yarn")
    x = tokens(1, 40)
    cache = model.make_cache(1, 40)
    full = model(x)  # the tables were extended by make_cache
    inc = mx.concatenate([model(x[:, :30], cache=cache), model(x[:, 30:], cache=cache)], axis=1)
    assert_close(inc, full)
    with pytest.raises(ValueError, match="exceeds the learned position table"):
        make("learned-gelu").make_cache(1, 100)


@pytest.mark.parametrize("name", ["rope-swiglu-gqa", "rnn-tanh"])
def test_tiny_model_overfits_one_batch_of_real_text(name, shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[:2 * 33]
    batch = mx.array(np.frombuffer(text, dtype=np.uint8).astype(np.int32).reshape(2, 33))
    model = make(name, vocab_size=256, seq_len=32)
    opt = optim.build_optimizer(model, lr=1e-2, weight_decay=0.0)
    loss_and_grad = nn.value_and_grad(model, model.loss)
    first = model.loss(batch[:, :-1], batch[:, 1:]).item()
    for _ in range(100):
        loss, grads = loss_and_grad(batch[:, :-1], batch[:, 1:])
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
    assert first > 5.0 and loss.item() < 0.5


@pytest.mark.parametrize("name", ["learned-gelu", "sliding-SL-rope-gqa"])
def test_grad_checkpointing_gives_the_same_grads(name):
    x = tokens(2, 24)

    def grads(ckpt):
        model = make(name)
        model.grad_checkpoint = ckpt
        _, g = nn.value_and_grad(model, model.loss)(x, mx.roll(x, -1, 1))
        return dict(tree_flatten(g))

    a, b = grads(False), grads(True)
    for n in a:
        assert_close(a[n], b[n], rtol=1e-5, atol=1e-7)


def test_dropout_is_active_in_train_mode_only():
    model = make("learned-gelu", dropout_emb=0.1, dropout_attn=0.1, dropout_resid=0.1)
    x = tokens(2, 24)
    assert mx.abs(model(x) - model(x)).max().item() > 1e-4
    model.eval()
    assert_close(model(x), model(x), rtol=0, atol=0)


def test_numpy_round_trip_and_clear_errors_on_mismatched_weights():
    model = make("rope-swiglu-gqa")
    w = model.to_numpy()
    assert sorted(w) == sorted(model.cfg.param_shapes())
    assert all(np.array_equal(w[k], v) for k, v in init_weights(model.cfg, 0).items())
    with pytest.raises(ValueError, match="missing"):
        model.load_numpy({k: v for k, v in w.items() if k != "ln_f.weight"})
    with pytest.raises(ValueError, match=r"wte.weight: shape \(3, 3\) in the weights"):
        model.load_numpy({**w, "wte.weight": np.zeros((3, 3), np.float32)})


def test_adamw_decays_only_matrices_and_state_round_trips():
    x = tokens(2, 24)

    def step(model, opt):
        _, g = nn.value_and_grad(model, model.loss)(x, mx.roll(x, -1, 1))
        g, norm = optim.clip_grad_norm(g, 0.1)
        opt.update(model, g)
        mx.eval(model.parameters(), opt.state)
        return norm.item()

    a = make("learned-gelu")
    opt_a = optim.build_optimizer(a, lr=1e-2, weight_decay=0.5)
    before = a.to_numpy()
    # zero gradients: the Adam update is 0, only the weight decay moves a parameter
    zero_grads = tree_unflatten([(k, mx.zeros_like(v)) for k, v in tree_flatten(a.trainable_parameters())])
    after = {k: np.array(v) for k, v in tree_flatten(opt_a.apply_gradients(zero_grads, a.parameters()))}
    assert np.array_equal(after["ln_f.bias"], before["ln_f.bias"])       # no decay on vectors
    assert not np.array_equal(after["wte.weight"], before["wte.weight"])  # decay on matrices
    a = make("learned-gelu")
    opt_a = optim.build_optimizer(a, lr=1e-2, weight_decay=0.5)
    assert step(a, opt_a) > 0.1  # clipping was active
    state = optim.optimizer_state_numpy(opt_a, a)
    assert int(state["step"]) == 1 and "wte.weight.exp_avg_sq" in state
    b = GPT(a.cfg).load_numpy(a.to_numpy())
    opt_b = optim.build_optimizer(b, lr=1e-2, weight_decay=0.5)
    optim.load_optimizer_state_numpy(opt_b, b, state)
    step(a, opt_a)
    step(b, opt_b)
    wa, wb = a.to_numpy(), b.to_numpy()
    for n in wa:
        np.testing.assert_array_equal(wa[n], wb[n], err_msg=n)
    optim.set_lr(opt_b, 0.5)
    assert opt_b.learning_rate.item() == 0.5 and opt_b.state["learning_rate"].item() == 0.5


# ----------------------------------------------------------------------------- MLX specifics
def test_absent_optional_modules_and_biases_are_none_and_no_parameters():
    """`x = Module(...) if cond else None`, as in the torch model: mlx.nn.Module keeps None out of its dict, so out
    of parameters(), the state mx.compile sees, update() and the numpy weights."""
    cfg = ModelConfig(**{**SMALL, "pos": "rope", "bias": False, "tie_embeddings": True})
    model = GPT(cfg).init_weights(0)
    attn, mlp = model.h[0].attn, model.h[0].mlp
    assert model.wpe is None and model.lm_head is None and mlp.gate is None and attn.q_norm is None
    assert attn.wq.bias is None and model.ln_f.bias is None
    names = {n for n, _ in tree_flatten(model.parameters())}
    assert names == {n for n, _ in tree_flatten(model.trainable_parameters())} == set(init_weights(cfg, 0))
    assert all(isinstance(v, mx.array) for _, v in tree_flatten(model.state))
    x = tokens(2, 24)
    loss_and_grad = mx.compile(nn.value_and_grad(model, model.loss), inputs=model.state, outputs=model.state)
    _, g = loss_and_grad(x, x)
    assert {n for n, _ in tree_flatten(g)} == names
    model.update(g)
    assert model.lm_head is None and attn.wq.bias is None


def test_gelu_kernel_is_the_exact_erf_gelu_in_value_and_gradient():
    from nano_mlx.kernels import gelu
    x = mx.linspace(-7.0, 7.0, 20001)
    exact = 0.5 * x * (1.0 + mx.erf(x / np.sqrt(2.0)))
    d_exact = 0.5 * (1.0 + mx.erf(x / np.sqrt(2.0))) + x * mx.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
    assert_close(gelu(x), exact, rtol=0, atol=2e-6)
    assert_close(mx.grad(lambda x: gelu(x).sum())(x), d_exact, rtol=0, atol=2e-6)


def _mlx_ce_loss_and_grad(logits, targets, weights=None, compiled=False):
    from nano_mlx.kernels import cross_entropy
    f = mx.value_and_grad(lambda x: cross_entropy(x, targets, weights))
    loss, grad = (mx.compile(f) if compiled else f)(logits)
    mx.eval(loss, grad)
    return loss, grad


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_cpu_one_exp_cross_entropy_gives_mlx_own_loss_and_gradient(dtype, weighted, compiled, monkeypatch):
    # On the CPU the backward reuses the forward's exponentials; a GPU runs MLX's own differentiation of logsumexp.
    from nano_mlx import kernels
    assert mx.default_device() == mx.cpu  # the path under test is the CPU's
    mx.random.seed(1)
    logits = (mx.random.normal((2500, 1000)) * 3).astype(dtype)
    targets = mx.random.randint(0, 1000, (2500,))
    weights = mx.random.uniform(shape=(2500,)) / 2500 if weighted else None
    one_exp = _mlx_ce_loss_and_grad(logits, targets, weights, compiled)
    monkeypatch.setattr(kernels, "FUSED_CE", False)
    plain = _mlx_ce_loss_and_grad(logits, targets, weights, compiled)
    assert one_exp[0].item() == plain[0].item()  # the same forward formula
    assert one_exp[1].dtype == dtype
    # p = e / s against MLX's exp(x - logsumexp): the same value to fp32 rounding, then rounded to the logits' dtype
    rtol = 1e-6 if dtype == mx.float32 else 2 ** -7
    assert_close(one_exp[1].astype(mx.float32), plain[1].astype(mx.float32), rtol=rtol, atol=1e-11)


def test_one_exp_cross_entropy_is_the_cpu_path_only(monkeypatch):
    # A GPU keeps MLX's own backward (exp is cheap there and the kept exponentials would cost N x V memory):
    # simulated by reporting the GPU as the default device, with the one-pass function made to fail if called.
    from nano_mlx import kernels

    def refuse(*args):
        raise AssertionError("the one-exp loss ran on a GPU")

    logits, targets = mx.random.normal((8, 16)), mx.arange(8)
    monkeypatch.setattr(kernels, "_nats_one_pass", refuse)
    monkeypatch.setattr(kernels.mx, "default_device", lambda: mx.gpu)
    loss_gpu_path = kernels.cross_entropy(logits, targets)
    monkeypatch.setattr(kernels.mx, "default_device", lambda: mx.cpu)
    with pytest.raises(AssertionError, match="ran on a GPU"):
        kernels.cross_entropy(logits, targets)
    assert loss_gpu_path.item() == pytest.approx(float(nn.losses.cross_entropy(logits, targets).mean()), rel=1e-6)
