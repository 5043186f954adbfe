"""LoRA (nano_core/lora.py) and loss masks, through the backend interface of both backends: the config's checks,
the adapter init, MLX == PyTorch for LoRA training, a frozen base, the merge (fuse), masked losses, and the adapters'
optimizer state round trip (within a backend and across). CPU, fp32, tiny models, real text."""
import importlib
import os

os.environ.setdefault("MLX_ENABLE_TF32", "0")  # before mlx is imported

import numpy as np
import pytest

from nano_core.config import ModelConfig
from nano_core.init import init_weights
from nano_core.lora import (DEFAULT_TARGETS, LoraConfig, adapter_shapes, check_adapters, fuse, fuse_checkpoint,
                            init_adapters, is_adapter_name, mask_weights)

CFG = dict(vocab_size=256, n_layer=2, n_head=4, n_embd=32, seq_len=32)
MODERN = dict(CFG, pos="rope", mlp="swiglu", norm="rmsnorm", n_kv_head=2, bias=False, tie_embeddings=False)
LRS = [3e-3 * (i + 1) / 10 for i in range(10)]


def backend_class(name: str):
    return importlib.import_module(f"nano_{name}.backend").Backend


@pytest.fixture(params=["torch", "mlx"])
def backend(request):
    return backend_class(request.param)(device="cpu", dtype="fp32")


def both():
    return [backend_class(n)(device="cpu", dtype="fp32") for n in ("torch", "mlx")]


def real_batch(shared_data, rows=4, T=32, offset=0) -> np.ndarray:
    """(rows, T+1) int32 windows of TinyShakespeare bytes (ids < 256)."""
    text = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[offset:offset + rows * (T + 1)]
    return np.frombuffer(text, dtype=np.uint8).astype(np.int32).reshape(rows, T + 1)


def lora_model(backend, cfg=None, lora=None, adapters=None, seed=0):
    cfg = cfg or ModelConfig.from_dict(CFG)
    lora = lora or LoraConfig(rank=4, alpha=8.0)
    model = backend.build_model(cfg, init_weights(cfg, seed), lora=lora, adapters=adapters)
    return model, backend.build_optimizer(model, 1e-2, (0.9, 0.95), 1e-8, 0.1)


def logits(backend, model, x: np.ndarray) -> np.ndarray:
    """(B, T, V) float32 logits of a full forward, inside inference()."""
    with backend.inference(model):
        if backend.name == "torch":
            import torch
            return model(torch.from_numpy(x).long()).float().numpy()
        import mlx.core as mx
        return np.array(model(mx.array(x)))


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / (np.abs(np.asarray(a)).max() + 1e-30))


def one_line_error(fn, match=None):
    with pytest.raises(ValueError, match=match) as err:
        fn()
    assert "\n" not in str(err.value) and str(err.value)
    return str(err.value)


# ----------------------------------------------------------------------------- the config, names, init, merge
def test_lora_config_round_trips_and_refuses_what_cannot_run_in_one_line():
    cfg, swiglu, rnn = ModelConfig.from_dict(CFG), ModelConfig.from_dict(MODERN), \
        ModelConfig.from_dict(dict(CFG, arch="rnn", pos="none"))
    lora = LoraConfig(rank=8, alpha=32.0, dropout=0.1, targets=("wq", "wv"), layers=1)
    assert LoraConfig.from_dict(lora.to_dict()) == lora and lora.scale == 4.0
    assert LoraConfig(rank=2, targets="wq, wo").targets == ("wq", "wo")  # a command line's comma list
    assert LoraConfig(rank=2, targets=["wq"]).to_dict()["targets"] == ["wq"]  # JSON-ready
    one_line_error(lambda: LoraConfig.from_dict({"rank": 2, "beta": 1}), "unknown LoraConfig keys")
    one_line_error(lambda: LoraConfig(rank=0).check(cfg), "rank")
    one_line_error(lambda: LoraConfig(rank=2, alpha=0).check(cfg), "alpha")
    one_line_error(lambda: LoraConfig(rank=2, dropout=1.0).check(cfg), "dropout")
    one_line_error(lambda: LoraConfig(rank=2, targets=("wq", "lm_head")).check(cfg), "'lm_head' is not one of")
    one_line_error(lambda: LoraConfig(rank=2, targets=()).check(cfg), "empty")
    one_line_error(lambda: LoraConfig(rank=2, targets=("fc", "gate")).check(cfg), "swiglu")  # asked for by name
    one_line_error(lambda: LoraConfig(rank=2, layers=3).check(cfg), "layers=3")
    one_line_error(lambda: LoraConfig(rank=2, layers=0).check(cfg), "layers=0")
    one_line_error(lambda: LoraConfig(rank=2).check(rnn), "arch='rnn'")
    # the default targets skip what the model does not have (gate without swiglu), silently
    assert LoraConfig(rank=2).check(cfg).present_targets(cfg) == ("wq", "wk", "wv", "wo", "fc", "proj")
    assert LoraConfig(rank=2).present_targets(swiglu) == DEFAULT_TARGETS
    LoraConfig(rank=2, targets=("gate",)).check(swiglu)


