"""MLX == PyTorch (the llm.c parity recipe): same init, same batch, fp32, TF32 off, bias-corrected AdamW.
For every attention / position / MLP variant: logits (rel 1e-5), gradients, and 10 AdamW steps with clipping, weight
decay and a changing learning rate (losses within 1e-5 relative); the MLX step is compiled the way the training
loop compiles it. Then checkpoint and optimizer-state interchange between the backends."""
import os

os.environ["MLX_ENABLE_TF32"] = "0"  # before mlx is imported

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from nano_core.config import ModelConfig
from nano_core.init import init_weights
from nano_mlx import optim as mlx_optim
from nano_mlx.model import GPT as MlxGPT
from nano_torch import optim as torch_optim
from nano_torch.model import GPT as TorchGPT

mx.set_default_device(mx.cpu)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

SMALL = dict(vocab_size=256, n_layer=2, n_head=4, n_embd=32, seq_len=32)
VARIANTS = {
    "gpt2-learned-gelu": {},
    "sinusoidal-relu": dict(pos="sinusoidal", mlp="relu"),
    "sinusoidal-relu-x-sqrt-d": dict(pos="sinusoidal", mlp="relu", emb_scale=SMALL["n_embd"] ** 0.5),
    "gpt2-gelu-tanh": dict(mlp="gelu_tanh"),
    "nopos-relu2": dict(pos="none", mlp="relu2"),
    "rope-swiglu-rmsnorm-untied": dict(pos="rope", mlp="swiglu", norm="rmsnorm", bias=False, tie_embeddings=False),
    "gqa": dict(pos="rope", n_kv_head=2),
    "mqa-qknorm": dict(pos="rope", n_kv_head=1, qk_norm=True),
    "sliding-all": dict(pos="rope", window=6),
    "sliding-pattern-SL": dict(pos="learned", window=6, window_pattern="SL", n_kv_head=2),
    "rope-partial": dict(pos="rope", rope_pct=0.5),
    "rope-linear": dict(pos="rope", rope_scaling={"type": "linear", "factor": 2.0}),
    "rope-ntk": dict(pos="rope", rope_scaling={"type": "ntk", "factor": 2.0}),
    "rope-yarn": dict(pos="rope", rope_scaling={"type": "yarn", "factor": 4.0, "original_max_len": 16}),
    "softcap": dict(logit_softcap=3.0),
    "nanochat-paramfree-embnorm": dict(pos="rope", mlp="relu2", norm="rmsnorm", qk_norm=True, norm_params=False,
                                       emb_norm=True, bias=False, tie_embeddings=False, logit_softcap=15.0),
    "embnorm-weighted-layernorm": dict(emb_norm=True),
    "rnn-tanh": dict(arch="rnn", pos="none"),
    "rnn-slide": dict(arch="rnn", pos="none", rnn_act="slide"),
}
LRS = [3e-3 * (i + 1) / 10 for i in range(10)]  # a warmup, set every step through set_lr


def real_batch(shared_data, B=4, T=32, offset=0):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[offset:offset + B * (T + 1)]
    return np.frombuffer(text, dtype=np.uint8).astype(np.int32).reshape(B, T + 1)


def pair(cfg, attn_impl="sdpa", seed=0):
    w = init_weights(cfg, seed)
    return TorchGPT(cfg, attn_impl=attn_impl).load_numpy(w), MlxGPT(cfg, attn_impl=attn_impl).load_numpy(w)


def rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(a).max() + 1e-30))


def torch_step(model, opt, x, y, lr):
    torch_optim.set_lr(opt, lr)
    opt.zero_grad(set_to_none=True)
    loss = model.loss(torch.from_numpy(x).long(), torch.from_numpy(y).long())
    loss.backward()
    torch_optim.clip_grad_norm_(model, 0.5)
    opt.step()
    return loss.item()


