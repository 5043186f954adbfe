"""`--model.FIELD=VALUE` (or `--model.FIELD VALUE`): any ModelConfig field from the train command line.

    python -m nano_torch.train --preset tiny --model.pos=rope --model.n_kv_head=2 --model.window=64

The fields go on top of the preset or --config file (or the device's recipe), are parsed by the field's type and
checked by ModelConfig.validate before any data is prepared; TrainConfig keeps them as `model_overrides` (a dict
of field -> value), so the checkpoint records them with every other setting and --resume refuses one that
contradicts the checkpoint's model. The flags are generated from ModelConfig's fields, so a field added to the
spec is a flag of both backends without more code.

Values: int, float (finite), bool (true/false, 1/0, yes/no), str, `none` for a field that may be None, and the
rope_scaling dict as JSON (`--model.rope_scaling '{"type": "yarn", "factor": 4, "original_max_len": 256}'`).
Two fields are the run's own flags under another name: --model.seq_len is --seq-len and --model.vocab_size is
--vocab-size (the tokenizer's vocabulary, which the model takes from the data).
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import types
import typing
from dataclasses import fields

from nano_core.config import ARCHS, MLPS, NORMS, POSITIONS, RNN_ACTS, ModelConfig

PREFIX = "--model."
DEST = "model."  # argparse destinations of these flags: "model.pos", ... (collected into model_overrides)
ALIASES = ("seq_len", "vocab_size")  # the same setting as the run's --seq-len / --vocab-size
# What starting weights (--init-from) leave free: dropout changes what training does, not what the weights mean.
INIT_FROM_FREE = ("dropout_emb", "dropout_attn", "dropout_resid")
GROUP = "model fields"
GROUP_HELP = ("any ModelConfig field (nano_core/config.py) on top of the preset, --config or recipe: "
              "--model.FIELD=VALUE or --model.FIELD VALUE; none empties an optional field, rope_scaling takes JSON")

HELP = {
    "arch": " | ".join(ARCHS),
    "vocab_size": "the same as --vocab-size",
    "n_layer": "blocks",
    "n_head": "attention heads",
    "n_kv_head": "key/value heads: none = n_head (MHA), 1 = MQA, in between = GQA",
    "n_embd": "model width",
    "seq_len": "the same as --seq-len",
    "mlp": " | ".join(MLPS),
    "mlp_hidden": "MLP width (none: 4 x n_embd, or 8/3 x n_embd for swiglu)",
    "norm": " | ".join(NORMS),
    "norm_eps": "epsilon of every norm",
    "norm_params": "false: parameter-free norms",
    "emb_norm": "a norm right after the embedding",
    "emb_scale": "token embeddings x this before positions are added (sqrt(n_embd) as Vaswani et al.)",
    "pos": " | ".join(POSITIONS),
    "rope_theta": "RoPE base",
    "rope_pct": "partial rotary: the fraction of each head's dims rotated",
    "rope_scaling": 'JSON, e.g. {"type": "ntk", "factor": 2} (types linear, ntk, yarn)',
    "window": "sliding-window size (none: full attention)",
    "window_pattern": "per-layer pattern of S (sliding) and L (full), repeated",
    "qk_norm": "RMSNorm on each head's queries and keys",
    "bias": "biases in the Linears and LayerNorms",
    "dropout_emb": "dropout after the embedding",
    "dropout_attn": "dropout on the attention weights",
    "dropout_resid": "dropout on each residual branch",
    "tie_embeddings": "the head shares the token embedding",
    "logit_softcap": "logits = c * tanh(logits / c) (none: off)",
    "rnn_act": " | ".join(RNN_ACTS) + " (arch rnn)",
}

TRUE, FALSE, NONE = ("true", "1", "yes", "on"), ("false", "0", "no", "off"), ("none", "null")


def field_types() -> dict[str, tuple[type, bool]]:
    """Field name -> (its type, whether None is allowed), from ModelConfig's annotations."""
    out = {}
    for name, hint in typing.get_type_hints(ModelConfig).items():
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds = [a for a in args if a is not type(None)]
        out[name] = (kinds[0], len(kinds) < len(args))
    return out


def parse_value(kind: type, optional: bool, text: str):
    """`text` as a value of a field of type `kind` (None where allowed), or ValueError saying what was expected."""
    low = text.strip().lower()
    if optional and low in NONE:
        return None
    expected = {int: "an integer", float: "a finite number", bool: "true or false", dict: "a JSON object",
                str: "text"}[kind] + (" or none" if optional else "")
    try:
        if kind is bool:
            if low not in TRUE + FALSE:
                raise ValueError
            return low in TRUE
        if kind is int:
            return int(low, 10)  # "1.5", "0x10" and "true" are slips, not integers
        if kind is float:
            value = float(low)
            if not math.isfinite(value):
                raise ValueError
            return value
        if kind is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
        return text
    except ValueError:
        raise ValueError(f"expected {expected}, got {text!r}") from None


