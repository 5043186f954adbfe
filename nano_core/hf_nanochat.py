"""The `nanochat` layout (transformers' NanoChatForCausalLM, mlx-lm's models/nanochat.py): nano's block with
parameter-free RMSNorm everywhere, a norm after the embedding, parameter-free QK-norm, ReLU^2, no biases, an untied
head and logits soft-capped at 15. Backend-free (numpy only); nano_core/hf.py dispatches here.

What the two loaders fix, and so what an export must match (read from transformers 5 and mlx-lm 0.32):
- mlx-lm's nanochat always applies softcap 15 and RMSNorm eps 1e-5 whatever config.json says; transformers reads
  final_logit_softcapping and rms_norm_eps. nano exports only logit_softcap=15, norm_eps=1e-5, which both run.
- RoPE: both rotate the half-split pairs (x1, x2) by -angle (transformers' NanoChat rotate_half flips its signs,
  mlx-lm negates its frequencies), nano by +angle. Rotating (x1, x2) by -a is rotating (x1, -x2) by +a and then
  negating x2, so writing wq and wk with the second half of every head's rows negated gives q and k with those
  coordinates negated: every q.k dot product, and so the attention, is unchanged. The same flip maps back on import.
- QK-norm: nano normalises q, k before RoPE, both loaders after. A parameter-free RMSNorm over a head commutes with
  the rotation (a rotation keeps the vector's length, so its RMS), and with the sign flip: the order is immaterial.
- The two loaders name the weights differently (transformers: model.layers.N.self_attn.q_proj, mlp.fc1, ...;
  mlx-lm: transformer.h.N.attn.c_q, mlp.c_fc, ..., nanochat's own names) and mlx-lm refuses unknown tensors. So an
  export holds the weights twice: model.safetensors.index.json -> NANOCHAT_HF_FILE for transformers (which reads the
  index when there is no model.safetensors), and NANOCHAT_MLX_FILE, which mlx-lm finds by its `model*.safetensors`
  pattern and transformers never opens. Import reads either naming.
"""
from __future__ import annotations

import numpy as np

from nano_core.config import ModelConfig

SOFTCAP, EPS = 15.0, 1e-5  # what mlx-lm's nanochat hard-codes
NANOCHAT_HF_FILE, NANOCHAT_MLX_FILE = "transformers.safetensors", "model-mlx.safetensors"

