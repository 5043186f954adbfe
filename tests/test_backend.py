"""The backend interface (nano_core/backend.py): one contract suite that both nano_torch.backend.Backend and
nano_mlx.backend.Backend must pass, the two taking the same steps, and what each backend chooses on its own
(dtype, attention kernel, BLAS notices). CPU, fp32, tiny models, real text."""
import os

os.environ.setdefault("MLX_ENABLE_TF32", "0")  # before mlx is imported (irrelevant on CPU, but parity is the point)

import numpy as np
import pytest

from nano_core.backend import step_seed
from nano_core.config import ModelConfig
from nano_core.init import init_weights

from helpers import BACKEND_CFG as CFG
from helpers import backend_class, real_batch

@pytest.fixture(params=["torch", "mlx"])
def backend(request):
    return backend_class(request.param)(device="cpu", dtype="fp32")


def fresh(backend, cfg=None, seed=0):
    cfg = cfg or ModelConfig.from_dict(CFG)
    model = backend.build_model(cfg, init_weights(cfg, seed))
    return model, backend.build_optimizer(model, 1e-2, (0.9, 0.95), 1e-8, 0.1)


# ----------------------------------------------------------------------------- the contract, for each backend
def test_auto_settings_resolve_to_concrete_choices_and_bad_ones_are_one_line_errors(backend):
    assert backend.name in ("torch", "mlx") and backend.device == "cpu"
    assert backend.dtype == "fp32" and isinstance(backend.dtype_why, str)
    assert backend.attn_impl in ("sdpa", "eager") and isinstance(backend.compile, bool)
    cls = type(backend)
    auto = cls()
    assert auto.dtype in ("fp32", "bf16") and auto.attn_impl in ("sdpa", "eager", "flash")
    for bad in (dict(dtype="fp16", device="cpu"), dict(dtype="fp8"), dict(device="tpu")):
        with pytest.raises(ValueError) as err:
            cls(**bad)
        assert "\n" not in str(err.value) and str(err.value)


def test_weights_go_in_and_come_out_bit_identical(backend):
    cfg = ModelConfig.from_dict({**CFG, "tie_embeddings": False, "n_kv_head": 2})
    weights = init_weights(cfg, 3)
    model = backend.build_model(cfg, weights)
    out = backend.model_weights(model)
    assert model.cfg == cfg and out.keys() == weights.keys()
    for name, w in weights.items():
        assert out[name].dtype == np.float32 and np.array_equal(out[name], w), name
    assert backend.num_params(model) == cfg.num_params()


def test_train_step_returns_the_mean_loss_of_its_micro_batches_before_the_update(backend, shared_data):
    model, opt = fresh(backend)
    batch = real_batch(shared_data, rows=4)
    with backend.inference(model):
        nats = backend.token_losses(model, batch)
    assert nats.shape == (4, 32) and nats.dtype == np.float32
    before = backend.model_weights(model)
    step = backend.make_train_step(model, opt, grad_accum=2, grad_clip=1.0, seed=0)  # 2 micro-batches of 2 rows
    loss = backend.loss_value(step(batch, 1e-2, 0))
    assert loss == pytest.approx(float(nats.mean()), rel=1e-5)
    after = backend.model_weights(model)
    assert all(not np.array_equal(before[k], after[k]) for k in before)  # every parameter was updated


def test_a_model_without_lora_has_no_adapters_and_a_loss_mask_is_a_masked_mean(backend, shared_data):
    model, opt = fresh(backend)
    cfg = model.cfg
    assert model.lora is None and backend.adapter_weights(model) == {}
    assert backend.num_total_params(model) == backend.num_params(model) == cfg.num_params()
    batch = real_batch(shared_data, rows=4)
    with backend.inference(model):
        nats = backend.token_losses(model, batch)
    mask = np.zeros((4, 32), np.float32)
    mask[:, 20:] = 1.0
    mask[3, 5:] = 1.0  # the two micro-batches count different numbers of targets
    step = backend.make_train_step(model, opt, grad_accum=2, grad_clip=1.0, seed=0)
    loss = backend.loss_value(step(batch, 1e-2, 0, mask=mask))
    assert loss == pytest.approx(float((nats * mask).sum() / mask.sum()), rel=1e-5)  # the whole step's masked mean
    with pytest.raises(ValueError, match="loss mask has shape") as err:
        step(batch, 1e-2, 1, mask=mask[:2])
    assert "\n" not in str(err.value)


