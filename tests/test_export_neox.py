"""The gpt_neox layout: a RoPE (full or partial) + LayerNorm + GELU model leaves nano as a directory that
transformers' GPTNeoXForCausalLM and mlx-lm's gpt_neox run with nano's logits (fp32, <= 1e-4) and greedy tokens,
comes back with --init-from unchanged, and a GPT-NeoX checkpoint transformers itself wrote imports with
transformers' logits. CPU, no network, tiny configs."""
import json
import os

os.environ.setdefault("MLX_ENABLE_TF32", "0")

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from nano_core import hf  # noqa: E402
from nano_core.config import ModelConfig  # noqa: E402
from nano_core.export import export_model  # noqa: E402
from nano_core.hf_neox import qkv_rows  # noqa: E402
from nano_core.init import init_weights  # noqa: E402
from nano_core.pretrained import load_init_from  # noqa: E402
from nano_torch.backend import Backend  # noqa: E402
from helpers import greedy_in_three  # noqa: E402
from tokenizer import BPETokenizer  # noqa: E402

mx.set_default_device(mx.cpu)

V = 300
NEOX = dict(vocab_size=V, n_layer=2, n_head=4, n_embd=64, seq_len=32, pos="rope", norm="layernorm",
            mlp="gelu_tanh", bias=True)
SHAPES = {  # name -> (change, mlx-lm runs it exactly)
    "full-rope-tied": ({}, True),
    "partial-0.25-untied": (dict(rope_pct=0.25, tie_embeddings=False, rope_theta=500.0), True),
    "partial-0.5-no-bias": (dict(rope_pct=0.5, bias=False, norm_eps=1e-6), True),
    "exact-gelu": (dict(mlp="gelu", rope_pct=0.5), False),
}
PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak."