def test_adapter_names_sit_beside_their_weights_and_start_as_the_base_model():
    cfg = ModelConfig.from_dict(MODERN | {"n_layer": 3})
    lora = LoraConfig(rank=4, targets=("wq", "wk", "gate"), layers=2)
    shapes = adapter_shapes(cfg, lora)
    base = cfg.param_shapes()
    assert list(shapes) == [f"h.{i}.{m}.lora_{ab}" for i in (1, 2)
                            for m in ("attn.wq", "attn.wk", "mlp.gate") for ab in "ab"]
    for name, shape in shapes.items():
        out, inp = base[name.rsplit(".", 1)[0] + ".weight"]
        assert shape == ((4, inp) if name.endswith("lora_a") else (out, 4)), name
        assert is_adapter_name(name) and not is_adapter_name(name.rsplit(".", 1)[0] + ".weight")
    a, b = init_adapters(cfg, lora, seed=3), init_adapters(cfg, lora, seed=3)
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == np.float32 for k in a)  # seeded
    assert not np.array_equal(a["h.1.attn.wq.lora_a"], init_adapters(cfg, lora, seed=4)["h.1.attn.wq.lora_a"])
    for name, w in a.items():
        if name.endswith("lora_b"):
            assert not w.any()  # B = 0
        else:  # PEFT's Kaiming-uniform (a = sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))
            bound = 1 / np.sqrt(w.shape[1])
            assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound and abs(w.mean()) < 0.1 * bound
    check_adapters(cfg, lora, a)
    one_line_error(lambda: check_adapters(cfg, lora, {k: v for k, v in a.items() if "wk" not in k}), "missing")
    one_line_error(lambda: check_adapters(cfg, LoraConfig(rank=2, targets=("wq", "wk", "gate"), layers=2), a),
                   "shape")


def test_fuse_adds_scale_b_a_in_float64_and_checks_what_it_merges():
    cfg = ModelConfig.from_dict(CFG)
    lora = LoraConfig(rank=2, alpha=6.0, targets=("wq", "fc"))
    weights = init_weights(cfg, 0)
    rng = np.random.default_rng(0)
    adapters = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in init_adapters(cfg, lora).items()}
    fused = fuse(weights, adapters, lora)
    assert fused.keys() == weights.keys() and all(v.dtype == np.float32 for v in fused.values())
    for name, w in weights.items():
        prefix = name.rsplit(".", 1)[0]
        if f"{prefix}.lora_a" in adapters and name.endswith(".weight"):
            want = w.astype(np.float64) + 3.0 * adapters[f"{prefix}.lora_b"].astype(np.float64) @ \
                adapters[f"{prefix}.lora_a"].astype(np.float64)
            assert np.array_equal(fused[name], want.astype(np.float32)), name
        else:
            assert np.array_equal(fused[name], w), name
    assert fused["h.0.attn.wq.weight"] is not weights["h.0.attn.wq.weight"]  # the inputs are not modified
    assert np.array_equal(fuse_checkpoint(weights, adapters, lora.to_dict(), cfg.to_dict())["h.1.mlp.fc.weight"],
                          fused["h.1.mlp.fc.weight"])
    zero = fuse(weights, init_adapters(cfg, lora), lora)  # B = 0: the base, bit for bit
    assert all(np.array_equal(zero[k], weights[k]) for k in weights)
    one_line_error(lambda: fuse_checkpoint(weights, adapters, LoraConfig(rank=2), cfg), "missing")
    one_line_error(lambda: fuse_checkpoint({k: v for k, v in weights.items() if "wte" not in k}, adapters, lora, cfg),
                   "base weights")
    one_line_error(lambda: fuse(weights, {"h.0.attn.wq.lora_a": adapters["h.0.attn.wq.lora_a"]}, lora), "only one")
    one_line_error(lambda: fuse(weights, adapters, LoraConfig(rank=3, targets=("wq", "fc"))), "rank 3")


