"""Hugging Face layouts: nano's canonical weights <-> the gpt2 / llama / qwen3 / nanochat / gpt_neox files that
transformers and mlx-lm load with no custom code. One table per layout serves both directions (export:
nano_core/export.py; import: `load_pretrained`, what `--init-from DIR` calls). Backend-free (numpy only), like the
rest of nano_core.

Which layout a ModelConfig exports to (`export_layout`):
  gpt2   learned or sinusoidal positions (a sinusoidal table is written as the learned wpe table), LayerNorm with
         bias, gelu_tanh / gelu / relu MLP, biases everywhere, tied head, MHA; see nano_core/hf_gpt2.py.
  llama  RoPE (full, unscaled) + RMSNorm + SwiGLU, MHA/GQA/MQA, tied or untied head, biases all on (attention_bias
         and mlp_bias) or all off.
  qwen3  the llama block with qk_norm (an RMSNorm over each head's q and k before RoPE), no biases.
  nanochat  RoPE + parameter-free RMSNorm (eps 1e-5) + a norm after the embedding + parameter-free QK-norm + ReLU^2,
         no biases, untied head, logit_softcap 15, MHA/GQA/MQA (--preset nanochat-*); see nano_core/hf_nanochat.py.
  gpt_neox  RoPE (full or partial: rope_pct) + LayerNorm + gelu_tanh / gelu / relu MLP, a sequential block, MHA,
         tied or untied head, biases (zeros when bias=False); see nano_core/hf_neox.py.
Everything else is a one-line ValueError naming the option and the nearest configuration that exports: nothing is
written that a loader would run differently, except the activation notices for mlx-lm's gpt2 and gpt_neox (both
always run the tanh GELU): exact gelu there is a small difference, relu a wrong model; transformers runs both exactly.

Import (`load_pretrained`) reads config.json + model.safetensors (or shards with model.safetensors.index.json, F32,
F16, BF16 or F64) of model_type gpt2 / llama / qwen3 / nanochat / gpt_neox, keys with or without the body prefix,
tied or untied; a tokenizer.json beside them is converted by tokenizer.hf.load_hf_tokenizer and the embedding (and
head) rows are permuted to nano's token ids.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nano_core.config import ModelConfig
from nano_core.hf_files import CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE, read_hf_weights, read_safetensors  # noqa: F401
from nano_core.hf_llama import LLAMA_BLOCK, LLAMA_TOP, llama_config, llama_model_config
from nano_core.hf_nanochat import (NANOCHAT_BLOCK, NANOCHAT_TOP, SOFTCAP, flip_rope_sign, hf_names, nanochat_config,
                                   nanochat_model_config, nanochat_misfits, nanochat_wanted)
from nano_core.hf_gpt2 import GPT2_BLOCK, GPT2_TOP, gpt2_config, gpt2_model_config, gpt2_notices, gpt2_refusal
from nano_core.hf_neox import (NEOX_BLOCK, NEOX_HEAD, NEOX_NEAREST, NEOX_TOP, neox_config, neox_misfits,
                               neox_model_config, neox_names, neox_notices, qkv_rows, with_biases)
from nano_core.init import sinusoidal_table
from tokenizer.hf import load_hf_tokenizer

LAYOUTS = ("gpt2", "llama", "qwen3", "nanochat", "gpt_neox")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "nanochat": "NanoChatForCausalLM", "gpt_neox": "GPTNeoXForCausalLM"}

# ---------------------------------------------------------------------------------------------- the weight tables
# (nano name or tuple of nano names, HF name, how): per block (nano "h.{i}." + name, HF block prefix + name) and
# top level. how: None = same array; "T" = transposed (GPT-2 Conv1D keeps (in, out)); "catT" = the nano matrices
# stacked on the output dim, then transposed (GPT-2's fused c_attn); "cat" = biases stacked; "qkv" = stacked, then
# rows per head (GPT-NeoX's query_key_value); "flip" = nanochat's RoPE sign flip. HF names are written without
# the body prefix (PREFIXES) except the head.
TABLES = {"gpt2": (GPT2_TOP, GPT2_BLOCK, "h.{i}."), "llama": (LLAMA_TOP, LLAMA_BLOCK, "layers.{i}."),
          "qwen3": (LLAMA_TOP, LLAMA_BLOCK, "layers.{i}."), "nanochat": (NANOCHAT_TOP, NANOCHAT_BLOCK, "layers.{i}."),
          "gpt_neox": (NEOX_TOP, NEOX_BLOCK, "layers.{i}.")}
# what save_pretrained puts on the body; the head's name (never prefixed)
PREFIXES = {"gpt2": "transformer.", "llama": "model.", "qwen3": "model.", "nanochat": "model.", "gpt_neox": "gpt_neox."}
HEADS = {"gpt_neox": NEOX_HEAD}
# buffers some writers save; not weights
IGNORED_HF = ("attn.bias", "attn.masked_bias", "attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


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
    return ValueError(f"cannot export {option}: no gpt2/llama/qwen3/nanochat/gpt_neox form runs it; "
                      f"nearest exportable: {nearest}")


def export_layout(cfg: ModelConfig) -> str:
    """"gpt2", "llama", "qwen3", "nanochat" or "gpt_neox" for `cfg`; a one-line ValueError naming the option no
    stock type expresses and the nearest configuration that exports."""
    cfg.validate()
    if cfg.arch != "gpt":
        raise _refuse(f"arch={cfg.arch!r} (an RNN)", "arch='gpt' (e.g. --preset tiny: gpt2, or --preset modern: llama)")
    if cfg.window is not None:
        raise _refuse(f"window={cfg.window} (sliding-window attention)", "the same model with window=None")
    if cfg.emb_scale != 1.0:  # no stock forward multiplies the token embeddings
        raise _refuse(f"emb_scale={cfg.emb_scale} (token embeddings multiplied before the blocks)",
                      "emb_scale=1.0, retrained (pos='learned' or pos='rope' need no scale)")
    if cfg.pos == "none":
        raise _refuse("pos='none' (no position encoding)", "pos='learned' (gpt2) or pos='rope' with norm='rmsnorm' "
                      "and mlp='swiglu' (llama)")
    if cfg.pos in ("learned", "sinusoidal"):
        wrong = gpt2_refusal(cfg)
        if wrong:
            raise _refuse(*wrong)
        return "gpt2"
    # pos == "rope"
    llama = "pos='rope', norm='rmsnorm', mlp='swiglu' (llama; add qk_norm=True, bias=False for qwen3)"
    if cfg.rope_scaling is not None:
        raise _refuse(f"rope_scaling={cfg.rope_scaling}", f"rope_scaling=None with {llama}")
    partial = f"rope_pct={cfg.rope_pct} (partial RoPE)"
    if nanochat_wanted(cfg) and cfg.rope_pct != 1.0:
        raise _refuse(f"{partial} in nanochat's block", f"rope_pct=1.0; or partial RoPE with {NEOX_NEAREST}")
    if not nanochat_wanted(cfg) and (cfg.norm == "layernorm" or cfg.mlp in ("gelu", "gelu_tanh", "relu")):
        wrong = neox_misfits(cfg)
        if wrong:
            raise _refuse(f"pos='rope' with norm={cfg.norm!r}, mlp={cfg.mlp!r}: "
                          f"{', '.join(o for o, _ in wrong)} (gpt_neox's block is LayerNorm + GELU, MHA)",
                          f"{', '.join(f for _, f in wrong)} (gpt_neox); or {llama}")
        return "gpt_neox"
    if cfg.rope_pct != 1.0:
        raise _refuse(partial, f"rope_pct=1.0 with {llama}; or partial RoPE with {NEOX_NEAREST}")
    if nanochat_wanted(cfg):
        wrong = nanochat_misfits(cfg)
        if not wrong:
            return "nanochat"
        if cfg.mlp != "swiglu" or cfg.logit_softcap is not None or not cfg.norm_params or cfg.emb_norm:
            lead = "mlp='relu2' with pos='rope' and " if cfg.mlp == "relu2" else ""
            raise _refuse(f"{lead}{', '.join(o for o, _ in wrong)} (llama/qwen3 blocks are SwiGLU; nanochat's has "
                          f"ReLU^2, parameter-free norms, an embedding norm and soft cap {SOFTCAP})",
                          f"{', '.join(f for _, f in wrong)} (nanochat; --preset nanochat-3x192 is modern-3x192 so)")
    # here norm='rmsnorm' and mlp='swiglu': every other norm/MLP went to gpt_neox or nanochat above
    if cfg.qk_norm:
        if cfg.bias:
            raise _refuse("qk_norm=True with bias=True (qwen3 has no MLP biases)", "qk_norm=True, bias=False (qwen3)")
        return "qwen3"
    return "llama"


def export_notices(cfg: ModelConfig, layout: str) -> list[str]:
    """What an export keeps or changes that a user should know (one line each); none means an exact export."""
    if layout == "gpt2":
        return gpt2_notices(cfg)
    if layout == "gpt_neox":
        return neox_notices(cfg)
    out = []
    if cfg.dropout_emb or cfg.dropout_resid:
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
        return gpt2_config(cfg, common)
    if layout == "gpt_neox":
        return neox_config(cfg, common)
    return llama_config(cfg, layout, common)

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
    table_cfg = cfg
    if layout == "gpt_neox":  # its layers always have biases: a bias-free model's are zeros (the same function)
        table_cfg = with_biases(cfg)
        src.update({n: np.zeros(s, np.float32) for n, s in table_cfg.param_shapes().items() if n not in src})
    tensors, used = {}, set()
    body = "" if layout == "gpt2" else PREFIXES[layout]  # gpt2: no prefix (mlx-lm needs that); the others as saved
    head = HEADS.get(layout, "lm_head.weight")
    for names, hf, how in mapping(table_cfg, layout):
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
        elif how == "qkv":
            a = np.concatenate(arrays, axis=0)[qkv_rows(cfg.n_head, cfg.head_dim)]
        else:  # "cat"
            a = np.concatenate(arrays, axis=0)
        tensors[hf if hf == head else body + hf] = np.ascontiguousarray(a, dtype=np.float32)
    if layout == "gpt_neox" and cfg.tie_embeddings:  # mlx-lm's gpt_neox always loads its own head
        tensors[head] = tensors[body + "embed_in.weight"].copy()
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


def _rope(c: dict, neox: bool = False) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor) from transformers 5's rope_parameters or the older top-level fields
    (gpt_neox's rotary_emb_base / rotary_pct, whose factor transformers defaults to 0.25); refuses scaled RoPE."""
    rp = c.get("rope_parameters")
    if isinstance(rp, dict) and rp and not ("rope_theta" in rp or "rope_type" in rp):
        raise ValueError(f"rope_parameters per layer type ({sorted(rp)}) are not something nano imports")
    rp = rp if isinstance(rp, dict) else {}
    scaling = c.get("rope_scaling") or {}
    kind = rp.get("rope_type") or rp.get("type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(f"rope scaling {kind!r} is not something nano imports (only unscaled RoPE)")
    top_pct, top_theta = ("rotary_pct", "rotary_emb_base") if neox else ("partial_rotary_factor", "rope_theta")
    partial = float(_get(rp, "partial_rotary_factor", default=_get(c, top_pct, default=0.25 if neox else 1.0)))
    return float(_get(rp, "rope_theta", default=_get(c, top_theta, default=10000.0))), partial


def _rope_theta(c: dict) -> float:
    theta, partial = _rope(c)
    if partial != 1.0:
        raise ValueError(f"partial_rotary_factor={partial} is not something nano imports in a "
                         f"{c.get('model_type')} model (partial RoPE imports as gpt_neox)")
    return theta


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
        return gpt2_model_config(c, notes), mt, notes
    if mt == "gpt_neox":
        return neox_model_config(c, *_rope(c, neox=True), notes), mt, notes
    return llama_model_config(c, _rope_theta(c), notes), mt, notes

def from_hf(c: dict, tensors: dict[str, np.ndarray]) -> tuple[ModelConfig, dict[str, np.ndarray], list[str]]:
    """(ModelConfig, nano weights, notes) from a config.json dict and its tensors (any float dtype; names as
    save_pretrained writes them, with or without the body prefix); ValueError (one line) when they do not fit."""
    cfg, layout, notes = config_from_hf(c)
    body = PREFIXES[layout]
    plain = {}
    if layout == "nanochat":  # transformers' or mlx-lm's (nanochat's own) names
        tensors = hf_names(tensors)
    elif layout == "gpt_neox":  # nano's, transformers' (head as lm_head) or mlx-lm's names
        tensors = neox_names(tensors)
    for k, v in tensors.items():
        k2 = k[len(body):] if k.startswith(body) else k
        if k2 in plain:
            raise ValueError(f"tensor {k2} appears twice (with and without the {body!r} prefix)")
        plain[k2] = v
    entries = mapping(cfg, layout)
    wanted = {hf for _, hf, _ in entries}
    head_name = HEADS.get(layout, "lm_head.weight")
    if cfg.tie_embeddings and head_name in plain:
        head = plain.pop(head_name)
        emb = plain.get(TABLES[layout][0][0][1])
        if emb is not None and (head.shape != emb.shape or not np.array_equal(head, emb)):
            notes.append(f"{head_name} in the file differs from the embedding but tie_word_embeddings is true: "
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
        elif how == "qkv":
            a = a[np.argsort(qkv_rows(cfg.n_head, cfg.head_dim))]
        parts = np.split(a, np.cumsum([shapes[n][0] for n in names])[:-1], axis=0) if len(names) > 1 else [a]
        for n, p in zip(names, parts):
            if tuple(p.shape) != tuple(shapes[n]):
                raise ValueError(f"{hf} has shape {tuple(a.shape)}, config.json implies {shapes[n]} for {n}")
            out[n] = np.ascontiguousarray(p)
    return cfg, out, notes


# ---------------------------------------------------------------------------------------------- files
def load_pretrained(directory, tokenizer: bool = True):
    """An HF-layout gpt2 / llama / qwen3 / nanochat / gpt_neox directory -> (ModelConfig, weights in nano names,
    tokenizer or None, notes).

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
