"""The `gpt2` layout (transformers' GPT2LMHeadModel, mlx-lm's models/gpt2.py): learned (or sinusoidal, written as
the learned table) positions, LayerNorm with bias, a gelu_tanh / gelu / relu MLP, biases everywhere, a tied head,
MHA. Backend-free (numpy only); nano_core/hf.py dispatches here.

HF's GPT-2 keeps Conv1D weights as (in, out), so every matrix is transposed and c_attn = concat(wq, wk, wv). Keys
carry no "transformer." prefix (like the Hub's openai-community/gpt2 file: mlx-lm's gpt2 sanitize needs that,
transformers accepts it). mlx-lm's gpt2 always runs the tanh GELU and a 4*n_embd MLP; transformers runs what
config.json names.
"""
from __future__ import annotations

from nano_core.config import ModelConfig

# nano mlp <-> HF activation name (GPT-2's activation_function, GPT-NeoX's hidden_act). Import also takes the
# other names of the same two functions.
GPT2_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
GPT2_ACTIVATIONS_IN = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                       "gelu": "gelu", "relu": "relu"}

# (nano name or tuple of nano names, HF name, how); see nano_core/hf.py for the `how` codes.
GPT2_BLOCK = [
    ("ln_1.weight", "ln_1.weight", None),
    ("ln_1.bias", "ln_1.bias", None),
    (("attn.wq.weight", "attn.wk.weight", "attn.wv.weight"), "attn.c_attn.weight", "catT"),
    (("attn.wq.bias", "attn.wk.bias", "attn.wv.bias"), "attn.c_attn.bias", "cat"),
    ("attn.wo.weight", "attn.c_proj.weight", "T"),
    ("attn.wo.bias", "attn.c_proj.bias", None),
    ("ln_2.weight", "ln_2.weight", None),
    ("ln_2.bias", "ln_2.bias", None),
    ("mlp.fc.weight", "mlp.c_fc.weight", "T"),
    ("mlp.fc.bias", "mlp.c_fc.bias", None),
    ("mlp.proj.weight", "mlp.c_proj.weight", "T"),
    ("mlp.proj.bias", "mlp.c_proj.bias", None),
]
GPT2_TOP = [
    ("wte.weight", "wte.weight", None),
    ("wpe.weight", "wpe.weight", None),
    ("ln_f.weight", "ln_f.weight", None),
    ("ln_f.bias", "ln_f.bias", None),
    ("lm_head.weight", "lm_head.weight", None),
]
GPT2_NEAREST = "pos='learned', norm='layernorm', mlp='gelu_tanh', bias=True, tie_embeddings=True, n_kv_head=None (gpt2)"


def activation_notices(cfg: ModelConfig, library: str) -> list[str]:
    """What mlx-lm's `library` (gpt2 or gpt_neox: both hard-code the tanh GELU and a 4*n_embd MLP) runs differently."""
    out = []
    if cfg.mlp == "gelu":
        out.append(f"mlp='gelu' (exact erf GELU) exports as 'gelu': transformers runs it exactly, mlx-lm's {library} "
                   f"always runs the tanh GELU (a small difference, ~1e-3 per activation); mlp='gelu_tanh' is the "
                   f"choice that both run exactly")
    elif cfg.mlp == "relu":
        out.append(f"mlp='relu' exports as 'relu': transformers runs it exactly, but mlx-lm's {library} always runs "
                   f"the tanh GELU, so mlx-lm's outputs are not this model's; use transformers (or train with "
                   f"mlp='gelu_tanh', which both run exactly)")
    if cfg.hidden != 4 * cfg.n_embd:
        out.append(f"mlp_hidden={cfg.hidden} is written to config.json: transformers loads it, mlx-lm's {library} "
                   f"(a fixed 4*n_embd={4 * cfg.n_embd} MLP) refuses the file")
    return out


