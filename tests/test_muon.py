"""Muon (nano_core/muon.py, nano_torch/optim.py, nano_mlx/optim.py): the Newton-Schulz orthogonalisation does what it
claims, both backends compute the update of the numpy reference and of torch.optim.Muon, take the same training
steps (<= 1e-5 relative in the loss over 10 steps), carry their state across to each other, and refuse a state of
the other optimizer in one line; AdamW stays what it was. CPU, fp32, tiny models, real text."""
import os

os.environ.setdefault("MLX_ENABLE_TF32", "0")  # before mlx is imported (irrelevant on CPU, but parity is the point)

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import one_torch_thread  # noqa: F401 (autouse: one torch thread for this module)
from helpers import BACKEND_CFG as CFG
from helpers import backend_class, one_line_error, orthogonal_pair, real_batch

import nano_mlx.optim as mlx_optim
import nano_torch.optim as torch_optim
from nano_core import muon
from nano_core.config import ModelConfig
from nano_core.init import init_weights
from nano_core.lora import LoraConfig

OPTIM = {"torch": torch_optim, "mlx": mlx_optim}
LR, MUON_LR = 1e-3, 0.02



@pytest.fixture(params=["torch", "mlx"])
def name(request):
    return request.param


def backend(name: str, compile: bool | None = None):
    return backend_class(name)(device="cpu", dtype="fp32", compile=compile)


def fresh(b, optimizer="muon", cfg=None, weights=None, **kw):
    cfg = cfg or ModelConfig.from_dict(CFG)
    model = b.build_model(cfg, init_weights(cfg, 0) if weights is None else weights)
    return model, OPTIM[b.name].build_optimizer(model, LR, (0.9, 0.95), 1e-8, 0.1, optimizer=optimizer,
                                                 muon_lr=MUON_LR, **kw)


def schedule(i: int) -> float:
    return LR * min(1.0, (i + 1) / 4)  # a warm-up: the lr changes every step for the first four


def batch(shared_data, i: int) -> np.ndarray:
    return real_batch(shared_data, offset=i * 4000)


def close(a: dict, b: dict, rtol=1e-4, atol=1e-5):
    """test_backend's tolerance for weights after a few steps. (Atol matters for AdamW's attn.wk.bias: its true
    gradient is zero -- a key bias shifts every score of a query alike -- so Adam normalises fp32 noise there.)"""
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


# ----------------------------------------------------------------------------- which parameters, which errors
def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    shapes = ModelConfig.from_dict({**CFG, "tie_embeddings": False, "pos": "learned", "mlp": "swiglu"}).param_shapes()
    hidden, rest = muon.split_params(shapes)
    assert set(hidden) == {f"h.{i}.{m}.weight" for i in range(2)
                           for m in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.fc", "mlp.gate", "mlp.proj")}
    assert {"wte.weight", "wpe.weight", "lm_head.weight", "ln_f.weight", "h.0.ln_1.weight"} <= set(rest)
    assert all(len(shapes[n]) == 1 for n in rest if n not in ("wte.weight", "wpe.weight", "lm_head.weight"))
    rnn = ModelConfig.from_dict({**CFG, "arch": "rnn", "pos": "none"}).param_shapes()
    assert muon.split_params(rnn)[0] == ["rnn.0.w_ih.weight", "rnn.0.w_hh.weight", "rnn.1.w_ih.weight",
                                         "rnn.1.w_hh.weight"]
    assert not muon.is_muon_param("h.0.attn.wq.lora_a", (4, 32))
    assert muon.lr_scale((128, 32)) == 2.0 and muon.lr_scale((32, 128)) == 1.0  # the MLP's fc vs its proj


def test_each_backend_splits_the_model_as_the_spec_says_and_refuses_bad_arguments_in_one_line(name):
    b = backend(name)
    model, opt = fresh(b)
    hidden, rest = muon.split_params(ModelConfig.from_dict(CFG).param_shapes())
    state = b.optimizer_state(opt, model)
    assert set(state) == {f"{n}.momentum" for n in hidden} | {f"{n}.exp_avg" for n in rest} | \
        {f"{n}.exp_avg_sq" for n in rest} | {"step"}
    build = OPTIM[name].build_optimizer
    one_line_error(lambda: build(model, LR, optimizer="sgd"), "unknown optimizer 'sgd'")
    one_line_error(lambda: build(model, 0.0, optimizer="muon"), "peak lr > 0")
    one_line_error(lambda: build(model, LR, optimizer="muon", muon_momentum=1.0), "muon_momentum")
    cfg = ModelConfig.from_dict(CFG)
    lora = b.build_model(cfg, init_weights(cfg, 0), lora=LoraConfig(rank=4))
    one_line_error(lambda: build(lora, LR, optimizer="muon"), "LoRA")


def test_set_lr_drives_both_parts_from_one_schedule(name):
    _, opt = fresh(backend(name))
    OPTIM[name].set_lr(opt, LR / 4)
    if name == "torch":
        lrs = [g["lr"] for g in opt.muon.param_groups] + [g["lr"] for g in opt.adamw.param_groups]
    else:
        lrs = [opt.muon.learning_rate.item(), opt.adamw.learning_rate.item()]
    assert lrs == pytest.approx([MUON_LR / 4] + [LR / 4] * (len(lrs) - 1))


# ----------------------------------------------------------------------------- Newton-Schulz
def test_the_quintic_puts_every_singular_value_above_the_threshold_into_its_band():
    x = np.linspace(muon.NS_BAND_FROM, 1.0, 200_001)
    y = muon.ns_polynomial(x)
    assert muon.NS_BAND[0] <= y.min() and y.max() <= muon.NS_BAND[1]
    assert y.min() < 0.69 and y.max() > 1.2  # the band is tight: the quintic trades convergence for slope at 0
    assert muon.ns_polynomial(muon.NS_BAND_FROM / 2) < 0.5  # below the threshold 5 steps are not enough


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (96, 96), (200, 40)])
def test_newton_schulz_of_a_random_matrix_has_singular_values_near_one(shape):
    G = np.random.default_rng(0).standard_normal(shape) * 1e-3  # the scale is normalised away
    s = np.linalg.svd(muon.newton_schulz(G), compute_uv=False)
    if shape[0] == shape[1]:  # a random square matrix has singular values near 0: those stay small
        s = s[np.linalg.svd(G, compute_uv=False) / np.linalg.norm(G) >= muon.NS_BAND_FROM]
    assert len(s) >= 0.9 * min(shape)
    assert muon.NS_BAND[0] <= s.min() and s.max() <= muon.NS_BAND[1]