# (nano name, transformers name, how): "flip" = the RoPE sign flip above; transformers names are under "model."
# except lm_head. MLX_NAMES gives mlx-lm's name for each transformers name.
NANOCHAT_BLOCK = [
    ("attn.wq.weight", "self_attn.q_proj.weight", "flip"),
    ("attn.wk.weight", "self_attn.k_proj.weight", "flip"),
    ("attn.wv.weight", "self_attn.v_proj.weight", None),
    ("attn.wo.weight", "self_attn.o_proj.weight", None),
    ("mlp.fc.weight", "mlp.fc1.weight", None),
    ("mlp.proj.weight", "mlp.fc2.weight", None),
]
NANOCHAT_TOP = [("wte.weight", "embed_tokens.weight", None), ("lm_head.weight", "lm_head.weight", None)]
_MLX_BLOCK = {"self_attn.q_proj": "attn.c_q", "self_attn.k_proj": "attn.c_k", "self_attn.v_proj": "attn.c_v",
              "self_attn.o_proj": "attn.c_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def mlx_name(hf: str) -> str:
    """mlx-lm's (nanochat's own) tensor name for a transformers name without the "model." prefix."""
    if hf == "lm_head.weight":
        return hf
    if hf == "embed_tokens.weight":
        return "transformer.wte.weight"
    _, i, rest = hf.split(".", 2)  # layers.{i}.<module>.weight
    module = rest.rsplit(".", 1)[0]
    return f"transformer.h.{i}.{_MLX_BLOCK[module]}.weight"


def hf_names(tensors: dict) -> dict:
    """Tensors under transformers names (without "model."), whichever of the two namings a file uses."""
    out = {}
    for k, v in tensors.items():
        if k.startswith("transformer."):
            parts = k.split(".")
            if parts[1] == "wte":
                k = "embed_tokens.weight"
            elif parts[1] == "h" and len(parts) == 6:
                back = {m: h for h, m in _MLX_BLOCK.items()}.get(f"{parts[3]}.{parts[4]}")
                k = f"layers.{parts[2]}.{back}.{parts[5]}" if back else k
        elif k.startswith("model."):
            k = k[len("model."):]
        out[k] = v
    return out


def flip_rope_sign(w: np.ndarray, head_dim: int) -> np.ndarray:
    """wq or wk (heads * head_dim, d) with the second half of every head's rows negated (self-inverse)."""
    w = w.reshape(-1, head_dim, w.shape[-1]).copy()
    w[:, head_dim // 2:] *= -1
    return w.reshape(-1, w.shape[-1])


def nanochat_wanted(cfg: ModelConfig) -> bool:
    """Does cfg ask for nanochat's block (rather than a gpt2 / llama / qwen3 one)?"""
    return cfg.mlp == "relu2" or not cfg.norm_params or cfg.emb_norm or cfg.logit_softcap is not None


def nanochat_misfits(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(option, what to set instead) for everything cfg has that the nanochat layout cannot hold; [] if all fit.
    Position, window and RoPE-scaling checks happen before this (nano_core/hf.py export_layout)."""
    checks = [
        (cfg.logit_softcap == SOFTCAP, f"logit_softcap={cfg.logit_softcap}",
         f"logit_softcap={SOFTCAP} (mlx-lm's nanochat always caps at {SOFTCAP})"),
        (cfg.norm_eps == EPS, f"norm_eps={cfg.norm_eps}", f"norm_eps={EPS} (mlx-lm's nanochat always uses it)"),
        (cfg.norm == "rmsnorm", f"norm={cfg.norm!r}", "norm='rmsnorm'"),
        (not cfg.norm_params, "norm_params=True (norms with weights)", "norm_params=False"),
        (cfg.emb_norm, "emb_norm=False", "emb_norm=True"),
        (cfg.qk_norm, "qk_norm=False", "qk_norm=True"),
        (cfg.mlp == "relu2", f"mlp={cfg.mlp!r}", "mlp='relu2'"),
        (not cfg.bias, "bias=True", "bias=False"),
        (not cfg.tie_embeddings, "tie_embeddings=True", "tie_embeddings=False (mlx-lm's nanochat has its own head)"),
    ]
    return [(option, fix) for ok, option, fix in checks if not ok]


def nanochat_config(cfg: ModelConfig, common: dict) -> dict:
    """config.json fields for the nanochat layout (both loaders read these; mlx-lm the top-level rope_theta)."""
    return {**common, "pad_token_id": None, "hidden_size": cfg.n_embd, "intermediate_size": cfg.hidden,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.kv_heads, "hidden_act": "relu2", "max_position_embeddings": cfg.seq_len,
            "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}, "attention_bias": False,
            "attention_dropout": cfg.dropout_attn, "final_logit_softcapping": cfg.logit_softcap}


def nanochat_model_config(c: dict, rope_theta: float) -> ModelConfig:
    """A ModelConfig from a nanochat config.json dict (transformers' fields and defaults); ValueError (one line)."""
    act = c.get("hidden_act", "relu2")
    if act != "relu2":
        raise ValueError(f"hidden_act {act!r} in a nanochat model is not something nano imports (only relu2)")
    if c.get("attention_bias"):
        raise ValueError("attention_bias=True in a nanochat model is not something nano imports (its MLP has none)")
    d, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    hd = c.get("head_dim")
    if hd is not None and int(hd) * heads != d:
        raise ValueError(f"head_dim={hd} is not hidden_size/num_attention_heads={d}/{heads}; nano derives head_dim")
    kv = int(c.get("num_key_value_heads") or heads)
    cap = c.get("final_logit_softcapping", SOFTCAP)  # transformers' default is 15
    cfg = ModelConfig(vocab_size=int(c["vocab_size"]), n_layer=int(c["num_hidden_layers"]), n_head=heads,
                      n_kv_head=None if kv == heads else kv, n_embd=d,
                      seq_len=int(c.get("max_position_embeddings") or 2048), mlp="relu2",
                      mlp_hidden=int(c["intermediate_size"]), norm="rmsnorm",
                      norm_eps=float(c.get("rms_norm_eps") or 1e-6), norm_params=False, emb_norm=True,
                      pos="rope", rope_theta=rope_theta, qk_norm=True, bias=False,
                      dropout_attn=float(c.get("attention_dropout") or 0.0),
                      tie_embeddings=bool(c.get("tie_word_embeddings", False)),
                      logit_softcap=None if cap is None else float(cap))
    if cfg.mlp_hidden == 4 * d:
        cfg.mlp_hidden = None  # nano's own default size: keep the config as nano would write it
    return cfg.validate()
