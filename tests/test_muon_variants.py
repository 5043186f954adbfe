"""Muon's opt-in variants (nano_core/muon.py: Polar Express, NorMuon, cautious weight decay, momentum warm-up): the
numpy reference does what each one claims, both backends take the reference's steps for each variant and all four
together (<= 1e-5 relative, fp32), a NorMuon state moves between backends and is refused in one line by a run of the
other setting, the flags parse and are refused without Muon, and a short training run with all four finishes on
both backends (and resumes bit for bit). CPU, fp32, tiny models."""
import os

os.environ.setdefault("MLX_ENABLE_TF32", "0")  # before mlx is imported (irrelevant on CPU, but parity is the point)

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import one_torch_thread  # noqa: F401 (autouse: one torch thread for this module)
from helpers import BACKEND_CFG as CFG
from helpers import backend_class, losses, micro_setup, one_line_error, orthogonal_pair, real_batch, train_args
from helpers import train_main

import nano_mlx.optim as mlx_optim
import nano_torch.optim as torch_optim
from nano_core import checkpoint as ck
from nano_core import cli, muon, settings
from nano_core.config import ModelConfig
from nano_core.init import init_weights

OPTIM = {"torch": torch_optim, "mlx": mlx_optim}
LR, MUON_LR, WD = 1e-3, 0.02, 0.1
# name -> (the Muon variant keywords, momentum warm-up steps)
VARIANTS = {
    "polar": (dict(ns="polar"), 0),
    "normuon": (dict(normuon=True), 0),
    "cwd": (dict(cautious_wd=True), 0),
    "mwarm": ({}, 4),
    "all": (dict(ns="polar", normuon=True, cautious_wd=True), 4),
}
ALL = dict(muon_ns="polar", normuon=True, cautious_wd=True)  # build_optimizer's names for the "all" variant



def backend(name: str, compile: bool | None = None):
    return backend_class(name)(device="cpu", dtype="fp32", compile=compile)


def fresh(b, weights=None, **variants):
    cfg = ModelConfig.from_dict(CFG)
    model = b.build_model(cfg, init_weights(cfg, 0) if weights is None else weights)
    return model, b.build_optimizer(model, LR, (0.9, 0.95), 1e-8, WD, "muon", MUON_LR, 0.95, **variants)


# ----------------------------------------------------------------------------- the reference's claims
def test_polar_express_maps_a_spread_of_singular_values_closer_to_one_than_kellers_steps():
    """Its five polynomials put every normalised singular value >= 1e-3 into [0.84, 1.15] (Keller's: [0.68, 1.21],
    only from 2e-3); on a matrix with singular values spread over 100x, max |s - 1| drops from ~0.32 to ~0.14, and the
    iteration still keeps the singular vectors (U^T NS(G) V is diagonal)."""
    x = np.linspace(muon.POLAR_BAND_FROM, 1.0, 200_001)
    y = muon.ns_polynomial(x, ns="polar")
    assert muon.POLAR_BAND[0] <= y.min() and y.max() <= muon.POLAR_BAND[1]
    assert muon.ns_polynomial(muon.POLAR_BAND_FROM, ns="keller") < muon.NS_BAND[0]  # Keller's 5 steps: not yet

    rng = np.random.default_rng(5)
    U, V = orthogonal_pair(rng, 48, 96)
    s = np.logspace(0, -2, 48)
    G = (U * s) @ V.T
    worst = {}
    for ns in ("keller", "polar"):
        out = muon.newton_schulz(G, ns=ns)
        core = U.T @ out @ V
        np.testing.assert_allclose(core, np.diag(np.diag(core)), atol=1e-10)
        # the 1e-6 of the normalisation aside, each singular value went through the scalar polynomials
        np.testing.assert_allclose(np.diag(core), muon.ns_polynomial(s / np.linalg.norm(s), ns=ns), rtol=1e-4)
        worst[ns] = np.abs(np.linalg.svd(out, compute_uv=False) - 1).max()
    assert worst["polar"] < 0.15 < 0.3 < worst["keller"], worst


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (32, 32)])
def test_polar_express_agrees_across_numpy_torch_and_mlx(shape):
    G = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    ref = muon.newton_schulz(G, ns="polar")
    got_torch = torch_optim.newton_schulz(torch.from_numpy(G), ns="polar").numpy()
    got_mlx = np.array(mlx_optim.newton_schulz(mx.array(G), ns="polar"))
    for got in (got_torch, got_mlx):
        np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.all(muon.newton_schulz(np.zeros((4, 8)), ns="polar") == 0)  # its eps: a zero gradient, no NaN
    with pytest.raises(ValueError, match="Polar Express has coefficients for 5 steps"):
        muon.ns_coefficients("polar", 6)


