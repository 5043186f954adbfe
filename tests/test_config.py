"""The model spec: validation messages, serialisation, presets, parameter counts, FLOPs, the shared initializer."""
import json
import math
import os

os.environ.setdefault("MLX_ENABLE_TF32", "0")

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from nano_core.config import PRESETS, ModelConfig
from nano_core.init import init_weights, rope_inv_freq, rope_tables, sinusoidal_table

mx.set_default_device(mx.cpu)

SMALL = dict(vocab_size=97, n_layer=2, n_head=4, n_embd=32, seq_len=24)

INVALID = [
    (dict(n_embd=500, n_head=8), "n_embd=500 is not divisible by n_head=8"),
    (dict(n_head=8, n_kv_head=3, n_embd=64), "n_head=8 is not divisible by n_kv_head=3"),
    (dict(n_kv_head=0), "n_kv_head=0 must be a positive integer"),
    (dict(mlp="geglu"), "mlp='geglu' is not one of"),
    (dict(norm="batchnorm"), "norm='batchnorm' is not one of"),
    (dict(pos="alibi"), "pos='alibi' is not one of"),
    (dict(arch="lstm"), "arch='lstm' is not one of"),
    (dict(rnn_act="relu"), "rnn_act='relu' is not one of"),
    (dict(vocab_size=0), "vocab_size=0 must be a positive integer"),
    (dict(n_layer=-1), "n_layer=-1 must be a positive integer"),
    (dict(seq_len=2.5), "seq_len=2.5 must be a positive integer"),
    (dict(mlp_hidden=0), "mlp_hidden=0 must be a positive integer"),
    (dict(norm_eps=0.0), "norm_eps=0.0 must be > 0"),
    (dict(dropout_attn=1.0), "dropout_attn=1.0 must be in [0, 1)"),
    (dict(dropout_emb=-0.1), "dropout_emb=-0.1 must be in [0, 1)"),
    (dict(logit_softcap=0.0), "logit_softcap=0.0 must be > 0"),
    (dict(emb_scale=0.0), "emb_scale=0.0 must be a finite number > 0"),
    (dict(emb_scale=-22.6), "emb_scale=-22.6 must be a finite number > 0"),
    (dict(emb_scale=float("inf")), "emb_scale=inf must be a finite number > 0"),
    (dict(emb_scale=float("nan")), "emb_scale=nan must be a finite number > 0"),
    (dict(emb_scale="16"), "emb_scale='16' must be a finite number > 0"),
    (dict(pos="rope", rope_pct=0.0), "rope_pct=0.0 must be in (0, 1]"),
    (dict(pos="rope", rope_pct=0.1), "rotates no dims"),
    (dict(pos="rope", rope_theta=-1.0), "rope_theta=-1.0 must be > 0"),
    (dict(pos="learned", rope_scaling={"type": "linear", "factor": 2.0}), "use pos='rope' or drop rope_scaling"),
    (dict(pos="rope", rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling type='dynamic' is not one of"),
    (dict(pos="rope", rope_scaling={"type": "linear", "factor": 0.5}), "factor=0.5 must be a number >= 1"),
    (dict(pos="rope", rope_scaling={"type": "yarn", "factor": 4.0}), "needs original_max_len"),
    (dict(pos="rope", rope_scaling={"type": "ntk", "factor": 2.0, "alpha": 1}), "unknown keys ['alpha']"),
    (dict(window=0), "window=0 must be a positive integer"),
    (dict(window=8, window_pattern="SXL"), "window_pattern='SXL' must be a non-empty string of S"),
    (dict(window=8, window_pattern=""), "window_pattern='' must be a non-empty string"),
    (dict(arch="rnn", pos="learned"), "arch='rnn' has no position encoding"),
    (dict(arch="rnn", pos="none", window=4), "arch='rnn' has no attention"),
]


@pytest.mark.parametrize("overrides,message", INVALID, ids=[m[:30] for _, m in INVALID])
def test_invalid_config_raises_one_line_error(overrides, message):
    with pytest.raises(ValueError) as e:
        ModelConfig(**{**SMALL, **overrides}).validate()
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_keys_and_presets_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown ModelConfig keys \['n_embed'\]"):
        ModelConfig.from_dict({"n_embed": 64})
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of tiny"):
        ModelConfig.from_preset("huge")


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_validates_and_round_trips_through_json(name, tmp_path):
    cfg = ModelConfig.from_preset(name)
    path = tmp_path / "config.json"
    cfg.to_json(path)
    assert ModelConfig.from_json(path) == cfg
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_json_round_trip_keeps_every_option():
    cfg = ModelConfig(**SMALL, n_kv_head=2, mlp="swiglu", mlp_hidden=48, norm="rmsnorm", pos="rope", rope_pct=0.5,
                      rope_scaling={"type": "yarn", "factor": 4.0, "original_max_len": 16}, window=8,
                      window_pattern="SSL", qk_norm=True, bias=False, dropout_attn=0.1, tie_embeddings=False,
                      logit_softcap=30.0)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(FileNotFoundError, match="model config .* not found"):
        ModelConfig.from_json("/nonexistent/config.json")


def test_preset_sizes_match_their_names():
    assert 4.5e6 < ModelConfig.from_preset("tiny").num_params() < 5.5e6
    assert 25e6 < ModelConfig.from_preset("small").num_params() < 35e6
    assert ModelConfig.from_preset("gpt2-124m").num_params() == 124_439_808  # the published GPT-2 small count
    nano = ModelConfig.from_preset("nano44m")
    assert (nano.n_layer, nano.n_embd, nano.n_head, nano.mlp, nano.pos, nano.seq_len) == \
        (12, 512, 8, "relu", "sinusoidal", 1024)
    assert nano.emb_scale == 50.0  # 1 / init std: the fixed table does not drown the embeddings
    assert all(ModelConfig.from_preset(p).emb_scale == 1.0 for p in PRESETS if p != "nano44m")
    modern = ModelConfig.from_preset("modern")
    assert modern.kv_heads < modern.n_head and modern.pos == "rope" and not modern.tie_embeddings


VARIANTS = {
    "gpt2": {},
    "modern": dict(n_kv_head=2, mlp="swiglu", norm="rmsnorm", pos="rope", bias=False, tie_embeddings=False,
                   qk_norm=True),
    "sinusoidal-relu2-mqa": dict(pos="sinusoidal", mlp="relu2", n_kv_head=1),
    "rnn": dict(arch="rnn", pos="none"),
    "nanochat": dict(mlp="relu2", norm="rmsnorm", pos="rope", bias=False, tie_embeddings=False, qk_norm=True,
                     norm_params=False, emb_norm=True, logit_softcap=15.0),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_num_params_matches_torch_and_mlx_models(name):
    from nano_mlx.model import GPT as MlxGPT
    from nano_torch.model import GPT as TorchGPT
    cfg = ModelConfig(**SMALL, **VARIANTS[name])
    n_torch = sum(p.numel() for p in TorchGPT(cfg).parameters())
    n_mlx = sum(p.size for _, p in tree_flatten(MlxGPT(cfg).parameters()))
    assert n_torch == n_mlx == cfg.num_params() == sum(w.size for w in init_weights(cfg, 0).values())


@pytest.mark.parametrize("name", ["gpt2", "modern", "sinusoidal-relu2-mqa", "nanochat"])
def test_estimate_flops_matches_a_brute_force_count(name):
    """Count every matmul FLOP of one forward+backward of the eager PyTorch model (full attention)."""
    from nano_torch.model import GPT as TorchGPT
    cfg = ModelConfig(**SMALL, **VARIANTS[name])
    model = TorchGPT(cfg, attn_impl="eager").init_weights(0)
    B, T = 2, cfg.seq_len
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    with FlopCounterMode(display=False) as counter:
        model.loss(idx, idx).backward()
    assert counter.get_total_flops() / (B * T) == cfg.estimate_flops()


def test_estimate_flops_for_rnn_matches_a_brute_force_count():
    from nano_torch.model import GPT as TorchGPT
    cfg = ModelConfig(**SMALL, **VARIANTS["rnn"])
    model = TorchGPT(cfg).init_weights(0)
    B, T = 2, cfg.seq_len
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    with FlopCounterMode(display=False) as counter:
        model.loss(idx, idx).backward()
    # the backward skips dL/dh_{-1} (the zero initial state): one d x d matmul per layer and batch row
    skipped = cfg.n_layer * 2 * B * cfg.n_embd ** 2
    assert (counter.get_total_flops() + skipped) / (B * T) == cfg.estimate_flops()


def test_estimate_flops_sliding_layers_use_the_window():
    full = ModelConfig(**SMALL)
    slid = ModelConfig(**SMALL, window=8, window_pattern="SL")  # layer 0 sliding, layer 1 full
    per_key = 12 * full.n_head * full.head_dim
    assert full.estimate_flops() - slid.estimate_flops() == per_key * (full.seq_len - 8)
    assert ModelConfig(**SMALL, window=100).estimate_flops() == full.estimate_flops()  # window >= T: no saving


def test_init_is_deterministic_per_seed_and_gpt2_shaped():
    cfg = ModelConfig(**{**SMALL, "n_layer": 4, "n_embd": 64})
    a, b, c = init_weights(cfg, 0), init_weights(cfg, 0), init_weights(cfg, 1)
    assert list(a) == list(cfg.param_shapes())
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["wte.weight"], c["wte.weight"])
    assert all(v.dtype == np.float32 and v.shape == cfg.param_shapes()[k] for k, v in a.items())
    assert abs(a["wte.weight"].std() - 0.02) < 0.002
    assert abs(a["h.0.attn.wo.weight"].std() - 0.02 / math.sqrt(2 * 4)) < 0.001
    assert not a["h.0.mlp.fc.bias"].any() and (a["h.0.ln_1.weight"] == 1).all()


def test_rope_scaling_frequencies_follow_their_formulas():
    base = ModelConfig(**SMALL, pos="rope")
    inv = rope_inv_freq(base)
    lin = rope_inv_freq(ModelConfig(**SMALL, pos="rope", rope_scaling={"type": "linear", "factor": 4.0}))
    np.testing.assert_allclose(lin, inv / 4)
    ntk = rope_inv_freq(ModelConfig(**SMALL, pos="rope", rope_scaling={"type": "ntk", "factor": 4.0}))
    assert ntk[0] == inv[0] and np.isclose(ntk[-1], inv[-1] / 4)  # highest kept, lowest scaled by exactly s
    yarn = rope_inv_freq(ModelConfig(**SMALL, pos="rope", rope_scaling={"type": "yarn", "factor": 4.0,
                                                                        "original_max_len": 2048}))
    assert yarn[0] == inv[0] and np.isclose(yarn[-1], inv[-1] / 4)  # fast dims kept, slow dims interpolated
    cos, sin = rope_tables(base, 5)
    assert cos.dtype == np.float32 and cos.shape == (5, base.rope_dim // 2)
    pe = sinusoidal_table(3, 8)
    np.testing.assert_allclose(pe[1, 0::2], np.sin(1 / 10000 ** (np.arange(0, 8, 2) / 8)), rtol=1e-6)


def test_a_config_dict_without_the_norm_keys_loads_as_before():
    """Checkpoints written before norm_params / emb_norm existed: the same model, with the same weight names."""
    old = ModelConfig.from_preset("modern-3x192").to_dict()
    del old["norm_params"], old["emb_norm"]
    cfg = ModelConfig.from_dict(old)
    assert cfg.norm_params and not cfg.emb_norm
    assert "h.0.attn.q_norm.weight" in cfg.param_shapes() and "ln_emb.weight" not in cfg.param_shapes()


def test_a_config_dict_without_emb_scale_loads_unscaled():
    """Checkpoints written before emb_scale existed record no such key: the same model, embeddings x 1.0."""
    old = ModelConfig.from_preset("nano44m").to_dict()
    del old["emb_scale"]
    cfg = ModelConfig.from_dict(old)
    assert cfg.emb_scale == 1.0 and cfg.param_shapes() == ModelConfig.from_preset("nano44m").param_shapes()
    assert ModelConfig.from_json(cfg.to_json()).emb_scale == 1.0
    assert ModelConfig.from_dict({**old, "emb_scale": 16}).emb_scale == 16  # an integer in a JSON file is fine


def test_nanochat_presets_have_no_norm_tensors_and_an_embedding_norm():
    for name in ("nanochat-3x192", "nanochat-6x384"):
        cfg = ModelConfig.from_preset(name)
        modern = ModelConfig.from_preset(name.replace("nanochat", "modern"))
        assert not [k for k in cfg.param_shapes() if "ln" in k or "norm" in k]
        assert set(cfg.param_shapes()) < set(modern.param_shapes())
        assert cfg.estimate_flops() == modern.estimate_flops()  # norms carry no matmuls
    with_weights = ModelConfig.from_preset("nanochat-3x192", norm_params=True).param_shapes()
    assert with_weights["ln_emb.weight"] == (192,) and with_weights["h.0.attn.k_norm.weight"] == (64,)


def test_norm_flags_must_be_booleans():
    with pytest.raises(ValueError, match="norm_params='no' must be true or false"):
        ModelConfig(norm_params="no").validate()