def compiled_mlx_step(model, opt):
    """The step the training loop compiles: state in and out, lr read from optimizer.state."""
    loss_and_grad = nn.value_and_grad(model, model.loss)
    state = [model.state, opt.state, mx.random.state]

    def step(x, y):
        loss, grads = loss_and_grad(x, y)
        grads, _ = mlx_optim.clip_grad_norm(grads, 0.5)
        opt.update(model, grads)
        return loss

    return mx.compile(step, inputs=state, outputs=state)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_mlx_matches_torch_logits_grads_and_ten_adamw_steps(name, shared_data):
    cfg = ModelConfig(**{**SMALL, **VARIANTS[name]})
    tm, mm = pair(cfg)
    batch = real_batch(shared_data)
    x, y = batch[:, :-1], batch[:, 1:]

    # logits
    with torch.no_grad():
        lt = tm(torch.from_numpy(x).long()).numpy()
    lm = np.array(mm(mx.array(x)))
    assert rel(lt, lm) < 1e-5

    # gradients (normalised by the largest gradient: some are exactly 0 in theory, e.g. the key bias)
    tm.loss(torch.from_numpy(x).long(), torch.from_numpy(y).long()).backward()
    gt = {n: p.grad.numpy() for n, p in tm.named_parameters()}
    _, g = nn.value_and_grad(mm, mm.loss)(mx.array(x), mx.array(y))
    gm = {n: np.array(v) for n, v in tree_flatten(g)}
    assert sorted(gt) == sorted(gm)
    scale = max(np.abs(v).max() for v in gt.values())
    for n in gt:
        np.testing.assert_allclose(gm[n], gt[n], rtol=1e-4, atol=1e-5 * scale, err_msg=n)

    # ten AdamW steps, clipping + weight decay + a changing lr; fresh models from the same init
    tm, mm = pair(cfg)
    topt = torch_optim.build_optimizer(tm, lr=LRS[0], weight_decay=0.1)
    mopt = mlx_optim.build_optimizer(mm, lr=LRS[0], weight_decay=0.1)
    step = compiled_mlx_step(mm, mopt)
    for i, lr in enumerate(LRS):
        b = real_batch(shared_data, offset=i * 1000)
        lt = torch_step(tm, topt, b[:, :-1], b[:, 1:], lr)
        mlx_optim.set_lr(mopt, lr)
        lm = step(mx.array(b[:, :-1]), mx.array(b[:, 1:]))
        mx.eval(lm, mm.state, mopt.state)
        assert abs(lt - lm.item()) / abs(lt) < 1e-5, f"step {i}: torch {lt} mlx {lm.item()}"


@pytest.mark.parametrize("name", ["gqa", "sliding-pattern-SL"])
def test_eager_attention_matches_across_backends(name, shared_data):
    cfg = ModelConfig(**{**SMALL, **VARIANTS[name]})
    tm, mm = pair(cfg, attn_impl="eager")
    x = real_batch(shared_data)[:, :-1]
    with torch.no_grad():
        assert rel(tm(torch.from_numpy(x).long()).numpy(), np.array(mm(mx.array(x)))) < 1e-5


def test_checkpoint_and_optimizer_state_move_between_backends(shared_data):
    cfg = ModelConfig(**{**SMALL, **VARIANTS["rope-swiglu-rmsnorm-untied"]})
    tm, _ = pair(cfg)
    topt = torch_optim.build_optimizer(tm, lr=1e-3)
    for i in range(3):  # train a little so the weights and moments are not the init
        b = real_batch(shared_data, offset=i * 500)
        torch_step(tm, topt, b[:, :-1], b[:, 1:], 1e-3)

    # torch -> mlx: weights and AdamW moments
    mm = MlxGPT(cfg).load_numpy(tm.to_numpy())
    x = real_batch(shared_data, offset=9000)
    with torch.no_grad():
        assert rel(tm(torch.from_numpy(x[:, :-1]).long()).numpy(), np.array(mm(mx.array(x[:, :-1])))) < 1e-5
    mopt = mlx_optim.build_optimizer(mm, lr=1e-3)
    mlx_optim.load_optimizer_state_numpy(mopt, mm, torch_optim.optimizer_state_numpy(topt, tm))
    step = compiled_mlx_step(mm, mopt)
    for i in range(2):
        b = real_batch(shared_data, offset=20000 + i * 500)
        lt = torch_step(tm, topt, b[:, :-1], b[:, 1:], 1e-3)
        lm = step(mx.array(b[:, :-1]), mx.array(b[:, 1:]))
        mx.eval(lm, mm.state, mopt.state)
        assert abs(lt - lm.item()) / abs(lt) < 1e-5
    assert int(mlx_optim.optimizer_state_numpy(mopt, mm)["step"]) == 5

    # mlx -> torch: weights and moments come back equal
    tm2 = TorchGPT(cfg).load_numpy(mm.to_numpy())
    topt2 = torch_optim.build_optimizer(tm2, lr=1e-3)
    torch_optim.load_optimizer_state_numpy(topt2, tm2, mlx_optim.optimizer_state_numpy(mopt, mm))
    st, sm = torch_optim.optimizer_state_numpy(topt, tm), torch_optim.optimizer_state_numpy(topt2, tm2)
    assert int(sm["step"]) == 5
    for k in st:
        if k != "step":
            assert rel(st[k], sm[k]) < 1e-4, k
    with torch.no_grad():
        ids = torch.from_numpy(x[:, :-1]).long()
        assert rel(tm(ids).numpy(), tm2(ids).numpy()) < 1e-5
