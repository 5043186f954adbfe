"""The `gpt_neox` layout (transformers' GPTNeoXForCausalLM, mlx-lm's models/gpt_neox.py): RoPE (full or partial)
+ LayerNorm + a GELU MLP, the block of the Pythia models and of Transformers-style GPTs. Backend-free (numpy only);
nano_core/hf.py dispatches here.

What the two loaders do, and so what an export must match (read from transformers 5 and mlx-lm 0.32):
- Block: nano's is sequential (x + attn(ln_1(x)), then + mlp(ln_2(.))); GPT-NeoX's default is the parallel
  residual, so config.json says use_parallel_residual=false (both loaders read it; import refuses true).
- Fused attention: `query_key_value` (3*d, d) viewed as (heads, 3*head_dim): each head's q rows, then its k rows,
  then its v rows (per-head interleaved, not q-all/k-all/v-all as GPT-2's c_attn). `qkv_rows` is that permutation.
  Neither loader has GQA (the fused matrix is MHA only).
- RoPE: both rotate the first rotary_ndims = int(head_dim * rotary_pct) dims of each head in the half-split
  ("rotate_half") convention with frequencies base^(-2j/rotary_ndims): nano's convention (nano_core/init.py
  rope_tables) with the same positive angle, so q and k need no change. rotary_pct is written as rope_dim/head_dim
  (nano rounds rope_pct down to an even number of dims), rotary_emb_base as rope_theta. transformers 5 reads
  rope_parameters (partial_rotary_factor, rope_theta; its default factor when absent is 0.25), mlx-lm the top-level
  rotary_pct / rotary_emb_base: both are written.
- GELU: transformers runs the hidden_act config.json names ("gelu" = exact erf, "gelu_new" = tanh form, "relu");
  mlx-lm's gpt_neox always runs nn.gelu_approx (the tanh form) with a 4*d MLP. So mlp='gelu_tanh' runs exactly in
  both; mlp='gelu' (the exact GELU, transformers' gpt_neox default) runs exactly in transformers and as the tanh
  GELU in mlx-lm (a ~1e-3 difference per activation: announced); relu only in transformers.
- Biases: mlx-lm's layers always have them (nn.Linear's default), LayerNorm with weight and bias; a bias=False
  model is written with zero biases (the same function) and imports back as bias=True with those zeros.
- Head: `embed_out.weight` (mlx-lm's name; transformers renames it to lm_head on load). mlx-lm always has its own
  head, so a tied model writes embed_out = embed_in and says tie_word_embeddings=true (transformers then ties).
- eps: layer_norm_eps in both. Attention scale 1/sqrt(head_dim) in both.
Names: transformers writes "gpt_neox.layers.N.attention.query_key_value.weight" ...; mlx-lm's sanitize maps the
same file names onto its own modules, so one file serves both.
"""
from __future__ import annotations

import numpy as np

from nano_core.config import ModelConfig
from nano_core.hf_gpt2 import GPT2_ACTIVATIONS, GPT2_ACTIVATIONS_IN, activation_notices

NEOX_BLOCK = [
    ("ln_1.weight", "input_layernorm.weight", None),
    ("ln_1.bias", "input_layernorm.bias", None),
    (("attn.wq.weight", "attn.wk.weight", "attn.wv.weight"), "attention.query_key_value.weight", "qkv"),
    (("attn.wq.bias", "attn.wk.bias", "attn.wv.bias"), "attention.query_key_value.bias", "qkv"),
    ("attn.wo.weight", "attention.dense.weight", None),
    ("attn.wo.bias", "attention.dense.bias", None),
    ("ln_2.weight", "post_attention_layernorm.weight", None),
    ("ln_2.bias", "post_attention_layernorm.bias", None),
    ("mlp.fc.weight", "mlp.dense_h_to_4h.weight", None),
    ("mlp.fc.bias", "mlp.dense_h_to_4h.bias", None),
    ("mlp.proj.weight", "mlp.dense_4h_to_h.weight", None),
    ("mlp.proj.bias", "mlp.dense_4h_to_h.bias", None),
]
NEOX_TOP = [
    ("wte.weight", "embed_in.weight", None),
    ("ln_f.weight", "final_layer_norm.weight", None),
    ("ln_f.bias", "final_layer_norm.bias", None),
    ("lm_head.weight", "embed_out.weight", None),
]
NEOX_HEAD = "embed_out.weight"
NEOX_NEAREST = "pos='rope', norm='layernorm', mlp='gelu_tanh', n_kv_head=None (gpt_neox; rope_pct may be < 1)"


def qkv_rows(n_head: int, head_dim: int) -> np.ndarray:
    """Row order that turns concat(wq, wk, wv) (q of every head, then k, then v) into GPT-NeoX's fused
    query_key_value (per head: its q, k, v rows): fused = concat[qkv_rows(...)]; concat = fused[argsort(...)]."""
    part, head, j = np.meshgrid(np.arange(3), np.arange(n_head), np.arange(head_dim), indexing="ij")
    fused_order = (part * n_head + head) * head_dim + j  # source row in concat, indexed by (part, head, j)
    return fused_order.transpose(1, 0, 2).reshape(-1)    # fused row (head, part, j) <- concat row


def with_biases(cfg: ModelConfig) -> ModelConfig:
    """cfg with bias=True: the parameter set a gpt_neox file always holds (nano_core/hf.py fills zeros)."""
    return ModelConfig(**{**cfg.to_dict(), "bias": True})