def test_optimizer_state_round_trip_continues_the_run_exactly(backend, shared_data):
    batches = [real_batch(shared_data, offset=i * 2000) for i in range(3)]
    model, opt = fresh(backend)
    step = backend.make_train_step(model, opt, 1, 1.0, seed=0)
    for i in range(2):
        step(batches[i], 1e-2, i)
    state = backend.optimizer_state(opt, model)
    assert int(state["step"]) == 2
    names = backend.model_weights(model).keys()
    assert {f"{n}.exp_avg" for n in names} | {f"{n}.exp_avg_sq" for n in names} | {"step"} == set(state)
    cfg = ModelConfig.from_dict(CFG)
    copy = backend.build_model(cfg, backend.model_weights(model))
    copy_opt = backend.build_optimizer(copy, 1e-2, (0.9, 0.95), 1e-8, 0.1)
    backend.load_optimizer_state(copy_opt, copy, state)
    want = backend.loss_value(step(batches[2], 1e-2, 2))
    got = backend.loss_value(backend.make_train_step(copy, copy_opt, 1, 1.0, seed=0)(batches[2], 1e-2, 2))
    assert got == want
    a, b = backend.model_weights(model), backend.model_weights(copy)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_an_optimizer_state_of_another_model_is_refused_in_one_line(backend):
    model, opt = fresh(backend)
    bigger = ModelConfig.from_dict({**CFG, "n_embd": 64})
    other_model, other_opt = fresh(backend, bigger)
    state = backend.optimizer_state(other_opt, other_model)
    state["step"] = np.asarray(5, dtype=np.int64)
    with pytest.raises(ValueError, match="shape") as err:
        backend.load_optimizer_state(opt, model, state)
    assert "\n" not in str(err.value)


def test_dropout_masks_are_a_function_of_seed_and_step(backend, shared_data):
    cfg = ModelConfig.from_dict({**CFG, "dropout_resid": 0.3, "dropout_emb": 0.2})
    batch = real_batch(shared_data)

    def first_loss(seed: int, index: int) -> float:
        model, opt = fresh(backend, cfg)
        return backend.loss_value(backend.make_train_step(model, opt, 1, 1.0, seed=seed)(batch, 1e-2, index))

    assert first_loss(0, 7) == first_loss(0, 7)  # a fresh process state draws the same masks again
    assert first_loss(0, 7) != first_loss(0, 8) and first_loss(0, 7) != first_loss(1, 7)
    assert step_seed(0, 7) != step_seed(0, 8) and 0 <= step_seed(2**40, 2**40) < 2**32


def test_inference_is_deterministic_and_gives_back_training_mode(backend, shared_data):
    cfg = ModelConfig.from_dict({**CFG, "dropout_resid": 0.5})
    model, _ = fresh(backend, cfg)
    batch = real_batch(shared_data)
    with backend.inference(model):
        a = backend.token_losses(model, batch)
        b = backend.token_losses(model, batch)
    assert np.array_equal(a, b)  # no dropout inside
    assert model.training  # training mode is back


def test_next_logits_with_the_cache_equal_a_full_forward(backend, shared_data):
    model, _ = fresh(backend)
    ids = real_batch(shared_data, rows=1)[0, :20].tolist()
    with backend.inference(model):
        full = backend.next_logits(model, ids, backend.make_cache(model, 1, 32))
        cache = backend.make_cache(model, 1, 32)
        backend.next_logits(model, ids[:12], cache)
        for t in ids[12:-1]:
            backend.next_logits(model, [t], cache)
        stepwise = backend.next_logits(model, [ids[-1]], cache)
    assert cache.pos == 20 and full.shape == (256,) and full.dtype == np.float32
    np.testing.assert_allclose(stepwise, full, rtol=1e-4, atol=1e-5)


def test_machine_figures_are_real_readings(backend):
    flops, how = backend.measure_peak_flops()
    assert flops > 1e8 and "matmul" in how
    backend.reset_peak_memory()
    model, _ = fresh(backend)
    backend.sync()
    nbytes, method = backend.peak_memory()
    assert 0 < nbytes < 64 * 2**30 and method  # bytes (a KiB/bytes mix-up would be off by 2**10)
    assert backend.set_memory_limit(None) is None
    assert all(isinstance(n, str) and "\n" not in n for n in backend.notices())