# ----------------------------------------------------------------------------- the contract, for each backend
def test_a_lora_model_trains_only_its_adapters_and_leaves_the_base_bit_identical(backend, shared_data):
    cfg = ModelConfig.from_dict(MODERN)
    lora = LoraConfig(rank=4, alpha=8.0, layers=1)
    weights = init_weights(cfg, 0)
    model = backend.build_model(cfg, weights, lora=lora)
    opt = backend.build_optimizer(model, 1e-2, (0.9, 0.95), 1e-8, 0.1)
    adapters0 = backend.adapter_weights(model)
    assert model.lora == lora and adapters0.keys() == adapter_shapes(cfg, lora).keys()
    assert all(np.array_equal(adapters0[k], v) for k, v in init_adapters(cfg, lora, seed=0).items())
    n_adapters = sum(v.size for v in adapters0.values())
    assert backend.num_params(model) == n_adapters
    assert backend.num_total_params(model) == cfg.num_params() + n_adapters
    step = backend.make_train_step(model, opt, 2, 1.0, seed=0)
    for i in range(3):
        step(real_batch(shared_data, offset=i * 1000), 1e-2, i)
    after = backend.model_weights(model)
    assert after.keys() == weights.keys() and all(np.array_equal(after[k], weights[k]) for k in weights)
    adapters = backend.adapter_weights(model)
    assert all(not np.array_equal(adapters[k], adapters0[k]) for k in adapters)  # A and B both moved
    state = backend.optimizer_state(opt, model)
    assert set(state) == {f"{k}.{m}" for k in adapters for m in ("exp_avg", "exp_avg_sq")} | {"step"}
    assert int(state["step"]) == 3

    # gradients: only the adapters hold any
    batch = real_batch(shared_data)
    if backend.name == "torch":
        import torch
        model.zero_grad(set_to_none=True)
        model.loss(torch.from_numpy(batch[:, :-1]).long(), torch.from_numpy(batch[:, 1:]).long()).backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == is_adapter_name(name) == p.requires_grad, name
        model.zero_grad(set_to_none=True)
    else:
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.utils import tree_flatten
        assert {k for k, _ in tree_flatten(model.trainable_parameters())} == set(adapters)
        _, grads = nn.value_and_grad(model, model.loss)(mx.array(batch[:, :-1]), mx.array(batch[:, 1:]))
        assert {k for k, _ in tree_flatten(grads)} == set(adapters)


def test_a_zero_step_lora_model_is_the_base_model_and_a_fused_one_is_the_adapter_model(backend, shared_data):
    cfg = ModelConfig.from_dict(MODERN)
    lora = LoraConfig(rank=4, alpha=8.0)
    weights = init_weights(cfg, 0)
    x = real_batch(shared_data, offset=5000)[:, :-1]
    base = backend.build_model(cfg, weights)
    model, opt = lora_model(backend, cfg, lora)
    assert np.array_equal(logits(backend, model, x), logits(backend, base, x))  # B = 0: exactly the base
    step = backend.make_train_step(model, opt, 1, 1.0, seed=0)
    for i in range(3):
        step(real_batch(shared_data, offset=i * 1000), 1e-2, i)
    fused = backend.build_model(cfg, fuse(backend.model_weights(model), backend.adapter_weights(model), lora))
    got, want = logits(backend, fused, x), logits(backend, model, x)
    assert rel(want, logits(backend, base, x)) > 1e-3  # the adapters changed the model ...
    assert rel(want, got) <= 1e-5  # ... and the merge keeps that change


def test_lora_with_gradient_checkpointing_takes_the_same_step(backend, shared_data):
    cfg = ModelConfig.from_dict(CFG)
    runs = []
    for ckpt in (False, True):
        model = backend.build_model(cfg, init_weights(cfg, 0), grad_checkpoint=ckpt, lora=LoraConfig(rank=2))
        opt = backend.build_optimizer(model, 1e-2, (0.9, 0.95), 1e-8, 0.1)
        step = backend.make_train_step(model, opt, 1, 1.0, seed=0)
        losses = [backend.loss_value(step(real_batch(shared_data, offset=i * 700), 1e-2, i)) for i in range(3)]
        runs.append((losses, backend.adapter_weights(model)))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-6)
    for k, v in runs[0][1].items():
        np.testing.assert_allclose(runs[1][1][k], v, rtol=1e-5, atol=1e-7, err_msg=k)