def neox_misfits(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(option, what to set instead) for everything a RoPE cfg has that gpt_neox cannot hold; [] if all fit.
    Window, RoPE scaling and the nanochat block are checked before this (nano_core/hf.py export_layout)."""
    checks = [
        (cfg.norm == "layernorm", f"norm={cfg.norm!r}", "norm='layernorm'"),
        (cfg.mlp in GPT2_ACTIVATIONS, f"mlp={cfg.mlp!r}", "mlp='gelu_tanh' (what mlx-lm's gpt_neox runs)"),
        (cfg.kv_heads == cfg.n_head, f"n_kv_head={cfg.n_kv_head} (GQA/MQA)",
         "n_kv_head=None (gpt_neox's fused query_key_value is MHA only)"),
        (not cfg.qk_norm, "qk_norm=True", "qk_norm=False"),
    ]
    return [(option, fix) for ok, option, fix in checks if not ok]


def exact_pct(rotated: int, head_dim: int) -> float:
    """A fraction for which int(head_dim * pct) (both loaders) and nano's 2 * int(head_dim * pct / 2) are `rotated`
    (even): the plain quotient can round to just below it, which would lose a rotated pair of dims."""
    pct = rotated / head_dim
    while head_dim * pct < rotated:
        pct = float(np.nextafter(pct, 2.0))
    return pct


def rotary_pct(cfg: ModelConfig) -> float:
    return exact_pct(cfg.rope_dim, cfg.head_dim)


def neox_config(cfg: ModelConfig, common: dict) -> dict:
    """config.json fields for gpt_neox (transformers reads rope_parameters, mlx-lm the top-level rotary_*)."""
    pct = rotary_pct(cfg)
    return {**common, "hidden_size": cfg.n_embd, "intermediate_size": cfg.hidden, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "hidden_act": GPT2_ACTIVATIONS[cfg.mlp],
            "max_position_embeddings": cfg.seq_len, "layer_norm_eps": cfg.norm_eps, "use_parallel_residual": False,
            "rotary_pct": pct, "rotary_emb_base": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": pct},
            "attention_bias": True, "attention_dropout": cfg.dropout_attn, "hidden_dropout": cfg.dropout_resid}


def neox_notices(cfg: ModelConfig) -> list[str]:
    out = activation_notices(cfg, "gpt_neox")
    if not cfg.bias:
        out.append("bias=False is written as zero biases (gpt_neox layers always have them): the same model; an "
                   "import gives bias=True with those zeros")
    if cfg.rope_pct != rotary_pct(cfg):
        out.append(f"rope_pct={cfg.rope_pct} rotates {cfg.rope_dim} of {cfg.head_dim} dims per head: written as "
                   f"rotary_pct={rotary_pct(cfg):.6g}, the same rotation")
    if cfg.dropout_emb != cfg.dropout_resid:
        out.append(f"dropout_emb={cfg.dropout_emb} has no gpt_neox field (hidden_dropout={cfg.dropout_resid} covers "
                   f"both; training only, inference is unaffected)")
    return out


def neox_names(tensors: dict) -> dict:
    """Tensors under the names the table uses (no "gpt_neox." prefix, the head as embed_out), whether a file was
    written by nano, by transformers (which may save the head as lm_head) or for mlx-lm."""
    out = {}
    for k, v in tensors.items():
        k = k[len("gpt_neox."):] if k.startswith("gpt_neox.") else k
        out["embed_out.weight" if k == "lm_head.weight" else k] = v
    return out


def neox_model_config(c: dict, theta: float, partial: float, notes: list[str]) -> ModelConfig:
    """A ModelConfig from a gpt_neox config.json dict; ValueError (one line) for what nano cannot represent."""
    if c.get("use_parallel_residual", True):
        raise ValueError("use_parallel_residual=true (GPT-NeoX's parallel block) is not something nano imports: "
                         "nano's block is sequential")
    act = c.get("hidden_act", "gelu")
    if act not in GPT2_ACTIVATIONS_IN:
        raise ValueError(f"hidden_act {act!r} is not one nano has ({', '.join(GPT2_ACTIVATIONS_IN)})")
    if not c.get("attention_bias", True):
        raise ValueError("attention_bias=false with the MLP's biases: nano's bias option is all or none")
    d, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    if d % heads:
        raise ValueError(f"hidden_size={d} is not divisible by num_attention_heads={heads}")
    kv = c.get("num_key_value_heads")
    if kv not in (None, heads):
        raise ValueError(f"num_key_value_heads={kv} in a gpt_neox model: its fused query_key_value is MHA only")
    hd = d // heads
    rotated = int(hd * partial)
    if rotated < 2 or rotated % 2:
        raise ValueError(f"partial_rotary_factor={partial} rotates {rotated} of {hd} dims per head; nano rotates "
                         f"an even number >= 2")
    drop, hidden_drop = float(c.get("attention_dropout") or 0.0), float(c.get("hidden_dropout") or 0.0)
    if drop or hidden_drop:
        notes.append(f"dropout from config.json carried over (dropout_attn={drop}, dropout_emb=dropout_resid="
                     f"{hidden_drop}); set dropout_* to change it")
    inner = int(c["intermediate_size"])
    cfg = ModelConfig(vocab_size=int(c["vocab_size"]), n_layer=int(c["num_hidden_layers"]), n_head=heads, n_embd=d,
                      seq_len=int(c.get("max_position_embeddings") or 2048), mlp=GPT2_ACTIVATIONS_IN[act],
                      mlp_hidden=None if inner == 4 * d else inner, norm="layernorm",
                      norm_eps=float(c.get("layer_norm_eps") or 1e-5), pos="rope", rope_theta=theta,
                      rope_pct=exact_pct(rotated, hd), bias=True, dropout_attn=drop, dropout_emb=hidden_drop,
                      dropout_resid=hidden_drop, tie_embeddings=bool(c.get("tie_word_embeddings", False)))
    return cfg.validate()