# ----------------------------------------------------------------------------- the two backends agree
def test_both_backends_take_the_same_steps(shared_data):
    """Same init, same batches, same hyperparameters: the losses of 4 steps (with accumulation, clipping and a
    changing learning rate) and the weights after them agree across frameworks (fp32 rounding only)."""
    torch_b = backend_class("torch")(device="cpu", dtype="fp32")
    mlx_b = backend_class("mlx")(device="cpu", dtype="fp32")
    runs = {}
    for b in (torch_b, mlx_b):
        model, opt = fresh(b)
        step = b.make_train_step(model, opt, 2, 0.5, seed=0)
        losses = [b.loss_value(step(real_batch(shared_data, offset=i * 4000), 1e-3 * (i + 1), i)) for i in range(4)]
        runs[b.name] = losses, b.model_weights(model)
    (lt, wt), (lm, wm) = runs["torch"], runs["mlx"]
    np.testing.assert_allclose(lm, lt, rtol=1e-5)
    for k in wt:
        np.testing.assert_allclose(wm[k], wt[k], rtol=1e-4, atol=1e-5, err_msg=k)


# ----------------------------------------------------------------------------- each backend's own choices
def test_torch_dtype_choice_is_keyed_on_device_type(monkeypatch):
    import torch

    from nano_torch import backend as tb

    monkeypatch.setitem(tb.FAST_BF16, "cpu", lambda: True)
    assert tb.pick_dtype("auto", "cpu")[0] == "bf16"
    assert tb.pick_dtype("auto", "mps")[0] == "fp32"
    assert tb.pick_dtype("bf16", "mps")[0] == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        tb.pick_dtype("fp16", "cpu")
    ctx = tb.autocast("cpu", "bf16")
    assert ctx.device == "cpu" and ctx.fast_dtype == torch.bfloat16
    monkeypatch.undo()
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    assert tb.cpu_has_fast_bf16() == (" avx512_bf16" in flags or " amx_bf16" in flags)


def test_torch_fp16_brings_a_grad_scaler_only_where_it_can_run():
    from nano_torch.backend import Backend

    with pytest.raises(ValueError, match="needs CUDA"):
        Backend(device="cpu", dtype="fp16")


def test_mlx_dtype_choice():
    from nano_mlx import backend as mb

    assert mb.pick_dtype("auto", "cpu")[0] == "fp32"
    assert mb.pick_dtype("auto", "gpu", brand="Apple M3 Max")[0] == "bf16"  # bf16 hardware from M3 on
    assert mb.pick_dtype("auto", "gpu", brand="Apple M2 Pro")[0] == "fp32"  # emulated on M1/M2
    assert mb.pick_dtype("auto", "gpu", brand="")[0] == "fp32"  # unknown chip: the safe side
    with pytest.raises(ValueError, match="fp16"):
        mb.pick_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="PyTorch/CUDA kernel"):
        mb.pick_attn_impl("flash", "cpu", "fp32")


def test_mlx_blas_notice_names_the_openblas_to_preload(monkeypatch):
    from nano_mlx import backend as mb

    libs = {"/venv/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0",
            "/venv/numpy.libs/libscipy_openblas64_-32a4b2a6.so"}  # numpy's own copy does not count
    monkeypatch.setattr(mb.sys, "platform", "linux")
    monkeypatch.setattr(mb, "mapped_libraries", lambda: libs)
    monkeypatch.setattr(mb.glob, "glob", lambda g: ["/usr/lib/x/openblas-pthread/libopenblas.so.0"]
                        if "openblas-pthread" in g else [])
    notice = mb.blas_notice()
    assert "LD_PRELOAD=/usr/lib/x/openblas-pthread/libopenblas.so.0" in notice
    libs.add("/usr/lib/x/openblas-pthread/libopenblasp-r0.3.21.so")
    assert mb.blas_notice() is None  # preloaded: nothing to say
    monkeypatch.setattr(mb.glob, "glob", lambda g: [])
    libs.discard("/usr/lib/x/openblas-pthread/libopenblasp-r0.3.21.so")
    assert "apt-get install libopenblas0-pthread" in mb.blas_notice()  # none installed: how to get one