@pytest.fixture(scope="module")
def tok(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    return BPETokenizer.train([text], vocab_size=V, progress=False, num_workers=1)


def weights(cfg, seed=0, scale=3.0):
    """nano's init scaled up, every vector randomised (zero biases and unit norms would hide a mapping mistake):
    attention far from uniform, so a q/k/v order or a RoPE convention mistake shows in the logits."""
    rng = np.random.default_rng(seed + 1)
    w = init_weights(cfg, seed)
    for k, a in w.items():
        w[k] = (a + 0.1 * rng.standard_normal(a.shape) if a.ndim == 1 else a * scale).astype(np.float32)
    for k in ("wte.weight", "lm_head.weight"):  # a larger head: logits spread well past 1
        if k in w:
            w[k] *= 5
    return w


def nano_logits(cfg, w, ids):
    be = Backend(device="cpu", dtype="fp32")
    model = be.build_model(cfg, w)
    with be.inference(model):
        return model(torch.tensor([ids])).float().numpy()[0]


def export(cfg, w, tok, out):
    notices = []
    export_model(cfg, w, tok, out, notices=notices.append)
    return notices


def test_the_fused_qkv_rows_are_each_heads_q_then_k_then_v():
    q, k, v = (np.full((2 * 3, 1), x) for x in (1.0, 2.0, 3.0))  # 2 heads of head_dim 3
    q[:, 0] += np.arange(6)
    fused = np.concatenate([q, k, v])[qkv_rows(2, 3)][:, 0]
    assert fused.tolist() == [1, 2, 3, 2, 2, 2, 3, 3, 3, 4, 5, 6, 2, 2, 2, 3, 3, 3]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_neox_export_gives_nanos_logits_in_transformers_and_mlx_lm(shape, tok, tmp_path):
    import mlx_lm
    from transformers import AutoModelForCausalLM
    change, mlx_exact = SHAPES[shape]
    cfg = ModelConfig(**{**NEOX, **change}).validate()
    assert hf.export_layout(cfg) == "gpt_neox"
    w = weights(cfg)
    notices = export(cfg, w, tok, tmp_path / "out")
    conf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert conf["model_type"] == "gpt_neox" and conf["use_parallel_residual"] is False
    assert int(cfg.head_dim * conf["rotary_pct"]) == cfg.rope_dim
    ids = tok.encode(PROMPT)[:cfg.seq_len]
    ref = nano_logits(cfg, w, ids)
    assert np.abs(ref).max() > 5.0  # far from uniform: the comparison means something
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()(torch.tensor([ids])).logits.numpy()[0]
    assert np.abs(got - ref).max() <= 1e-4
    model, _ = mlx_lm.load(str(tmp_path / "out"))
    mlx = np.array(model(mx.array([ids]))[0])
    if mlx_exact:
        assert np.abs(mlx - ref).max() <= 1e-4
        assert [n for n in notices if "bias" not in n] == []
    else:  # mlx-lm's gpt_neox hard-codes the tanh GELU: it runs this model with gelu_tanh, exactly that, announced
        tanh_twin = nano_logits(ModelConfig(**{**cfg.to_dict(), "mlp": "gelu_tanh"}), w, ids)
        assert np.abs(mlx - tanh_twin).max() <= 1e-4 < np.abs(mlx - ref).max()
        assert any("mlx-lm's gpt_neox" in n and "tanh GELU" in n for n in notices)
    assert all("\n" not in n for n in notices)


def test_greedy_generation_is_the_same_in_nano_transformers_and_mlx_lm(tok, tmp_path):
    cfg = ModelConfig(**NEOX, rope_pct=0.5).validate()
    w = weights(cfg, seed=3, scale=6.0)
    export(cfg, w, tok, tmp_path / "out")
    ours, theirs, steps, _ = greedy_in_three(cfg, w, tok, tmp_path / "out")
    assert theirs == ours and [s.token for s in steps] == ours


@pytest.mark.parametrize("change", [dict(rope_pct=0.25), dict(tie_embeddings=False, mlp="gelu")])
def test_neox_export_imports_back_with_init_from_unchanged(change, tok, tmp_path):
    cfg = ModelConfig(**{**NEOX, **change}).validate()
    w = weights(cfg)
    export(cfg, w, tok, tmp_path / "a")
    init = load_init_from(str(tmp_path / "a"), log=lambda m: None)
    assert init.model_config == cfg and init.tokenizer.encode(PROMPT) == tok.encode(PROMPT)
    assert sorted(init.weights) == sorted(w) and all(np.array_equal(init.weights[k], w[k]) for k in w)
    export(init.model_config, init.weights, tok, tmp_path / "b")
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_a_bias_free_model_imports_back_as_zero_biases_with_the_same_logits(tok, tmp_path):
    cfg = ModelConfig(**{**NEOX, "bias": False}).validate()
    w = weights(cfg)
    export(cfg, w, tok, tmp_path / "a")
    cfg2, w2, _, _ = hf.load_pretrained(tmp_path / "a", tokenizer=False)
    assert cfg2.bias and all(not w2[k].any() for k in w2 if k.endswith(".bias"))
    ids = tok.encode(PROMPT)[:cfg.seq_len]
    assert np.abs(nano_logits(cfg2, w2, ids) - nano_logits(cfg, w, ids)).max() <= 1e-5


@pytest.mark.parametrize("pct,tied,act", [(0.25, False, "gelu"), (0.5, True, "gelu_new"), (1.0, False, "relu")])
def test_a_neox_checkpoint_transformers_wrote_imports_with_the_same_logits(pct, tied, act, tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    conf = GPTNeoXConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, hidden_act=act, layer_norm_eps=1e-6,
                         use_parallel_residual=False, tie_word_embeddings=tied,
                         rope_parameters={"rope_type": "default", "rope_theta": 300.0, "partial_rotary_factor": pct})
    model = GPTNeoXForCausalLM(conf)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    model.eval().save_pretrained(tmp_path / "hf")
    cfg, w, _, _ = hf.load_pretrained(tmp_path / "hf", tokenizer=False)
    assert (cfg.rope_dim, cfg.rope_theta, cfg.norm_eps, cfg.hidden, cfg.tie_embeddings) == (
        int(16 * pct), 300.0, 1e-6, 96, tied)
    ids = list(np.random.default_rng(1).integers(0, V, 20))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits.numpy()[0]
    assert np.abs(nano_logits(cfg, w, ids) - ref).max() <= 1e-4


FOREIGN_REFUSED = {  # change to a sequential gpt_neox config.json -> words the one-line message must hold
    "parallel": (dict(use_parallel_residual=True), "use_parallel_residual=true"),
    "odd-rotary": (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.2}),
                   "rotates 3 of 16"),
    "silu": (dict(hidden_act="silu"), "hidden_act 'silu'"),
    "no-attention-bias": (dict(attention_bias=False), "attention_bias=false"),
    "scaled": (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "rope scaling"),
}


@pytest.mark.parametrize("name", list(FOREIGN_REFUSED))
def test_neox_options_nano_cannot_import_are_one_line_errors(name, tok, tmp_path):
    cfg = ModelConfig(**NEOX).validate()
    export(cfg, weights(cfg), tok, tmp_path / "hf")
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    change, words = FOREIGN_REFUSED[name]
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**conf, **change}))
    with pytest.raises(ValueError) as e:
        hf.load_pretrained(tmp_path / "hf")
    assert words in str(e.value) and "\n" not in str(e.value)


REFUSED = {  # change to the neox block -> words the one-line message must hold
    "gqa": (dict(n_kv_head=2), "n_kv_head=2"),
    "swiglu": (dict(mlp="swiglu"), "mlp='swiglu'"),
    "rmsnorm-gelu": (dict(norm="rmsnorm"), "norm='rmsnorm'"),
    "qk_norm": (dict(qk_norm=True), "qk_norm=True"),
    "window": (dict(window=8), "window=8"),
    "yarn": (dict(rope_scaling={"type": "yarn", "factor": 2.0, "original_max_len": 16}), "rope_scaling"),
    "partial-in-llama": (dict(norm="rmsnorm", mlp="swiglu", rope_pct=0.5), "gpt_neox"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_gpt_neox_cannot_hold_is_refused_in_one_line(name, tok, tmp_path):
    change, words = REFUSED[name]
    cfg = ModelConfig(**{**NEOX, **change}).validate()
    with pytest.raises(ValueError) as e:
        export(cfg, init_weights(cfg), tok, tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith("cannot export") and words in msg and "nearest exportable" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()