@pytest.mark.parametrize("shape", [(48, 96), (96, 48)])
@pytest.mark.parametrize("cond", [1e1, 1e2, 1e4])
def test_newton_schulz_keeps_the_singular_vectors_and_maps_each_singular_value_by_the_quintic(shape, cond):
    """G = U diag(s) V^T with singular values spread over `cond`: NS(G) = U diag(p(s / ||s||)) V^T exactly (p the
    5-fold quintic), so U^T NS(G) V is diagonal and every singular value the threshold lets in lands in the band."""
    rng = np.random.default_rng(1)
    U, V = orthogonal_pair(rng, *shape)
    s = np.logspace(0, -np.log10(cond), min(shape))
    core = U.T @ muon.newton_schulz((U * s) @ V.T) @ V
    want = muon.ns_polynomial(s / np.linalg.norm(s))
    np.testing.assert_allclose(core, np.diag(want), atol=1e-10)
    kept = want[s / np.linalg.norm(s) >= muon.NS_BAND_FROM]
    assert muon.NS_BAND[0] <= kept.min() and kept.max() <= muon.NS_BAND[1]
    assert (len(kept) == len(s)) == (cond <= 1e2)  # at 1e4 the smallest directions stay below the band


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (32, 32)])
def test_newton_schulz_agrees_across_numpy_torch_and_mlx(shape):
    G = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    ref = muon.newton_schulz(G)  # float64
    got_torch = torch_optim.newton_schulz(torch.from_numpy(G)).numpy()
    got_mlx = np.array(mlx_optim.newton_schulz(mx.array(G)))
    assert got_torch.dtype == got_mlx.dtype == np.float32
    for got in (got_torch, got_mlx, muon.newton_schulz(G, dtype=np.float32)):
        np.testing.assert_allclose(got, ref, atol=2e-6)
    np.testing.assert_allclose(got_mlx, got_torch, atol=2e-6)
    assert np.all(muon.newton_schulz(np.zeros((4, 8))) == 0)  # eps: a zero gradient is a zero update, not NaN


def test_newton_schulz_matches_torch_optim_muons_bf16_iteration_to_bf16_precision():
    from torch.optim._muon import _zeropower_via_newtonschulz

    for shape in [(64, 128), (128, 64)]:
        G = torch.from_numpy(np.random.default_rng(3).standard_normal(shape).astype(np.float32))
        theirs = _zeropower_via_newtonschulz(G, muon.NS_COEFFS, muon.NS_STEPS, muon.NS_EPS).float()
        ours = torch_optim.newton_schulz(G)
        rel = float((theirs - ours).norm() / ours.norm())
        assert rel < 3e-2, rel  # bf16 has 8 bits of mantissa: ~0.4 % per rounding, compounded over 5 steps