def gpt2_refusal(cfg: ModelConfig) -> tuple[str, str] | None:
    """(option, nearest exportable) for the first thing a learned/sinusoidal-position cfg has that gpt2 cannot
    hold; None when it exports."""
    if cfg.logit_softcap is not None:
        return (f"logit_softcap={cfg.logit_softcap} in a GPT-2 block",
                "logit_softcap=None; or --preset nanochat-3x192's block (nanochat, soft cap 15)")
    if not cfg.norm_params or cfg.emb_norm:
        return ("norm_params=False / emb_norm=True in a GPT-2 block",
                f"{GPT2_NEAREST}; or pos='rope' with --preset nanochat-3x192's block (nanochat)")
    if cfg.norm != "layernorm":
        return (f"norm={cfg.norm!r} with pos={cfg.pos!r}",
                f"{GPT2_NEAREST}, or pos='rope' with norm='rmsnorm' and mlp='swiglu' (llama)")
    if cfg.mlp not in GPT2_ACTIVATIONS:
        return (f"mlp={cfg.mlp!r} with pos={cfg.pos!r}",
                f"{GPT2_NEAREST}; swiglu exports as llama with pos='rope' and norm='rmsnorm'")
    if not cfg.bias:
        return "bias=False with pos/norm of GPT-2 (GPT-2 has biases everywhere)", GPT2_NEAREST
    if cfg.kv_heads != cfg.n_head:
        return (f"n_kv_head={cfg.n_kv_head} (GQA/MQA) in a GPT-2 block",
                f"{GPT2_NEAREST}; GQA exports as llama (pos='rope', norm='rmsnorm', mlp='swiglu')")
    if cfg.qk_norm:
        return ("qk_norm=True in a GPT-2 block",
                f"{GPT2_NEAREST}; qk_norm exports as qwen3 (pos='rope', norm='rmsnorm', mlp='swiglu', bias=False)")
    if not cfg.tie_embeddings:
        return "tie_embeddings=False in a GPT-2 block (mlx-lm's gpt2 always ties the head)", GPT2_NEAREST
    return None


def gpt2_notices(cfg: ModelConfig) -> list[str]:
    out = []
    if cfg.pos == "sinusoidal":
        out.append(f"pos='sinusoidal' is written as GPT-2's learned wpe table ({cfg.seq_len} rows, the same "
                   f"values): the exported model's context is {cfg.seq_len}, and an import gives pos='learned'")
    return out + activation_notices(cfg, "gpt2")


def gpt2_config(cfg: ModelConfig, common: dict) -> dict:
    return {**common, "n_positions": cfg.seq_len, "n_ctx": cfg.seq_len, "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_inner": None if cfg.hidden == 4 * cfg.n_embd else cfg.hidden,
            "activation_function": GPT2_ACTIVATIONS[cfg.mlp], "layer_norm_epsilon": cfg.norm_eps,
            "embd_pdrop": cfg.dropout_emb, "attn_pdrop": cfg.dropout_attn, "resid_pdrop": cfg.dropout_resid,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}


def gpt2_model_config(c: dict, notes: list[str]) -> ModelConfig:
    """A ModelConfig from a gpt2 config.json dict; ValueError (one line) for what nano cannot represent."""
    act = c.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS_IN:
        raise ValueError(f"activation_function {act!r} is not one nano has ({', '.join(GPT2_ACTIVATIONS_IN)})")
    for key, bad in (("scale_attn_by_inverse_layer_idx", True), ("scale_attn_weights", False),
                     ("add_cross_attention", True)):
        if c.get(key, not bad) == bad:
            raise ValueError(f"{key}={bad} is not something nano imports")
    d = int(c["n_embd"])
    inner = c.get("n_inner")
    drops = dict(dropout_emb=float(c.get("embd_pdrop", 0.0)), dropout_attn=float(c.get("attn_pdrop", 0.0)),
                 dropout_resid=float(c.get("resid_pdrop", 0.0)))
    if any(drops.values()):
        notes.append("dropout from config.json carried over (" + ", ".join(f"{k}={v}" for k, v in drops.items())
                     + "); set dropout_* to change it")
    positions = c.get("n_positions") or c.get("n_ctx") or 1024
    cfg = ModelConfig(vocab_size=int(c["vocab_size"]), n_layer=int(c["n_layer"]), n_head=int(c["n_head"]),
                      n_embd=d, seq_len=int(positions), mlp=GPT2_ACTIVATIONS_IN[act],
                      mlp_hidden=None if inner in (None, 4 * d) else int(inner), norm="layernorm",
                      norm_eps=float(c.get("layer_norm_epsilon", 1e-5)), pos="learned", bias=True,
                      tie_embeddings=bool(c.get("tie_word_embeddings", True)), **drops)
    return cfg.validate()