def test_normuon_keeps_one_second_moment_per_row_of_the_longer_side():
    assert muon.normuon_shape((48, 32)) == (48, 1)  # tall (the MLP's fc): per output neuron
    assert muon.normuon_shape((32, 32)) == (32, 1)  # square (attention): per output neuron
    assert muon.normuon_shape((32, 48)) == (1, 48)  # wide (the MLP's proj): per input column, nanochat's choice


@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])
def test_normuon_equalises_the_rows_at_the_first_step_and_keeps_the_frobenius_norm(shape):
    """From a zero second moment, v = 0.05 * mean(ortho^2): every row (column when wide) of the result has the same
    RMS, ||ortho||_F / sqrt(rows * cols), and ||result||_F = ||ortho||_F. A second step's v mixes two updates: the
    rows differ again, the norm is still kept."""
    rng = np.random.default_rng(6)
    axis = 1 if shape[0] >= shape[1] else 0
    ortho = muon.newton_schulz(rng.standard_normal(shape) * np.linspace(0.1, 3, shape[0])[:, None])
    v0 = np.zeros(muon.normuon_shape(shape))
    out, v = muon.normuon(ortho, v0)
    rms = np.sqrt(np.mean(out ** 2, axis=axis))
    np.testing.assert_allclose(rms, np.linalg.norm(ortho) / np.sqrt(ortho.size), rtol=1e-12)
    assert np.sqrt(np.mean(ortho ** 2, axis=axis)).std() > 0.01  # they were not equal before
    np.testing.assert_allclose(np.linalg.norm(out), np.linalg.norm(ortho), rtol=1e-12)
    np.testing.assert_allclose(v, (1 - muon.NORMUON_BETA2) * np.mean(ortho ** 2, axis=axis, keepdims=True), rtol=1e-12)

    ortho2 = muon.newton_schulz(rng.standard_normal(shape))
    out2, _ = muon.normuon(ortho2, v)
    assert np.sqrt(np.mean(out2 ** 2, axis=axis)).std() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(out2), np.linalg.norm(ortho2), rtol=1e-12)
    assert np.all(muon.normuon(np.zeros(shape), v0)[0] == 0)  # a zero update stays zero, no NaN


def test_cautious_weight_decay_leaves_the_coordinates_of_opposite_sign_undecayed():
    rng = np.random.default_rng(7)
    p, g = rng.standard_normal((48, 32)), rng.standard_normal((48, 32))
    lr, wd = 0.02, 0.5
    plain, _ = muon.muon_step(p, g, np.zeros_like(p), lr, wd)
    cautious, _ = muon.muon_step(p, g, np.zeros_like(p), lr, wd, cautious_wd=True)
    update = muon.newton_schulz(0.05 * g + 0.95 * 0.05 * g)  # Nesterov from a zero buffer
    mask = muon.decay_mask(update, p)
    assert 0.2 < mask.mean() < 0.8  # both kinds of coordinates are there
    step = lr * muon.lr_scale(p.shape) * update
    np.testing.assert_allclose(cautious[~mask], (p - step)[~mask], rtol=0, atol=1e-15)  # no decay there
    np.testing.assert_allclose(cautious[mask], plain[mask], rtol=0, atol=1e-15)           # the plain decay here
    # where it does not decay, the update moves p away from 0: decay there would fight the update's direction
    assert np.all(np.abs(p - step)[~mask] > np.abs(p)[~mask])
    assert mask[p * update == 0].all()  # ties count as agreeing (nanochat's >= 0)