def _argparse_type(kind: type, optional: bool):
    def convert(text: str):
        try:
            return parse_value(kind, optional, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = kind.__name__
    return convert


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """One --model.FIELD flag per ModelConfig field, in a group of their own (absent unless typed)."""
    group = parser.add_argument_group(GROUP, GROUP_HELP)
    defaults = ModelConfig()
    for name, (kind, optional) in field_types().items():
        metavar = {bool: "BOOL", dict: "JSON", int: "INT", float: "FLOAT", str: "STR"}[kind]
        group.add_argument(PREFIX + name, dest=DEST + name, type=_argparse_type(kind, optional),
                           default=argparse.SUPPRESS, metavar=metavar,
                           help=f"{HELP.get(name, '')} (spec default: {getattr(defaults, name)})".lstrip())


def check_flag_names(parser: argparse.ArgumentParser, argv) -> None:
    """An unknown --model.FIELD is one line naming it and the nearest field (argparse would only say it was not
    recognized, or quietly take a prefix of another field's name)."""
    known = [f.name for f in fields(ModelConfig)]
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith(PREFIX):
            name = arg[len(PREFIX):].partition("=")[0]
            if name not in known:
                near = difflib.get_close_matches(name.replace("-", "_"), known, n=1)
                hint = f"did you mean {PREFIX}{near[0]}?" if near else f"fields: {', '.join(known)}"
                parser.error(f"{PREFIX}{name}: no such model field; {hint}")


def collect(parser: argparse.ArgumentParser, values: dict, typed: set[str]) -> tuple[dict, set[str]]:
    """(TrainConfig's keyword arguments, the typed fields) from argparse's namespace: the --model.* values become
    `model_overrides` (None when none was typed), and the two aliases the run's --seq-len / --vocab-size."""
    values, typed = dict(values), set(typed)
    overrides = {key[len(DEST):]: values.pop(key) for key in list(values) if key.startswith(DEST)}
    typed = {name for name in typed if not name.startswith(DEST)}
    for name in ALIASES:
        if name in overrides:
            value = overrides.pop(name)
            if name in typed and values[name] != value:
                flag = "--" + name.replace("_", "-")
                parser.error(f"{PREFIX}{name}={value} contradicts {flag} {values[name]}; give one of them")
            values[name] = value
            typed.add(name)
    values["model_overrides"] = overrides or None
    if overrides:
        typed.add("model_overrides")
    return values, typed


def describe(overrides: dict) -> str:
    """The flags as typed, for messages: --model.pos=rope --model.window=64."""
    return " ".join(f"{PREFIX}{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in overrides.items())


def apply(model_config: ModelConfig | dict, overrides: dict | None) -> ModelConfig:
    """The model with the --model.* fields on top, validated; a spec error names the flags that caused it."""
    if isinstance(model_config, ModelConfig) and not overrides:
        return model_config
    base = model_config.to_dict() if isinstance(model_config, ModelConfig) else dict(model_config)
    if not overrides:
        return ModelConfig.from_dict(base)
    try:
        return ModelConfig.from_dict({**base, **overrides})
    except ValueError as e:
        named = {k: v for k, v in overrides.items() if k in str(e)} or overrides
        raise ValueError(f"{describe(named)}: {e}") from None


def check_init_from(overrides: dict | None) -> None:
    """Starting weights fix the model's shape and what its weights compute: only dropout may change."""
    fixed = [k for k in overrides or {} if k not in INIT_FROM_FREE]
    if fixed:
        raise ValueError(f"{describe({k: overrides[k] for k in fixed})} conflicts with --init-from: the starting "
                         f"weights fix the model; only {', '.join(PREFIX + k for k in INIT_FROM_FREE)} may change")


def resume_conflict(overrides: dict | None, held: dict) -> tuple[str, str] | None:
    """The first typed field whose value the checkpoint's model (`held`, its model_config) does not have, as
    (the flag, what the checkpoint holds); None when they all agree. A field the checkpoint predates holds the
    spec's default (what ModelConfig.from_dict gives it)."""
    defaults = ModelConfig().to_dict()
    for name, value in (overrides or {}).items():
        have = held.get(name, defaults.get(name))
        if have != value:
            return f"{PREFIX}{name}={value}", f"{name} {have}"
    return None
