"""Hugging Face layouts: nano's canonical weights <-> the gpt2 / llama / qwen3 / nanochat files that transformers and mlx-lm
load with no custom code. One table per layout serves both directions (export: nano_core/export.py; import:
`load_pretrained`, what `--init-from DIR` calls). Backend-free (numpy only), like the rest of nano_core.

Which layout a ModelConfig exports to (`export_layout`):
  gpt2   learned or sinusoidal positions (a sinusoidal table is written as the learned wpe table), LayerNorm with
         bias, gelu_tanh / gelu / relu MLP, biases everywhere, tied head, MHA. HF Conv1D weights are (in, out), so
         every matrix is transposed and c_attn = concat(wq, wk, wv). Keys carry no "transformer." prefix (like the
         Hub's openai-community/gpt2 file: mlx-lm's gpt2 sanitize needs that, transformers accepts it).
  llama  RoPE (full, unscaled) + RMSNorm + SwiGLU, MHA/GQA/MQA, tied or untied head, biases all on (attention_bias
         and mlp_bias) or all off.
  qwen3  the llama block with qk_norm (an RMSNorm over each head's q and k before RoPE), no biases.
  nanochat  RoPE + parameter-free RMSNorm (eps 1e-5) + a norm after the embedding + parameter-free QK-norm + ReLU^2,
         no biases, untied head, logit_softcap 15, MHA/GQA/MQA (--preset nanochat-*); see nano_core/hf_nanochat.py.
Everything else is a one-line ValueError naming the option and the nearest configuration that exports: nothing is
written that a loader would run differently, except the activation notices for mlx-lm's gpt2 (it always runs the
tanh GELU): exact gelu there is a small difference, relu a wrong model; transformers runs both exactly.

Import (`load_pretrained`) reads config.json + model.safetensors (or shards with model.safetensors.index.json, F32,
F16, BF16 or F64) of model_type gpt2 / llama / qwen3 / nanochat, keys with or without the "transformer." / "model." prefix,
tied or untied; a tokenizer.json beside them is converted by tokenizer.hf.load_hf_tokenizer and the embedding (and
head) rows are permuted to nano's token ids.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nano_core.config import ModelConfig
from nano_core.hf_files import CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE, read_hf_weights, read_safetensors  # noqa: F401
from nano_core.hf_nanochat import (NANOCHAT_BLOCK, NANOCHAT_TOP, SOFTCAP, flip_rope_sign, hf_names, nanochat_config,
                                   nanochat_model_config, nanochat_misfits, nanochat_wanted)
from nano_core.init import sinusoidal_table
from tokenizer.hf import load_hf_tokenizer

LAYOUTS = ("gpt2", "llama", "qwen3", "nanochat")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "nanochat": "NanoChatForCausalLM"}

# nano mlp <-> HF GPT-2 activation_function. Import also takes the other names of the same two functions.
GPT2_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
GPT2_ACTIVATIONS_IN = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                       "gelu": "gelu", "relu": "relu"}

# ---------------------------------------------------------------------------------------------- the weight tables
# (nano name or tuple of nano names, HF name, how): per block (nano "h.{i}." + name, HF block prefix + name) and
# top level. how: None = same array; "T" = transposed (GPT-2 Conv1D keeps (in, out)); "catT" = the nano matrices
# stacked on the output dim, then transposed (GPT-2's fused c_attn); "cat" = biases stacked. HF names are written
# without the "transformer." (gpt2) prefix; llama/qwen3 names get "model." except lm_head.
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
TABLES = {"gpt2": (GPT2_TOP, GPT2_BLOCK, "h.{i}."), "llama": (LLAMA_TOP, LLAMA_BLOCK, "layers.{i}."),
          "qwen3": (LLAMA_TOP, LLAMA_BLOCK, "layers.{i}."), "nanochat": (NANOCHAT_TOP, NANOCHAT_BLOCK, "layers.{i}.")}
PREFIXES = {"gpt2": "transformer.", "llama": "model.", "qwen3": "model.", "nanochat": "model."}  # what save_pretrained puts on the body
IGNORED_HF = ("attn.bias", "attn.masked_bias", "rotary_emb.inv_freq")  # buffers some writers save; not weights


def mapping(cfg: ModelConfig, layout: str) -> list[tuple[tuple[str, ...], str, str | None]]:
    """The (nano names, HF name without body prefix, how) entries that apply to `cfg` (its param_shapes), in order.
    An entry applies when all its nano names are parameters of cfg; for gpt2 with sinusoidal positions wpe.weight
    is listed too (export writes the table, import reads it back as a learned table)."""
    top, block, pre = TABLES[layout]
    shapes = set(cfg.param_shapes())
    if layout == "gpt2":
        shapes.add("wpe.weight")
    out = []
    for nano, hf, how in top:
        names = (nano,) if isinstance(nano, str) else nano
        if all(n in shapes for n in names):
            out.append((names, hf, how))
    for i in range(cfg.n_layer):
        for nano, hf, how in block:
            names = tuple(f"h.{i}.{n}" for n in ((nano,) if isinstance(nano, str) else nano))
            if all(n in shapes for n in names):
                out.append((names, pre.format(i=i) + hf, how))
    return out


# ---------------------------------------------------------------------------------------------- which layout
def _refuse(option: str, nearest: str) -> ValueError:
    return ValueError(f"cannot export {option}: no gpt2/llama/qwen3/nanochat form runs it; nearest exportable: "
                      f"{nearest}")


def export_layout(cfg: ModelConfig) -> str:
    """"gpt2", "llama", "qwen3" or "nanochat" for `cfg`; a one-line ValueError naming the option no stock type expresses and the
    nearest configuration that exports."""
    cfg.validate()
    if cfg.arch != "gpt":
        raise _refuse(f"arch={cfg.arch!r} (an RNN)", "arch='gpt' (e.g. --preset tiny: gpt2, or --preset modern: llama)")
    if cfg.window is not None:
        raise _refuse(f"window={cfg.window} (sliding-window attention)", "the same model with window=None")
    if cfg.pos == "none":
        raise _refuse("pos='none' (no position encoding)", "pos='learned' (gpt2) or pos='rope' with norm='rmsnorm' "
                      "and mlp='swiglu' (llama)")
    if cfg.pos in ("learned", "sinusoidal"):
        gpt2 = "pos='learned', norm='layernorm', mlp='gelu_tanh', bias=True, tie_embeddings=True, n_kv_head=None (gpt2)"
        if cfg.logit_softcap is not None:
            raise _refuse(f"logit_softcap={cfg.logit_softcap} in a GPT-2 block", f"logit_softcap=None; or "
                          f"--preset nanochat-3x192's block (nanochat, soft cap {SOFTCAP})")
        if not cfg.norm_params or cfg.emb_norm:
            raise _refuse("norm_params=False / emb_norm=True in a GPT-2 block", f"{gpt2}; or pos='rope' with "
                          f"--preset nanochat-3x192's block (nanochat)")
        if cfg.norm != "layernorm":
            raise _refuse(f"norm={cfg.norm!r} with pos={cfg.pos!r}",
                          f"{gpt2}, or pos='rope' with norm='rmsnorm' and mlp='swiglu' (llama)")
        if cfg.mlp not in GPT2_ACTIVATIONS:
            raise _refuse(f"mlp={cfg.mlp!r} with pos={cfg.pos!r}",
                          f"{gpt2}; swiglu exports as llama with pos='rope' and norm='rmsnorm'")
        if not cfg.bias:
            raise _refuse("bias=False with pos/norm of GPT-2 (GPT-2 has biases everywhere)", gpt2)
        if cfg.kv_heads != cfg.n_head:
            raise _refuse(f"n_kv_head={cfg.n_kv_head} (GQA/MQA) in a GPT-2 block", f"{gpt2}; GQA exports as llama "
                          f"(pos='rope', norm='rmsnorm', mlp='swiglu')")
        if cfg.qk_norm:
            raise _refuse("qk_norm=True in a GPT-2 block", f"{gpt2}; qk_norm exports as qwen3 (pos='rope', "
                          f"norm='rmsnorm', mlp='swiglu', bias=False)")
        if not cfg.tie_embeddings:
            raise _refuse("tie_embeddings=False in a GPT-2 block (mlx-lm's gpt2 always ties the head)", gpt2)
        return "gpt2"
    # pos == "rope"
    llama = "pos='rope', norm='rmsnorm', mlp='swiglu' (llama; add qk_norm=True, bias=False for qwen3)"
    if cfg.rope_pct != 1.0:
        raise _refuse(f"rope_pct={cfg.rope_pct} (partial RoPE)", f"rope_pct=1.0 with {llama}")
    if cfg.rope_scaling is not None:
        raise _refuse(f"rope_scaling={cfg.rope_scaling}", f"rope_scaling=None with {llama}")
    if nanochat_wanted(cfg):
        wrong = nanochat_misfits(cfg)
        if not wrong:
            return "nanochat"
        if cfg.mlp != "swiglu" or cfg.logit_softcap is not None or not cfg.norm_params or cfg.emb_norm:
            lead = "mlp='relu2' with pos='rope' and " if cfg.mlp == "relu2" else ""
            raise _refuse(f"{lead}{', '.join(o for o, _ in wrong)} (llama/qwen3 blocks are SwiGLU; nanochat's has "
                          f"ReLU^2, parameter-free norms, an embedding norm and soft cap {SOFTCAP})",
                          f"{', '.join(f for _, f in wrong)} (nanochat; --preset nanochat-3x192 is modern-3x192 so)")
    if cfg.norm != "rmsnorm":
        raise _refuse(f"norm={cfg.norm!r} with pos='rope'", llama)
    if cfg.mlp != "swiglu":
        act = cfg.mlp if cfg.mlp in GPT2_ACTIVATIONS else "gelu_tanh"
        raise _refuse(f"mlp={cfg.mlp!r} with pos='rope' (llama/qwen3 blocks are SwiGLU)",
                      f"{llama}; or pos='learned', norm='layernorm', mlp={act!r} (gpt2)")
    if cfg.qk_norm:
        if cfg.bias:
            raise _refuse("qk_norm=True with bias=True (qwen3 has no MLP biases)", "qk_norm=True, bias=False (qwen3)")
        return "qwen3"
    return "llama"


def export_notices(cfg: ModelConfig, layout: str) -> list[str]:
    """What an export keeps or changes that a user should know (one line each); none means an exact export."""
    out = []
    if layout == "gpt2":
        if cfg.pos == "sinusoidal":
            out.append(f"pos='sinusoidal' is written as GPT-2's learned wpe table ({cfg.seq_len} rows, the same "
                       f"values): the exported model's context is {cfg.seq_len}, and an import gives pos='learned'")
        if cfg.mlp == "gelu":
            out.append("mlp='gelu' (exact erf GELU) exports as activation_function 'gelu': transformers runs it "
                       "exactly, mlx-lm's gpt2 always runs the tanh GELU (a small difference, ~1e-3 per activation); "
                       "mlp='gelu_tanh' is the GPT-2-faithful choice that both run exactly")
        elif cfg.mlp == "relu":
            out.append("mlp='relu' exports as activation_function 'relu': transformers runs it exactly, but mlx-lm's "
                       "gpt2 always runs the tanh GELU, so mlx-lm's outputs are not this model's; use transformers "
                       "(or train with mlp='gelu_tanh', which both run exactly)")
        if cfg.hidden != 4 * cfg.n_embd:
            out.append(f"mlp_hidden={cfg.hidden} is written as n_inner: transformers loads it, mlx-lm's gpt2 "
                       f"(a fixed 4*n_embd={4 * cfg.n_embd} MLP) refuses the file")
    elif cfg.dropout_emb or cfg.dropout_resid:
        out.append(f"dropout_emb={cfg.dropout_emb}/dropout_resid={cfg.dropout_resid} have no {layout} field (training "
                   f"only; inference is unaffected): not written")
    return out


# ---------------------------------------------------------------------------------------------- nano -> HF
def hf_config(cfg: ModelConfig, layout: str, eos_id: int | None = None, bos_id: int | None = None) -> dict:
    """The config.json for `cfg` in `layout` (what transformers and mlx-lm both read)."""
    common = {"architectures": [ARCHITECTURES[layout]], "model_type": layout, "vocab_size": cfg.vocab_size,
              "bos_token_id": bos_id, "eos_token_id": eos_id, "tie_word_embeddings": cfg.tie_embeddings,
              "initializer_range": 0.02, "use_cache": True, "dtype": "float32"}
    if layout == "nanochat":
        return nanochat_config(cfg, common)
    if layout == "gpt2":
        return {**common, "n_positions": cfg.seq_len, "n_ctx": cfg.seq_len, "n_embd": cfg.n_embd,
                "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_inner": None if cfg.hidden == 4 * cfg.n_embd else cfg.hidden,
                "activation_function": GPT2_ACTIVATIONS[cfg.mlp], "layer_norm_epsilon": cfg.norm_eps,
                "embd_pdrop": cfg.dropout_emb, "attn_pdrop": cfg.dropout_attn, "resid_pdrop": cfg.dropout_resid,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
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


def to_hf(cfg: ModelConfig, weights: dict, eos_id: int | None = None, bos_id: int | None = None
          ) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """(config.json dict, tensors under HF names (float32, contiguous), notices) for nano `weights` of `cfg`;
    ValueError (one line) when cfg has no stock form or the weights do not match it."""
    layout = export_layout(cfg)
    shapes = cfg.param_shapes()
    missing = sorted(set(shapes) - set(weights))
    if missing:
        raise ValueError(f"weights lack {missing[:3]} that the model config names")
    for name, shape in shapes.items():
        if tuple(np.shape(weights[name])) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(np.shape(weights[name]))}, the model config says {shape}")
    src = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    if layout == "gpt2" and cfg.pos == "sinusoidal":
        src["wpe.weight"] = sinusoidal_table(cfg.seq_len, cfg.n_embd)
    tensors, used = {}, set()
    body = "" if layout == "gpt2" else "model."  # gpt2: no prefix (mlx-lm needs that); the others as saved
    for names, hf, how in mapping(cfg, layout):
        arrays = [src[n] for n in names]
        used.update(names)
        if how is None:
            a = arrays[0]
        elif how == "T":
            a = arrays[0].T
        elif how == "catT":
            a = np.concatenate(arrays, axis=0).T
        elif how == "flip":
            a = flip_rope_sign(arrays[0], cfg.head_dim)
        else:  # "cat"
            a = np.concatenate(arrays, axis=0)
        tensors[hf if hf == "lm_head.weight" else body + hf] = np.ascontiguousarray(a, dtype=np.float32)
    left = sorted(set(shapes) - used)
    if left:  # a parameter the table does not carry would be dropped: never write such a file
        raise ValueError(f"the {layout} layout has no place for {left[:3]}; this is a bug in nano_core/hf.py")
    return hf_config(cfg, layout, eos_id, bos_id), tensors, export_notices(cfg, layout)


# ---------------------------------------------------------------------------------------------- HF -> nano
def _get(d: dict, *keys, default=None):
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def _rope_theta(c: dict) -> float:
    """rope_theta from transformers 5's rope_parameters or the older top-level rope_theta / rope_scaling; refuses
    scaled or partial RoPE."""
    rp = c.get("rope_parameters")
    if isinstance(rp, dict) and rp and not ("rope_theta" in rp or "rope_type" in rp):
        raise ValueError(f"rope_parameters per layer type ({sorted(rp)}) are not something nano imports")
    rp = rp if isinstance(rp, dict) else {}
    scaling = c.get("rope_scaling") or {}
    kind = rp.get("rope_type") or rp.get("type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(f"rope scaling {kind!r} is not something nano imports (only unscaled RoPE)")
    partial = _get(rp, "partial_rotary_factor", default=_get(c, "partial_rotary_factor", default=1.0))
    if partial != 1.0:
        raise ValueError(f"partial_rotary_factor={partial} is not something nano imports (only full RoPE)")
    return float(_get(rp, "rope_theta", default=_get(c, "rope_theta", default=10000.0)))


def config_from_hf(c: dict) -> tuple[ModelConfig, str, list[str]]:
    """(ModelConfig, layout, notes) from a foreign config.json dict; ValueError (one line) for a model_type or
    option nano cannot represent."""
    mt = c.get("model_type")
    if mt not in LAYOUTS:
        raise ValueError(f"model_type {mt!r} is not one nano imports ({', '.join(LAYOUTS)})")
    notes: list[str] = []
    if mt == "nanochat":
        return nanochat_model_config(c, _rope_theta(c)), mt, notes
    if mt == "gpt2":
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
        cfg = ModelConfig(vocab_size=int(c["vocab_size"]), n_layer=int(c["n_layer"]), n_head=int(c["n_head"]),
                          n_embd=d, seq_len=int(_get(c, "n_positions", "n_ctx", default=1024)),
                          mlp=GPT2_ACTIVATIONS_IN[act], mlp_hidden=None if inner in (None, 4 * d) else int(inner),
                          norm="layernorm", norm_eps=float(c.get("layer_norm_epsilon", 1e-5)), pos="learned",
                          bias=True, tie_embeddings=bool(c.get("tie_word_embeddings", True)), **drops)
        return cfg.validate(), mt, notes
    # llama / qwen3
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
    seq = int(_get(c, "max_position_embeddings", default=2048))
    cfg = ModelConfig(vocab_size=int(c["vocab_size"]), n_layer=int(c["num_hidden_layers"]), n_head=heads,
                      n_kv_head=int(_get(c, "num_key_value_heads", default=heads)), n_embd=d, seq_len=seq,
                      mlp="swiglu", mlp_hidden=int(c["intermediate_size"]), norm="rmsnorm",
                      norm_eps=float(c.get("rms_norm_eps", 1e-6)), pos="rope", rope_theta=_rope_theta(c),
                      qk_norm=mt == "qwen3", bias=attn_bias, dropout_attn=float(c.get("attention_dropout", 0.0)),
                      tie_embeddings=bool(c.get("tie_word_embeddings", False)))
    if cfg.n_kv_head == cfg.n_head:
        cfg.n_kv_head = None
    if ModelConfig(**{**cfg.to_dict(), "mlp_hidden": None}).hidden == cfg.mlp_hidden:
        cfg.mlp_hidden = None  # nano's own default size: keep the config as nano would write it
    return cfg.validate(), mt, notes


def from_hf(c: dict, tensors: dict[str, np.ndarray]) -> tuple[ModelConfig, dict[str, np.ndarray], list[str]]:
    """(ModelConfig, nano weights, notes) from a config.json dict and its tensors (any float dtype; names as
    save_pretrained writes them, with or without the body prefix); ValueError (one line) when they do not fit."""
    cfg, layout, notes = config_from_hf(c)
    body = PREFIXES[layout]
    plain = {}
    if layout == "nanochat":  # transformers' or mlx-lm's (nanochat's own) names
        tensors = hf_names(tensors)
    for k, v in tensors.items():
        k2 = k[len(body):] if k.startswith(body) else k
        if k2 in plain:
            raise ValueError(f"tensor {k2} appears twice (with and without the {body!r} prefix)")
        plain[k2] = v
    entries = mapping(cfg, layout)
    wanted = {hf for _, hf, _ in entries}
    if cfg.tie_embeddings and "lm_head.weight" in plain:
        head = plain.pop("lm_head.weight")
        emb = plain.get(TABLES[layout][0][0][1])
        if emb is not None and (head.shape != emb.shape or not np.array_equal(head, emb)):
            notes.append("lm_head.weight in the file differs from the embedding but tie_word_embeddings is true: "
                         "ignored, as transformers does")
    unknown = sorted(k for k in plain if k not in wanted and not k.endswith(IGNORED_HF))
    if unknown:
        raise ValueError(f"tensors nano has no place for: {unknown[:3]}{' ...' if len(unknown) > 3 else ''} "
                         f"({len(unknown)} in all)")
    missing = sorted(hf for hf in wanted if hf not in plain)
    if missing:
        raise ValueError(f"tensors missing: {missing[:3]}{' ...' if len(missing) > 3 else ''} ({len(missing)} in all)")
    shapes = cfg.param_shapes()
    out: dict[str, np.ndarray] = {}
    for names, hf, how in entries:
        a = np.asarray(plain[hf], dtype=np.float32)
        if how in ("T", "catT"):
            a = a.T
        elif how == "flip":
            a = flip_rope_sign(a, cfg.head_dim)
        parts = np.split(a, np.cumsum([shapes[n][0] for n in names])[:-1], axis=0) if len(names) > 1 else [a]
        for n, p in zip(names, parts):
            if tuple(p.shape) != tuple(shapes[n]):
                raise ValueError(f"{hf} has shape {tuple(a.shape)}, config.json implies {shapes[n]} for {n}")
            out[n] = np.ascontiguousarray(p)
    return cfg, out, notes


# ---------------------------------------------------------------------------------------------- files
def load_pretrained(directory, tokenizer: bool = True):
    """An HF-layout gpt2 / llama / qwen3 / nanochat directory -> (ModelConfig, weights in nano names, tokenizer or None, notes).

    The config comes from config.json (vocab, layers, heads, kv heads, hidden, intermediate, eps, rope_theta,
    n_positions / max_position_embeddings -> seq_len, activation, tying). With tokenizer=True and a tokenizer.json
    in the directory, it is converted by tokenizer.hf.load_hf_tokenizer (whose `order[nano_id] = hf_id`), and the
    embedding (and untied head) rows are permuted so row i is nano token i; rows of ids the tokenizer does not use
    follow in HF order (so vocab_size stays the model's). Errors are one line: FileNotFoundError for missing files,
    ValueError for anything nano cannot represent."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory (expected an HF model dir with {CONFIG_FILE})")
    cpath = directory / CONFIG_FILE
    if not cpath.is_file():
        raise FileNotFoundError(f"{cpath} not found: not a Hugging Face model directory")
    try:
        c = json.loads(cpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cpath} is not valid JSON ({e})") from None
    if not isinstance(c, dict):
        raise ValueError(f"{cpath} holds a {type(c).__name__}, not a config object")
    try:
        config_from_hf(c)  # the config first: a refusal should not wait for gigabytes of weights
        cfg, weights, notes = from_hf(c, read_hf_weights(directory))
    except KeyError as e:
        raise ValueError(f"{cpath} lacks {e.args[0]!r}, which a {c.get('model_type')} config needs") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory}: {e}") from None
    tok = None
    if tokenizer and (directory / "tokenizer.json").is_file():
        # Added tokens that are not marked special (Qwen's <think>, <tool_call>, ...) become nano special tokens:
        # plain text never produces them in nano, which is what fine-tuning on plain text needs.
        tok, order = load_hf_tokenizer(directory, added_as_special=True)  # a one-line ValueError names the file
        rows = permutation(order, cfg.vocab_size)
        if not np.array_equal(rows, np.arange(cfg.vocab_size)):
            for name in ("wte.weight", "lm_head.weight"):
                if name in weights:
                    weights[name] = np.ascontiguousarray(weights[name][rows])
            notes.append(f"embedding rows reordered to nano's token ids ({len(order):,} tokenizer ids)")
    elif tokenizer:
        notes.append(f"{directory} has no tokenizer.json: weights only (bring the tokenizer the model was trained "
                     f"with)")
    return cfg, weights, tok, notes