def test_build_model_refuses_adapters_that_do_not_fit_in_one_line(backend):
    cfg = ModelConfig.from_dict(CFG)
    lora = LoraConfig(rank=4)
    adapters = init_adapters(cfg, lora)
    one_line_error(lambda: backend.build_model(cfg, init_weights(cfg), adapters=adapters), "without a LoRA config")
    one_line_error(lambda: backend.build_model(cfg, init_weights(cfg), lora=LoraConfig(rank=4, targets=("wq",)),
                                               adapters=adapters), "adapters do not match")
    one_line_error(lambda: backend.build_model(cfg, init_weights(cfg), lora=LoraConfig(rank=4, targets=("gate",))),
                   "swiglu")
    given = {k: v + 1.0 for k, v in adapters.items()}
    assert np.array_equal(backend.adapter_weights(backend.build_model(cfg, init_weights(cfg), lora=lora,
                                                                      adapters=given))["h.1.mlp.proj.lora_b"],
                          given["h.1.mlp.proj.lora_b"])


def masked(rows=4, T=32, seed=0) -> np.ndarray:
    """A loss mask like instruction data's: each row counts its targets from a prompt length on (uneven counts per
    row, so micro-batches hold different numbers of counted targets); row 0 counts none of its last four."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((rows, T), np.float32)
    for r in range(rows):
        mask[r, rng.integers(1, T - 4):] = 1.0
    mask[0, -4:] = 0.0
    return mask


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_masked_out_target_changes_nothing_and_a_counted_one_does(backend, shared_data, lora):
    cfg = ModelConfig.from_dict(CFG)
    batch, mask = real_batch(shared_data), masked()

    def run(b, m=mask, grad_accum=2):
        model = backend.build_model(cfg, init_weights(cfg, 0), lora=LoraConfig(rank=4) if lora else None)
        opt = backend.build_optimizer(model, 1e-2, (0.9, 0.95), 1e-8, 0.1)
        step = backend.make_train_step(model, opt, grad_accum, 1.0, seed=0)
        losses = [backend.loss_value(step(b, 1e-2, i, mask=m)) for i in range(2)]  # 2nd: after a gradient step
        return losses, (backend.adapter_weights if lora else backend.model_weights)(model)

    losses, w = run(batch)
    base = backend.build_model(cfg, init_weights(cfg, 0))
    with backend.inference(base):
        nats = backend.token_losses(base, batch)
    assert losses[0] == pytest.approx(float((nats * mask).sum() / mask.sum()), rel=1e-5)  # the masked mean

    out = batch.copy()
    out[0, -1] = (out[0, -1] + 7) % 256  # a target that is masked out (and is no one's input)
    losses_out, w_out = run(out)
    assert losses_out == losses and all(np.array_equal(w_out[k], w[k]) for k in w)

    counted = batch.copy()
    counted[1, -1] = (counted[1, -1] + 7) % 256  # a target that counts
    assert mask[1, -1] == 1
    losses_in, w_in = run(counted)
    assert losses_in[0] != losses[0] and any(not np.array_equal(w_in[k], w[k]) for k in w)

    # accumulation with a mask == one big batch, to fp32 rounding; the weights within 1e-3 of a step's size (lr):
    # Adam's normalised update turns the rounding of a near-zero gradient into a visible difference
    one_big, w_big = run(batch, grad_accum=1)
    np.testing.assert_allclose(one_big, losses, rtol=1e-6)
    for k in w:
        np.testing.assert_allclose(w_big[k], w[k], rtol=1e-5, atol=1e-5, err_msg=k)

    ones, _ = run(batch, m=np.ones_like(mask))  # an all-ones mask is the plain mean
    plain_model = backend.build_model(cfg, init_weights(cfg, 0), lora=LoraConfig(rank=4) if lora else None)
    plain_step = backend.make_train_step(plain_model, backend.build_optimizer(plain_model, 1e-2, (0.9, 0.95), 1e-8,
                                                                              0.1), 2, 1.0, seed=0)
    assert backend.loss_value(plain_step(batch, 1e-2, 0)) == pytest.approx(ones[0], rel=1e-6)
    one_line_error(lambda: plain_step(batch, 1e-2, 1, mask=mask[:, :-1]), "loss mask has shape")
    assert mask_weights(mask, batch).sum() == pytest.approx(1.0, rel=1e-6)
    assert not mask_weights(np.zeros_like(mask), batch).any()  # nothing counted: no loss, no gradient (no NaN)


def test_adapter_optimizer_state_round_trip_continues_the_run_exactly(backend, shared_data):
    batches = [real_batch(shared_data, offset=i * 2000) for i in range(3)]
    cfg = ModelConfig.from_dict(CFG)
    lora = LoraConfig(rank=4, alpha=8.0, targets=("wq", "wv", "proj"), layers=1)
    model, opt = lora_model(backend, cfg, lora)
    step = backend.make_train_step(model, opt, 1, 1.0, seed=0)
    for i in range(2):
        step(batches[i], 1e-2, i)
    state = backend.optimizer_state(opt, model)
    copy = backend.build_model(cfg, backend.model_weights(model), lora=lora, adapters=backend.adapter_weights(model))
    copy_opt = backend.build_optimizer(copy, 1e-2, (0.9, 0.95), 1e-8, 0.1)
    backend.load_optimizer_state(copy_opt, copy, state)
    want = backend.loss_value(step(batches[2], 1e-2, 2))
    got = backend.loss_value(backend.make_train_step(copy, copy_opt, 1, 1.0, seed=0)(batches[2], 1e-2, 2))
    assert got == want
    a, b = backend.adapter_weights(model), backend.adapter_weights(copy)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # a full model's state does not fit a LoRA model (and the other way round): one line
    full = backend.build_model(cfg, init_weights(cfg))
    full_opt = backend.build_optimizer(full, 1e-2, (0.9, 0.95), 1e-8, 0.1)
    backend.make_train_step(full, full_opt, 1, 1.0, seed=0)(batches[0], 1e-2, 0)
    one_line_error(lambda: backend.load_optimizer_state(copy_opt, copy, backend.optimizer_state(full_opt, full)),
                   "no entry")
    one_line_error(lambda: backend.load_optimizer_state(full_opt, full, state), "no entry")


# ----------------------------------------------------------------------------- the two backends agree
@pytest.mark.parametrize("variant", ["gpt2", "modern-last-layer"])
def test_lora_parity_mlx_equals_torch_for_ten_steps(variant, shared_data):
    """Same base, same adapters, same batches: 10 LoRA steps (accumulation, clipping, weight decay, a changing lr)
    give the same losses (rel 1e-5) and the same adapters after them, and the base stays as it was in both."""
    if variant == "gpt2":
        cfg, lora, adapters = ModelConfig.from_dict(CFG), LoraConfig(rank=4, alpha=8.0), None
    else:  # B != 0 from the start, so every adapter term is live in the first forward
        cfg = ModelConfig.from_dict(MODERN)
        lora = LoraConfig(rank=4, alpha=16.0, targets=("wq", "wk", "wv", "gate", "proj"), layers=1)
        rng = np.random.default_rng(1)
        adapters = {k: (v if k.endswith("lora_a") else rng.standard_normal(v.shape).astype(np.float32) * 0.02)
                    for k, v in init_adapters(cfg, lora, seed=5).items()}
    weights = init_weights(cfg, 0)
    runs = {}
    for b in both():
        model = b.build_model(cfg, weights, lora=lora, adapters=adapters)
        opt = b.build_optimizer(model, LRS[0], (0.9, 0.95), 1e-8, 0.1)
        step = b.make_train_step(model, opt, 2, 0.5, seed=0)
        losses = [b.loss_value(step(real_batch(shared_data, offset=i * 1500), lr, i)) for i, lr in enumerate(LRS)]
        assert all(np.array_equal(v, weights[k]) for k, v in b.model_weights(model).items())
        runs[b.name] = losses, b.adapter_weights(model)
    (lt, at), (lm, am) = runs["torch"], runs["mlx"]
    assert max(abs(m - t) / abs(t) for m, t in zip(lm, lt)) <= 1e-5, (lt, lm)
    scale = max(np.abs(v).max() for v in at.values())
    for k in at:
        np.testing.assert_allclose(am[k], at[k], rtol=1e-4, atol=1e-5 * scale, err_msg=k)


def test_lora_parity_with_a_loss_mask(shared_data):
    cfg, lora = ModelConfig.from_dict(CFG), LoraConfig(rank=4, alpha=8.0)
    mask = masked()
    losses = {}
    for b in both():
        model, opt = lora_model(b, cfg, lora)
        step = b.make_train_step(model, opt, 2, 1.0, seed=0)
        losses[b.name] = [b.loss_value(step(real_batch(shared_data, offset=i * 1500), 1e-2, i, mask=mask))
                          for i in range(4)]
    np.testing.assert_allclose(losses["mlx"], losses["torch"], rtol=1e-5)


@pytest.mark.parametrize("direction", ["torch->mlx", "mlx->torch"])
def test_adapters_and_their_optimizer_state_move_between_backends(direction, shared_data):
    cfg, lora = ModelConfig.from_dict(MODERN), LoraConfig(rank=4, alpha=8.0)
    src, dst = both() if direction == "torch->mlx" else both()[::-1]
    batches = [real_batch(shared_data, offset=i * 2500) for i in range(5)]
    model, opt = lora_model(src, cfg, lora)
    step = src.make_train_step(model, opt, 1, 1.0, seed=0)
    for i in range(3):
        step(batches[i], 1e-2, i)
    moved = dst.build_model(cfg, src.model_weights(model), lora=lora, adapters=src.adapter_weights(model))
    moved_opt = dst.build_optimizer(moved, 1e-2, (0.9, 0.95), 1e-8, 0.1)
    dst.load_optimizer_state(moved_opt, moved, src.optimizer_state(opt, model))
    moved_step = dst.make_train_step(moved, moved_opt, 1, 1.0, seed=0)
    for i in range(3, 5):
        want = src.loss_value(step(batches[i], 1e-2, i))
        got = dst.loss_value(moved_step(batches[i], 1e-2, i))
        assert abs(got - want) / abs(want) <= 1e-5, (i, want, got)
    assert int(dst.optimizer_state(moved_opt, moved)["step"]) == 5
    a, b = src.adapter_weights(model), dst.adapter_weights(moved)
    for k in a:
        assert rel(a[k], b[k]) < 1e-4, k


def test_python_m_nano_core_fuse_writes_a_plain_checkpoint_of_the_merged_model(tmp_path, shared_data):
    """The CLI on a LoRA checkpoint in the layout the train commands write (adapters alone in model.safetensors,
    meta 'lora' and 'base': the base's source and hash): the result loads as a plain model whose logits are the
    adapter model's."""
    from nano_core.checkpoint import load_checkpoint, save_checkpoint
    from nano_core.fuse import main
    from nano_core.pretrained import weights_hash

    b = backend_class("torch")(device="cpu", dtype="fp32")
    cfg, lora = ModelConfig.from_dict(CFG), LoraConfig(rank=4, alpha=8.0, targets=("wq", "wv", "fc"))
    model, opt = lora_model(b, cfg, lora)
    step = b.make_train_step(model, opt, 1, 1.0, seed=0)
    for i in range(2):
        step(real_batch(shared_data, offset=i * 900), 1e-2, i)
    plain = {"model_config": cfg.to_dict(), "train_config": {}, "loader_state": {}}
    base = save_checkpoint(tmp_path / "base", 0, b.model_weights(model), {}, plain)
    base_info = {"source": str(base), "hash": weights_hash(b.model_weights(model))}
    meta = {**plain, "lora": lora.to_dict(), "base": base_info}
    ckpt = save_checkpoint(tmp_path / "sft", 2, b.adapter_weights(model), b.optimizer_state(opt, model), meta)
    main(["--ckpt", str(ckpt), "--out", str(tmp_path / "fused")])
    weights, optim, fmeta = load_checkpoint(tmp_path / "fused")
    assert set(weights) == set(cfg.param_shapes()) and "lora" not in fmeta and fmeta["fused_from"]["lora"]["rank"] == 4
    x = real_batch(shared_data, offset=7000)[:, :-1]
    assert rel(logits(b, model, x), logits(b, b.build_model(cfg, weights), x)) <= 1e-5
    with pytest.raises(SystemExit, match="not a LoRA checkpoint"):
        main(["--ckpt", str(tmp_path / "fused"), "--out", str(tmp_path / "again")])
    with pytest.raises(SystemExit, match="holds nano checkpoints"):
        main(["--ckpt", str(ckpt), "--out", str(tmp_path / "fused")])