def test_momentum_warmup_rises_linearly_from_085_to_the_momentum_then_stays():
    at = muon.momentum_at
    assert at(0, 0.95, 300) == 0.85
    assert at(150, 0.95, 300) == pytest.approx(0.90)
    assert at(299, 0.95, 300) == pytest.approx(0.85 + 0.1 * 299 / 300)
    assert at(300, 0.95, 300) == at(10_000, 0.95, 300) == 0.95
    assert at(0, 0.95, 0) == at(5, 0.99, 0) / 0.99 * 0.95 == 0.95  # 0: off, the momentum from the first step
    assert [at(k, 0.95, 4) for k in range(6)] == pytest.approx([0.85, 0.875, 0.9, 0.925, 0.95, 0.95])


# ----------------------------------------------------------------------------- parity
SHAPES = {"a": (48, 32), "b": (48, 32), "c": (32, 48), "d": (32, 32)}  # two of one shape: torch's batched path


def parity_problem(steps=5):
    rng = np.random.default_rng(8)
    start = {k: rng.standard_normal(s).astype(np.float32) * 0.05 for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) * 1e-2 for k, s in SHAPES.items()} for _ in range(steps)]
    lrs = [0.02, 0.01, 0.015, 0.02, 0.005][:steps]
    return start, grads, lrs


def run_reference(start, grads, lrs, kw, warmup):
    state = {k: [p.astype(np.float64), np.zeros(p.shape)] + ([np.zeros(muon.normuon_shape(p.shape))]
                                                             if kw.get("normuon") else [])
             for k, p in start.items()}
    for i, (g, lr) in enumerate(zip(grads, lrs)):
        mu = muon.momentum_at(i, 0.95, warmup)
        for k, st in state.items():
            second = st[2] if kw.get("normuon") else None
            state[k] = list(muon.muon_step(st[0], g[k], st[1], lr, WD, mu, ns=kw.get("ns", "keller"),
                                           second_moment=second, cautious_wd=kw.get("cautious_wd", False)))
    return {k: st[0] for k, st in state.items()}, {k: st[2] for k, st in state.items() if len(st) == 3}


def run_torch(start, grads, lrs, kw, warmup):
    params = {k: torch.nn.Parameter(torch.from_numpy(p.copy())) for k, p in start.items()}
    opt = torch_optim.Muon(list(params.values()), lr=lrs[0], weight_decay=WD, **kw)
    for i, (g, lr) in enumerate(zip(grads, lrs)):
        for k, p in params.items():
            p.grad = torch.from_numpy(g[k])
        opt.param_groups[0]["lr"] = lr
        torch_optim.set_momentum(opt, muon.momentum_at(i, 0.95, warmup))
        opt.step()
    v = {k: opt.state[p]["second_moment"].numpy() for k, p in params.items() if "second_moment" in opt.state[p]}
    return {k: p.detach().numpy() for k, p in params.items()}, v