def permutation(order, vocab_size: int) -> np.ndarray:
    """Rows for nano: nano id i takes HF row order[i]; HF rows no tokenizer id uses follow, in order (so a model
    whose embedding is padded past its tokenizer keeps its size). ValueError (one line) for a bad `order`."""
    order = np.asarray(order, dtype=np.int64).reshape(-1)
    if len(order) > vocab_size:
        raise ValueError(f"the tokenizer has {len(order):,} tokens but the model only {vocab_size:,} embedding rows")
    if len(order) and (order.min() < 0 or order.max() >= vocab_size):
        raise ValueError(f"the tokenizer maps to ids outside the model's {vocab_size:,} embedding rows")
    if len(np.unique(order)) != len(order):
        raise ValueError("the tokenizer maps two nano ids to one HF id")
    rest = np.setdiff1d(np.arange(vocab_size), order)
    return np.concatenate([order, rest])


def describe(cfg: ModelConfig) -> str:
    """A short description: `gpt2 layout, 2 x 32 (4 heads), vocab 300, 0.1M params`."""
    n = cfg.num_params()
    size = f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"
    kv = "" if cfg.kv_heads == cfg.n_head else f", {cfg.kv_heads} kv heads"
    return f"{cfg.n_layer} x {cfg.n_embd} ({cfg.n_head} heads{kv}), vocab {cfg.vocab_size:,}, {size} params"
