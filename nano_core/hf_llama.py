"""The `llama` and `qwen3` layouts (transformers' LlamaForCausalLM / Qwen3ForCausalLM, mlx-lm's llama.py /
qwen3.py): RoPE (full, unscaled) + RMSNorm + SwiGLU, MHA/GQA/MQA, tied or untied head; llama with biases all on
(attention_bias and mlp_bias) or all off, qwen3 with qk_norm (an RMSNorm over each head's q and k before RoPE) and
no biases. Backend-free (numpy only); nano_core/hf.py dispatches here. Weight names are the loaders' own under
"model." (except lm_head), so no array changes on the way.
"""
from __future__ import annotations

from nano_core.config import ModelConfig

# (nano name, HF name, how): see nano_core/hf.py for the `how` codes.
LLAMA_BLOCK = [
    ("ln_1.weight", "input_layernorm.weight", None),
    *[(f"attn.w{x}.{p}", f"self_attn.{x}_proj.{p}", None) for x in "qkvo" for p in ("weight", "bias")],
    ("attn.q_norm.weight", "self_attn.q_norm.weight", None),
    ("attn.k_norm.weight", "self_attn.k_norm.weight", None),
    ("ln_2.weight", "post_attention_layernorm.weight", None),
    *[(f"mlp.{n}.{p}", f"mlp.{h}_proj.{p}", None) for n, h in (("gate", "gate"), ("fc", "up"), ("proj", "down"))
      for p in ("weight", "bias")],
]
LLAMA_TOP = [
    ("wte.weight", "embed_tokens.weight", None),
    ("ln_f.weight", "norm.weight", None),
    ("lm_head.weight", "lm_head.weight", None),
]


def llama_config(cfg: ModelConfig, layout: str, common: dict) -> dict:
    """config.json fields for llama / qwen3."""
    out = {**common, "hidden_size": cfg.n_embd, "intermediate_size": cfg.hidden, "num_hidden_layers": cfg.n_layer,
           "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
           "hidden_act": "silu", "max_position_embeddings": cfg.seq_len, "rms_norm_eps": cfg.norm_eps,
           # transformers 5 reads rope_parameters, mlx-lm's llama reads the top-level rope_theta: write both.
           "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
           "attention_bias": cfg.bias, "attention_dropout": cfg.dropout_attn}
    if layout == "llama":
        out["mlp_bias"] = cfg.bias
    else:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer,
                   layer_types=["full_attention"] * cfg.n_layer)
    return out


def llama_model_config(c: dict, rope_theta: float, notes: list[str]) -> ModelConfig:
    """A ModelConfig from a llama / qwen3 config.json dict; ValueError (one line) for what nano cannot represent."""
    mt = c.get("model_type")
    act = c.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"hidden_act {act!r} is not SwiGLU's silu; nano imports llama/qwen3 blocks with silu only")
    d, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    hd = c.get("head_dim")
    if hd is not None and int(hd) * heads != d:
        raise ValueError(f"head_dim={hd} is not hidden_size/num_attention_heads={d}/{heads}; nano derives head_dim")
    attn_bias, mlp_bias = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
    if mt == "qwen3":
        if attn_bias:
            raise ValueError("attention_bias=True in a qwen3 model is not something nano imports (its MLP has none)")
        mlp_bias = False
    if attn_bias != mlp_bias:
        raise ValueError(f"attention_bias={attn_bias} with mlp_bias={mlp_bias}: nano's bias option is all or none")
    if c.get("use_sliding_window") or any(t != "full_attention" for t in (c.get("layer_types") or [])):
        raise ValueError("sliding-window layers are not something nano imports from this model type")
    if c.get("pretraining_tp", 1) not in (1, None):
        notes.append(f"pretraining_tp={c['pretraining_tp']} ignored (it only splits the same matmuls)")
    seq = int(c.get("max_position_embeddings") or 2048)
    cfg = ModelConfig(vocab_size=int(c["vocab_size"]), n_layer=int(c["num_hidden_layers"]), n_head=heads,
                      n_kv_head=int(c.get("num_key_value_heads") or heads), n_embd=d, seq_len=seq,
                      mlp="swiglu", mlp_hidden=int(c["intermediate_size"]), norm="rmsnorm",
                      norm_eps=float(c.get("rms_norm_eps", 1e-6)), pos="rope", rope_theta=rope_theta,
                      qk_norm=mt == "qwen3", bias=attn_bias, dropout_attn=float(c.get("attention_dropout", 0.0)),
                      tie_embeddings=bool(c.get("tie_word_embeddings", False)))
    if cfg.n_kv_head == cfg.n_head:
        cfg.n_kv_head = None
    if ModelConfig(**{**cfg.to_dict(), "mlp_hidden": None}).hidden == cfg.mlp_hidden:
        cfg.mlp_hidden = None  # nano's own default size: keep the config as nano would write it
    return cfg.validate()