# ----------------------------------------------------------------------------- the update
def grads_and_start(shape=(48, 32), steps=3):
    rng = np.random.default_rng(4)
    return (rng.standard_normal(shape).astype(np.float32) * 0.02,
            [rng.standard_normal(shape).astype(np.float32) * 1e-2 for _ in range(steps)])


def reference_run(p0, grads, lrs, wd=0.1, nesterov=True):
    p, buf = p0.astype(np.float64), np.zeros(p0.shape)
    for g, lr in zip(grads, lrs):
        p, buf = muon.muon_step(p, g, buf, lr, wd, muon.MOMENTUM, nesterov)
    return p, buf


@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])
@pytest.mark.parametrize("nesterov", [True, False])
def test_each_backends_muon_update_equals_the_numpy_reference(shape, nesterov):
    p0, grads = grads_and_start(shape)
    lrs = [0.02, 0.01, 0.015]
    want_p, want_buf = reference_run(p0, grads, lrs, nesterov=nesterov)

    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch_optim.Muon([p], lr=lrs[0], weight_decay=0.1, nesterov=nesterov)
    for g, lr in zip(grads, lrs):
        p.grad = torch.from_numpy(g)
        opt.param_groups[0]["lr"] = lr
        opt.step()
    got_torch = p.detach().numpy(), opt.state[p]["momentum_buffer"].numpy()

    opt = mlx_optim.Muon(learning_rate=lrs[0], weight_decay=0.1, nesterov=nesterov)
    params = {"w": mx.array(p0)}
    opt.init(params)
    for g, lr in zip(grads, lrs):
        opt.learning_rate = mx.array(lr, dtype=mx.float32)
        params = opt.apply_gradients({"w": mx.array(g)}, params)
    got_mlx = np.array(params["w"]), np.array(opt.state["w"]["momentum"])

    for got_p, got_buf in (got_torch, got_mlx):
        np.testing.assert_allclose(got_buf, want_buf, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(got_p, want_p, rtol=0, atol=1e-7)  # |p| ~ 0.02, updates ~ lr / sqrt(48)
        assert np.abs(got_p - p0).max() > 1e-3  # it did move


def test_our_torch_muon_is_torch_optim_muon_with_an_fp32_iteration(monkeypatch):
    """The outside reference: torch.optim.Muon (adjust_lr_fn 'original', decoupled decay, Nesterov, EMA momentum)
    takes the same steps as ours once its bf16 Newton-Schulz is swapped for our fp32 one, and nearly the same with
    its own bf16 iteration."""
    import torch.optim._muon as reference

    p0, grads = grads_and_start((64, 32), steps=4)

    def run(opt_class, **kw):
        p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        opt = opt_class([p], lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, **kw)
        for g in grads:
            p.grad = torch.from_numpy(g)
            opt.step()
        return p.detach().numpy().copy()

    ours = run(torch_optim.Muon)
    bf16 = run(torch.optim.Muon, adjust_lr_fn="original")
    monkeypatch.setattr(reference, "_zeropower_via_newtonschulz", lambda g, *args: torch_optim.newton_schulz(g))
    fp32 = run(torch.optim.Muon, adjust_lr_fn="original")
    np.testing.assert_allclose(ours, fp32, rtol=0, atol=1e-7)
    moved = np.abs(ours - p0).max()
    assert np.abs(bf16 - ours).max() < 0.05 * moved  # the bf16 iteration: within a few % of each step's size


def test_mlxs_builtin_muon_couples_the_decay_so_it_is_not_ours():
    """Why nano_mlx has its own Muon: mlx.optimizers.Muon adds wd * p to the gradient before the momentum and NS."""
    import mlx.optimizers as optim

    p0, grads = grads_and_start((48, 32), steps=1)
    params = {"w": mx.array(p0)}
    builtin = optim.Muon(learning_rate=0.02, momentum=0.95, weight_decay=0.0)
    ours = mlx_optim.Muon(learning_rate=0.02, momentum=0.95, weight_decay=0.0)
    for o in (builtin, ours):
        o.init(params)
    g = {"w": mx.array(grads[0])}
    np.testing.assert_allclose(np.array(builtin.apply_gradients(g, params)["w"]),
                               np.array(ours.apply_gradients(g, params)["w"]), atol=1e-6)  # no decay: the same
    builtin.weight_decay = ours.weight_decay = 0.5
    assert np.abs(np.array(builtin.apply_gradients(g, params)["w"]) -
                  np.array(ours.apply_gradients(g, params)["w"])).max() > 1e-4  # with decay: not the same


# ----------------------------------------------------------------------------- training steps
def run_steps(b, model, opt, shared_data, steps, start=0, step=None):
    step = step or b.make_train_step(model, opt, 2, 0.5, seed=0)  # accumulation, clipping
    return [b.loss_value(step(batch(shared_data, i), schedule(i), i)) for i in range(start, start + steps)]


def test_both_backends_take_the_same_muon_steps(shared_data):
    """Same init, same batches, a changing lr, 2 micro-batches, clipping: the 10 losses agree to 1e-5 relative
    (measured: ~3e-7), the weights and every momentum buffer to fp32 rounding. MLX runs its compiled step."""
    runs = {}
    for name in ("torch", "mlx"):
        b = backend(name)
        model, opt = fresh(b)
        runs[name] = run_steps(b, model, opt, shared_data, 10), b.model_weights(model), b.optimizer_state(opt, model)
    (lt, wt, st), (lm, wm, sm) = runs["torch"], runs["mlx"]
    assert backend("mlx").compile and lt[-1] < lt[0] - 0.2  # it learns
    np.testing.assert_allclose(lm, lt, rtol=1e-5)
    close(wm, wt)
    assert int(st["step"]) == int(sm["step"]) == 10
    close({k: v for k, v in sm.items() if k.endswith(".momentum")},
          {k: v for k, v in st.items() if k.endswith(".momentum")}, rtol=1e-4, atol=1e-7)


def test_mlx_compiled_step_reads_both_learning_rates_from_the_state(shared_data):
    """A learning rate baked into the trace would make the compiled run drift from the eager one as the warm-up
    changes it; they agree, so set_lr reaches Muon and AdamW through optimizer.state."""
    runs = []
    for compile in (True, False):
        b = backend("mlx", compile=compile)
        model, opt = fresh(b)
        runs.append((run_steps(b, model, opt, shared_data, 5), b.model_weights(model)))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-6)
    close(runs[0][1], runs[1][1], rtol=1e-5, atol=1e-7)