def run_mlx(start, grads, lrs, kw, warmup):
    opt = mlx_optim.Muon(learning_rate=lrs[0], weight_decay=WD, **kw)
    params = {k: mx.array(p) for k, p in start.items()}
    opt.init(params)
    state = [opt.state]
    update = mx.compile(lambda g, p: opt.apply_gradients(g, p), inputs=state, outputs=state)  # as the train step
    for i, (g, lr) in enumerate(zip(grads, lrs)):
        opt.learning_rate = mx.array(lr, dtype=mx.float32)
        mlx_optim.set_momentum(opt, muon.momentum_at(i, 0.95, warmup))
        params = update({k: mx.array(x) for k, x in g.items()}, params)
        mx.eval(params, opt.state)
    v = {k: np.array(opt.state[k]["second_moment"]) for k in start if "second_moment" in opt.state[k]}
    return {k: np.array(p) for k, p in params.items()}, v


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_takes_the_reference_steps_on_both_backends(variant):
    """5 steps of Muon with the variant on four matrices (tall, wide, square; two of one shape), a changing lr and,
    with the warm-up, a changing momentum: torch and MLX (a compiled update, which must read the momentum from the
    state) agree with the float64 reference to 1e-5 relative to the update, and with each other."""
    kw, warmup = VARIANTS[variant]
    start, grads, lrs = parity_problem()
    want, want_v = run_reference(start, grads, lrs, kw, warmup)
    runs = {"torch": run_torch(start, grads, lrs, kw, warmup), "mlx": run_mlx(start, grads, lrs, kw, warmup)}
    plain, _ = run_reference(start, grads, lrs, {}, 0)
    for name, (got, got_v) in runs.items():
        for k in SHAPES:
            moved = np.abs(want[k] - start[k]).max()
            assert moved > 1e-3  # it did move
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-5 * moved, err_msg=f"{name} {k}")
            assert np.abs(want[k] - plain[k]).max() > 1e-3 * moved  # the variant changed the steps
        assert got_v.keys() == want_v.keys() == (set(SHAPES) if kw.get("normuon") else set())
        for k in got_v:
            np.testing.assert_allclose(got_v[k], want_v[k], rtol=1e-5, err_msg=f"{name} {k} second moment")
    for k in SHAPES:
        np.testing.assert_allclose(runs["mlx"][0][k], runs["torch"][0][k], rtol=0, atol=1e-6)


def train_steps(b, model, opt, shared_data, steps, start=0, step=None, warmup=4):
    step = step or b.make_train_step(model, opt, 2, 0.5, seed=0)
    out = []
    for i in range(start, start + steps):
        b.set_momentum(opt, muon.momentum_at(i, 0.95, warmup))
        out.append(b.loss_value(step(real_batch(shared_data, offset=i * 4000), LR * min(1.0, (i + 1) / 4), i)))
    return out


def test_both_backends_train_the_same_with_all_four_variants(shared_data):
    """The whole train step (2 micro-batches, clipping, MLX compiled): 5 losses agree to 1e-5 relative, and the
    MLX compiled run equals its eager run (the momentum reaches the trace through the state, not baked in)."""
    runs = {}
    for name, compile in (("torch", None), ("mlx", True), ("mlx-eager", False)):
        b = backend(name.partition("-")[0], compile=compile)
        model, opt = fresh(b, **ALL)
        runs[name] = train_steps(b, model, opt, shared_data, 5), b.model_weights(model)
    np.testing.assert_allclose(runs["mlx"][0], runs["torch"][0], rtol=1e-5)
    np.testing.assert_allclose(runs["mlx"][0], runs["mlx-eager"][0], rtol=1e-6)
    assert runs["torch"][0][-1] < runs["torch"][0][0] - 0.1  # it learns
    for k, w in runs["torch"][1].items():
        np.testing.assert_allclose(runs["mlx"][1][k], w, rtol=1e-4, atol=1e-5, err_msg=k)


def test_set_momentum_reaches_muon_and_only_muon():
    for name in ("torch", "mlx"):
        b = backend(name)
        model, opt = fresh(b)
        b.set_momentum(opt, 0.9)
        got = [g["momentum"] for g in opt.muon.param_groups] if name == "torch" else [opt.muon.momentum.item()]
        assert got == pytest.approx([0.9] * len(got))
        cfg = ModelConfig.from_dict(CFG)
        adamw = b.build_optimizer(b.build_model(cfg, init_weights(cfg, 0)), LR, (0.9, 0.95), 1e-8, WD)
        one_line_error(lambda: b.set_momentum(adamw, 0.9), "not optimizer 'muon'")