def test_adamw_is_what_it_was(shared_data):
    """optimizer='adamw' (the default) builds the same torch.optim.AdamW as before Muon, bit for bit; MLX builds the
    same AdamW class; neither state mentions Muon."""
    b = backend("torch")
    cfg = ModelConfig.from_dict(CFG)
    model, opt = fresh(b, optimizer="adamw")
    old = b.build_model(cfg, init_weights(cfg, 0))  # the builder as it was, inline
    groups = [{"params": [p for p in old.parameters() if p.ndim >= 2], "weight_decay": 0.1},
              {"params": [p for p in old.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    old_opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95), eps=1e-8, fused=True)
    assert type(opt) is torch.optim.AdamW and opt.defaults == old_opt.defaults
    assert [len(g["params"]) for g in opt.param_groups] == [len(g["params"]) for g in old_opt.param_groups]
    assert run_steps(b, model, opt, shared_data, 2) == run_steps(b, old, old_opt, shared_data, 2)
    new, was = b.model_weights(model), b.model_weights(old)
    assert all(np.array_equal(new[k], was[k]) for k in new)
    assert not any(k.endswith(".momentum") for k in b.optimizer_state(opt, model))
    m = backend("mlx")
    model, opt = fresh(m, optimizer="adamw")
    assert type(opt) is mlx_optim.AdamW
    assert not any(k.endswith(".momentum") for k in m.optimizer_state(opt, model))


# ----------------------------------------------------------------------------- state
def test_muon_state_goes_torch_to_numpy_to_mlx_and_back_and_the_run_continues(shared_data):
    """3 steps on torch; its weights and state start an MLX run (the compiled step built BEFORE the state is loaded:
    the load must write into the state the trace holds) that takes step 3 as torch does; MLX's state then starts a
    torch run that takes step 4 as MLX does."""
    tb, mb = backend("torch"), backend("mlx")
    a, a_opt = fresh(tb)
    a_step = tb.make_train_step(a, a_opt, 2, 0.5, seed=0)
    run_steps(tb, a, a_opt, shared_data, 3, step=a_step)
    state = tb.optimizer_state(a_opt, a)
    assert int(state["step"]) == 3 and all(v.dtype == np.float32 for k, v in state.items() if k != "step")

    m, m_opt = fresh(mb, weights=tb.model_weights(a))
    m_step = mb.make_train_step(m, m_opt, 2, 0.5, seed=0)
    mb.load_optimizer_state(m_opt, m, state)
    close(mb.optimizer_state(m_opt, m), state, rtol=0, atol=0)  # the numpy round trip is exact
    assert run_steps(mb, m, m_opt, shared_data, 1, start=3, step=m_step) == \
        pytest.approx(run_steps(tb, a, a_opt, shared_data, 1, start=3, step=a_step), rel=1e-5)
    close(mb.model_weights(m), tb.model_weights(a))

    state = mb.optimizer_state(m_opt, m)
    assert int(state["step"]) == 4
    t, t_opt = fresh(tb, weights=mb.model_weights(m))
    tb.load_optimizer_state(t_opt, t, state)
    close(tb.optimizer_state(t_opt, t), state, rtol=0, atol=0)
    assert run_steps(tb, t, t_opt, shared_data, 1, start=4) == \
        pytest.approx(run_steps(mb, m, m_opt, shared_data, 1, start=4, step=m_step), rel=1e-5)
    close(tb.model_weights(t), mb.model_weights(m))


def test_a_state_of_the_other_optimizer_or_model_is_refused_in_one_line(name, shared_data):
    b = backend(name)
    model, muon_opt = fresh(b)
    _, adamw_opt = fresh(b, optimizer="adamw")
    run_steps(b, model, muon_opt, shared_data, 1)
    muon_state = b.optimizer_state(muon_opt, model)
    adamw_state = b.optimizer_state(adamw_opt, model)
    one_line_error(lambda: b.load_optimizer_state(adamw_opt, model, muon_state), "saved by Muon .* uses AdamW")
    one_line_error(lambda: b.load_optimizer_state(muon_opt, model, adamw_state), "saved by AdamW .* uses Muon")
    bad = dict(muon_state, **{"h.0.mlp.fc.weight.momentum": np.zeros((3, 3), np.float32)})
    one_line_error(lambda: b.load_optimizer_state(muon_opt, model, bad), "h.0.mlp.fc.weight.momentum has shape")
    missing = {k: v for k, v in muon_state.items() if k != "h.1.attn.wo.weight.momentum"}
    one_line_error(lambda: b.load_optimizer_state(muon_opt, model, missing), "no entry for h.1.attn.wo.weight")


def test_a_stack_of_matrices_is_orthogonalised_as_each_one_alone():
    rng = np.random.default_rng(3)
    stack = rng.standard_normal((5, 64, 96)).astype(np.float32)
    together = torch_optim.newton_schulz(torch.from_numpy(stack)).numpy()
    alone = np.stack([torch_optim.newton_schulz(torch.from_numpy(m)).numpy() for m in stack])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    mlx_together = np.array(mlx_optim.newton_schulz(mx.array(stack)))
    np.testing.assert_allclose(mlx_together, alone, atol=2e-5)


@pytest.mark.parametrize("shape", [(64, 64), (256, 64), (64, 256)])
def test_a_bf16_iteration_gives_the_fp32_one_to_bf16_precision_on_both_backends(shape):
    G = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    ref = muon.newton_schulz(G.astype(np.float64))
    t = torch_optim.newton_schulz(torch.from_numpy(G), dtype=torch.bfloat16).numpy()
    m = np.array(mlx_optim.newton_schulz(mx.array(G), dtype=mx.bfloat16))
    for got in (t, m):
        assert got.dtype == np.float32  # returned in fp32 whatever it ran in
        # bf16 carries 8 bits of mantissa, and five rounds of the quintic compound them: a few percent overall
        # (5.5% measured for a square random matrix, whose smallest singular values are the most sensitive)
        assert np.linalg.norm(got - ref) < 0.08 * np.linalg.norm(ref)
        s = np.linalg.svd(got, compute_uv=False)
        assert s.min() > 0.5 and s.max() < 1.3


@pytest.mark.parametrize("name", ["torch", "mlx"])
def test_the_backend_runs_newton_schulz_in_its_compute_dtype(name, shared_data):
    for dtype, expected in (("fp32", "float32"), ("bf16", "bfloat16")):
        backend = backend_class(name)(device="cpu", dtype=dtype)
        cfg = ModelConfig.from_dict(CFG)
        model = backend.build_model(cfg, init_weights(cfg, 0))
        opt = backend.build_optimizer(model, 3e-3, optimizer="muon")
        assert str(opt.muon.ns_dtype).endswith(expected), (dtype, opt.muon.ns_dtype)