# ----------------------------------------------------------------------------- state
def test_a_normuon_state_goes_from_torch_to_mlx_and_the_run_continues(shared_data):
    """3 steps on torch with all four variants; its weights and state (with every second moment) start an MLX run
    whose compiled step is built before the load, and step 3 agrees."""
    tb, mb = backend("torch"), backend("mlx")
    a, a_opt = fresh(tb, **ALL)
    a_step = tb.make_train_step(a, a_opt, 2, 0.5, seed=0)
    train_steps(tb, a, a_opt, shared_data, 3, step=a_step)
    state = tb.optimizer_state(a_opt, a)
    hidden, _ = muon.split_params(ModelConfig.from_dict(CFG).param_shapes())
    assert {f"{n}.second_moment" for n in hidden} <= set(state)
    assert all(state[f"{n}.second_moment"].shape == muon.normuon_shape(state[f"{n}.momentum"].shape) for n in hidden)
    assert all(np.all(state[f"{n}.second_moment"] > 0) for n in hidden)

    m, m_opt = fresh(mb, weights=tb.model_weights(a), **ALL)
    m_step = mb.make_train_step(m, m_opt, 2, 0.5, seed=0)
    mb.load_optimizer_state(m_opt, m, state)
    got = mb.optimizer_state(m_opt, m)
    assert got.keys() == state.keys() and all(np.array_equal(got[k], state[k]) for k in state)
    assert train_steps(mb, m, m_opt, shared_data, 1, start=3, step=m_step) == \
        pytest.approx(train_steps(tb, a, a_opt, shared_data, 1, start=3, step=a_step), rel=1e-5)
    after_m, after_t = mb.optimizer_state(m_opt, m), tb.optimizer_state(a_opt, a)
    for n in hidden:
        np.testing.assert_allclose(after_m[f"{n}.second_moment"], after_t[f"{n}.second_moment"], rtol=1e-4)


@pytest.mark.parametrize("name", ["torch", "mlx"])
def test_a_state_of_the_other_normuon_setting_is_refused_in_one_line(name, shared_data):
    b = backend(name)
    plain_model, plain_opt = fresh(b)
    nor_model, nor_opt = fresh(b, normuon=True)
    train_steps(b, plain_model, plain_opt, shared_data, 1)
    train_steps(b, nor_model, nor_opt, shared_data, 1)
    plain, nor = b.optimizer_state(plain_opt, plain_model), b.optimizer_state(nor_opt, nor_model)
    one_line_error(lambda: b.load_optimizer_state(nor_opt, nor_model, plain), "saved without NorMuon .* --normuon")
    one_line_error(lambda: b.load_optimizer_state(plain_opt, plain_model, nor), "saved with NorMuon .* --normuon")
    bad = dict(nor, **{"h.0.mlp.proj.weight.second_moment": np.zeros((128, 1), np.float32)})  # the wrong side
    one_line_error(lambda: b.load_optimizer_state(nor_opt, nor_model, bad), r"second_moment has shape \(128, 1\)")
    # at step 0 a missing second moment is zeros anyway: allowed, as a missing momentum is (check_state's rule)
    untrained_model, untrained_opt = fresh(b)
    model, opt = fresh(b, normuon=True)
    b.load_optimizer_state(opt, model, b.optimizer_state(untrained_opt, untrained_model))
    assert all(np.all(v == 0) for k, v in b.optimizer_state(opt, model).items() if k.endswith(".second_moment"))


def test_build_optimizer_refuses_the_variants_with_adamw_and_an_unknown_ns():
    for name in ("torch", "mlx"):
        b = backend(name)
        cfg = ModelConfig.from_dict(CFG)
        model = b.build_model(cfg, init_weights(cfg, 0))
        build = OPTIM[name].build_optimizer
        one_line_error(lambda: build(model, LR, optimizer="adamw", normuon=True), "--normuon is a Muon setting")
        one_line_error(lambda: build(model, LR, optimizer="muon", muon_ns="newton"), "--muon-ns must be one of")


# ----------------------------------------------------------------------------- the command line
FLAGS = ["--muon-ns", "polar", "--normuon", "--cautious-wd", "--muon-momentum-warmup", "300"]


def test_the_variant_flags_parse_and_are_listed_in_the_optimization_group(capsys):
    config, typed = cli.parse_train_args("torch", FLAGS)
    assert (config.muon_ns, config.normuon, config.cautious_wd, config.muon_momentum_warmup) == ("polar", True, True,
                                                                                                 300)
    assert {"muon_ns", "normuon", "cautious_wd", "muon_momentum_warmup"} <= typed
    default = cli.TrainConfig()
    assert (default.muon_ns, default.normuon, default.cautious_wd, default.muon_momentum_warmup) == ("keller", False,
                                                                                                     False, 0)
    parser = cli.build_parser("mlx")
    group = next(g for g in parser._action_groups if g.title == "optimization")
    listed = {s for a in group._group_actions for s in a.option_strings}
    assert {"--muon-ns", "--normuon", "--cautious-wd", "--muon-momentum-warmup"} <= listed
    with pytest.raises(SystemExit):
        cli.parse_train_args("torch", ["--muon-ns", "newton"])
    assert "invalid choice" in capsys.readouterr().err


def checked(argv):
    config, typed = cli.parse_train_args("torch", argv)
    settings.check_config(settings.resolve_defaults(config, "cpu", typed, log=lambda *_: None))


@pytest.mark.parametrize("flags", [["--normuon"], ["--cautious-wd"], ["--muon-ns", "polar"],
                                   ["--muon-momentum-warmup", "10"], FLAGS])
def test_a_variant_without_muon_is_a_one_line_error_naming_the_flag(flags):
    one_line_error(lambda: checked(["--preset", "tiny", "--optimizer", "adamw", *flags]),
                   f"{flags[0]} .*Muon setting.* --optimizer adamw; add --optimizer muon")
    one_line_error(lambda: checked(["--preset", "tiny", *flags]), "add --optimizer muon")  # adamw is the default
    checked(["--preset", "tiny", "--optimizer", "muon", *flags])
    checked(flags)  # no model: the CPU recipe, which trains with Muon


def test_a_negative_momentum_warmup_names_the_flag():
    one_line_error(lambda: checked(["--optimizer", "muon", "--muon-momentum-warmup", "-1"]),
                   "--muon-momentum-warmup must be an integer >= 0")


# ----------------------------------------------------------------------------- end to end
@pytest.mark.e2e
@pytest.mark.parametrize("name", ["torch", "mlx"])
def test_a_short_run_with_all_four_variants_trains_and_checkpoints_them(name, shared_data, tmp_path):
    data, config = micro_setup(shared_data)
    out = tmp_path / "run"
    argv = train_args(data, config, out, **{"max-steps": 3, "ckpt-every": 2, "eval-every": 0, "sample-every": 0,
                                            "optimizer": "muon", "muon-ns": "polar", "muon-momentum-warmup": 2})
    train_main(name)(argv + ["--normuon", "--cautious-wd"])
    got = losses(out)
    assert sorted(got) == [1, 2, 3] and all(np.isfinite(v) for v in got.values())
    _, opt, meta = ck.load_checkpoint(out)
    saved = meta["train_config"]
    assert (saved["muon_ns"], saved["normuon"], saved["cautious_wd"], saved["muon_momentum_warmup"]) == \
        ("polar", True, True, 2)
    assert any(k.endswith(".second_moment") for k in opt)
    if name == "torch":  # the warm-up spans the resume: bit for bit from step 2
        resumed = tmp_path / "resumed"
        train_main(name)(["--resume", str(out / "ckpt_0000002"), "--out", str(resumed)])
        again = losses(resumed)
        assert sorted(again) == [3] and again[3] == got[3], (again, got)


@pytest.mark.e2e
def test_resuming_a_plain_muon_run_with_normuon_is_a_one_line_error(shared_data, tmp_path):
    data, config = micro_setup(shared_data)
    out = tmp_path / "run"
    train_main("torch")(train_args(data, config, out, **{"max-steps": 2, "ckpt-every": 2, "eval-every": 0,
                                                         "sample-every": 0, "optimizer": "muon"}))
    with pytest.raises(SystemExit) as stop:  # main's one line: sys.exit("error: ...")
        train_main("torch")(["--resume", str(out), "--out", str(tmp_path / "again"), "--max-steps", "3",
                             "--normuon"])
    message = str(stop.value.code)
    assert message.startswith("error: ") and "saved without NorMuon" in message and "\n" not in message, message
