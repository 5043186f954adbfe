"""What a training run was asked to do: the parsed flags, completed once into the run's frozen TrainConfig.

Names in the train modules: `config` is a TrainConfig (what was asked), `model_config` a ModelConfig (the model's
spec), `plan` a Plan (what nano works out from both: nano_core/plan.py).

The flags are completed by making a new TrainConfig (dataclasses.replace), never by writing one:
1. --resume (resolve_resume): the checkpoint's saved settings for every flag not typed again, except NOT_RESUMED; a
   typed flag that contradicts the checkpoint's model, LoRA or data is a one-line error (check_resume_flags);
2. a fresh run (resolve_defaults): with no model given, the device's recipe (nano_core/recipes.py) fills what the
   user left at nano's defaults, and the device's preset is the model.
check_config then refuses, in one line each, settings that cannot run, before any data is prepared.
"""
from __future__ import annotations

import json
import os
from dataclasses import fields, replace
from pathlib import Path

from nano_core import model_flags
from nano_core.checkpoint import read_meta, resolve_checkpoint
from nano_core.checks import check_number, check_train_numbers
from nano_core.cli import DEFAULT_PRESET, TrainConfig
from nano_core.config import ModelConfig
from nano_core.eval import EvalSettings, check_settings, parse_tasks
from nano_core.lora import LoraConfig
from nano_core.lr_groups import check_lr_groups
from nano_core.muon import check_muon_args, check_variants
from nano_core.recipes import DEFAULT_RECIPE, RECIPES, Recipe
from nano_core.schedule import check_schedule
from tokenizer.bpe import check_vocab_size

# Tests (and impatient people) can shrink the no-argument run without touching the flags' documented defaults.
MAX_STEPS_ENV = "NANO_DEFAULT_MAX_STEPS"
# On --resume every setting comes from the checkpoint unless typed again, except these, which belong to the
# session or the machine (and --device values differ between backends, so a checkpoint can change backend); a
# resumed run continues from its checkpoint, never from its starting weights (--init-from) again. An open time
# budget goes on from the checkpoint's plan (nano_core/plan.py), not from --max-time.
NOT_RESUMED = ("resume", "out", "device", "compile", "memory_limit", "attn_impl", "wandb", "max_time", "overwrite",
               "init_from", "dist_timeout")
# What a resumed run cannot change: its model, its adapters, its data. Typing one of these with another value than
# the checkpoint holds is an error (the flag would be ignored, yet recorded in the next checkpoint as if it applied).
MODEL_FLAGS = ("preset", "config", "recipe", "seq_len", "vocab_size", "zero_init_proj")
LORA_FLAGS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "lora_layers")
# --data is checked against the shards once they are read (run.py)
DATA_FLAGS = ("source", "instruct_data", "tokenizer")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- resume ------------------------------------------------------------------------------------------------------
def resumed_config(config: TrainConfig, saved: dict, typed: set[str]) -> TrainConfig:
    """`config` with the checkpoint's run settings for every flag the user did not type again."""
    known = {f.name for f in fields(TrainConfig)}  # a checkpoint of an older version may hold flags gone since
    taken = {name: value for name, value in saved.items()
             if name in known and name not in typed and name not in NOT_RESUMED}
    # a length typed again replaces the saved one: --epochs excludes --max-steps / --max-time
    if typed & {"max_steps", "max_time"}:
        taken["epochs"] = None
    if "epochs" in typed:
        taken["max_steps"] = None
    if "model_overrides" in typed:  # typed again (agreeing with the checkpoint): the saved ones stay recorded too
        taken["model_overrides"] = {**(saved.get("model_overrides") or {}), **config.model_overrides}
    return replace(config, **taken)


def resolve_resume(config: TrainConfig, typed: set[str], log=print) -> tuple[TrainConfig, Path | None, dict | None]:
    """(the config with the checkpoint's settings, the checkpoint, its meta) for --resume; (config, None, None)
    when starting fresh. Runs before the backend is built: the checkpoint's dtype decides the backend's. "latest"
    and a run dir fall back past damaged checkpoints, with a notice for each one skipped."""
    if not config.resume:
        return config, None, None
    path = resolve_checkpoint(config.resume, config.out, notices=log)
    meta = read_meta(path)
    check_resume_flags(config, typed, meta, path)
    return resumed_config(config, meta.get("train_config", {}), typed), path, meta


def _same_path(a, b) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _held(name: str, meta: dict) -> tuple[object, str]:
    """(the checkpoint's value for flag `name`, how to say what the checkpoint holds)."""
    saved, model, lora = meta.get("train_config", {}), meta["model_config"], meta.get("lora")
    if saved.get("preset"):
        shape = f"preset {saved['preset']}"
    elif saved.get("config"):
        shape = f"the model of --config {saved['config']}"
    else:
        shape = f"a model from {meta.get('init_from') or 'its own config'}"
    shape += f" ({model.get('n_layer')} layers x {model.get('n_embd')})"
    if name in ("seq_len", "vocab_size"):
        return model.get(name), f"{name.replace('_', ' ')} {model.get(name)}"
    if name in ("preset", "config"):
        return saved.get(name), shape
    if name == "recipe":
        return saved.get("recipe") or "none", f"recipe {saved.get('recipe') or 'none'}: {shape}"
    if name in LORA_FLAGS:
        key = name.removeprefix("lora_")
        if not lora:
            return None, "no LoRA adapters (all weights train)"
        value = LoraConfig.from_dict(lora).to_dict()[key]
        return value, f"LoRA adapters with {key} {','.join(value) if key == 'targets' else value}"
    if name == "zero_init_proj":  # checkpoints from before the flag started from GPT-2's init
        held = bool(saved.get(name))
        return held, "a run started with " + ("zero-initialised projections" if held else "GPT-2's initialisation")
    if name == "tokenizer":  # checkpoints from before --tokenizer were all BPE
        return saved.get("tokenizer") or "bpe", f"a {saved.get('tokenizer') or 'bpe'} tokenizer"
    if name == "source":
        return saved.get("source"), (f"data from --source {' '.join(saved['source'])}" if saved.get("source")
                                     else f"the shards in {meta.get('data_dir')}")
    return saved.get(name), f"--{name.replace('_', '-')} {saved.get(name)}"


def _agrees(name: str, typed_value, held, meta: dict) -> bool:
    if name == "config":  # another path to the same model is no conflict (with the --model.* fields on top)
        fields_ = {**read_config_file(typed_value), **(meta.get("train_config", {}).get("model_overrides") or {})}
        return all(meta["model_config"].get(k) == v for k, v in fields_.items() if k not in ("seq_len", "vocab_size"))
    if name == "lora_targets":
        return held is not None and set(LoraConfig(1, targets=typed_value).targets) == set(held)
    if name == "source":
        return held is not None and len(held) == len(typed_value) and all(
            a == b or _same_path(a, b) for a, b in zip(typed_value, held))
    if name == "instruct_data":
        return typed_value == held or _same_path(typed_value, held)
    if name == "lora_rank" and held is None:
        return not typed_value  # --lora-rank 0 asks for no adapters
    return typed_value == held


def check_resume_flags(config: TrainConfig, typed: set[str], meta: dict, path) -> None:
    """A typed flag that contradicts the checkpoint's model, LoRA or data: one line naming the flag and what the
    checkpoint holds. Flags typed with the value the checkpoint holds, and every other flag, are fine."""
    for name in [n for n in (*MODEL_FLAGS, *LORA_FLAGS, *DATA_FLAGS) if n in typed]:
        value = getattr(config, name)
        held, what = _held(name, meta)
        if not _agrees(name, value, held, meta):
            shown = " ".join(value) if isinstance(value, list) else value
            raise _conflict(f"{flag_name(name)} {shown}", flag_name(name), path, what)
    if "model_overrides" in typed:
        conflict = model_flags.resume_conflict(config.model_overrides, meta["model_config"])
        if conflict is not None:
            typed_flag, what = conflict
            raise _conflict(typed_flag, typed_flag.partition("=")[0], path, what)


def _conflict(typed_flag: str, name: str, path, what: str) -> ValueError:
    return ValueError(f"{typed_flag} conflicts with the checkpoint {path}, which holds {what}; a resumed run keeps "
                      f"its model, adapters and data: drop {name}, or start a new run from its weights with "
                      f"--init-from {path}")


# --- a fresh run: the device's recipe and preset -----------------------------------------------------------------
def device_kind(device: str) -> str:
    return "cpu" if device == "cpu" else "accelerator"


def resolve_defaults(config: TrainConfig, device: str, typed: set[str] = frozenset(), resuming: bool = False,
                     log=print) -> TrainConfig:
    """The config with the defaults that depend on the device: with no model given, the device's recipe
    (nano_core/recipes.py), which sets the preset and the training settings left at nano's defaults; the step
    budget also depends on the data and is planned once the data is known (nano_core/plan.py). A resumed run
    keeps what its checkpoint recorded."""
    if resuming:
        return config
    no_model = config.preset is None and config.config is None and config.init_from is None
    if config.recipe is None and no_model:
        config = replace(config, recipe=DEFAULT_RECIPE[device_kind(device)])
    if config.recipe not in (None, "none"):
        config = apply_recipe(config, RECIPES[config.recipe], typed, log)
    if config.preset is None and config.config is None and config.init_from is None:
        config = replace(config, preset=DEFAULT_PRESET[device_kind(device)])
    return config


def apply_recipe(config: TrainConfig, recipe: Recipe, typed: set[str], log=print) -> TrainConfig:
    """The config with the recipe's model and settings, for every one the user neither typed nor changed from
    nano's default."""
    defaults, fills = TrainConfig(), {}
    own_model = config.preset is None and config.config is None and config.init_from is None
    if own_model:
        fills["preset"] = recipe.preset
    for name, value in recipe.train.items():
        # the group lrs are a full model's (a LoRA run trains only adapters), and the head's is for the recipe's
        # untied head: a model the user brings may tie it (the table then takes --embed-lr); typed, both are checked
        if (name in ("embed_lr", "head_lr") and config.lora_rank is not None) or (name == "head_lr" and not own_model):
            continue
        if name not in typed and getattr(config, name) == getattr(defaults, name):
            fills[name] = value
    # its time budget, unless the run has a length already (typed, or shrunk for tests through MAX_STEPS_ENV)
    if config.max_steps is None and config.max_time is None and config.epochs is None and \
            MAX_STEPS_ENV not in os.environ:
        fills["max_time"] = recipe.budget_s
    log(recipe.describe())
    return replace(config, **fills)


# --- checks --------------------------------------------------------------------------------------------------------
def check_config(config: TrainConfig) -> None:
    """One-line errors for settings that cannot run, before any data is prepared."""
    check_train_numbers(config)  # finite and in range, naming the flag (--lr nan, --seq-len 0, ...)
    check_schedule(config)
    if config.epochs is not None:
        check_number("--epochs", config.epochs, low=0, low_open=True, hint="passes over the training data, e.g. 2 "
                     "or 0.5")
        both = [flag_name(n) for n in ("max_steps", "max_time") if getattr(config, n) is not None]
        if both:
            raise ValueError(f"--epochs and {' and '.join(both)} each set the length of the run; give one of them")
    if config.optimizer == "muon":  # its settings before any data is prepared (LoRA is checked with the model)
        check_muon_args(config.lr, config.muon_lr, config.muon_momentum, None)
    # the LoRA refusal now; the tied-head one needs the model (both backends' build_optimizer make it)
    check_lr_groups(None, config.embed_lr, config.head_lr, config.lora_rank)
    # Muon's variants only with Muon (after the recipe, which may have chosen it)
    check_variants(config.optimizer, config.muon_ns, config.normuon, config.cautious_wd, config.muon_momentum_warmup)
    if config.config is not None and config.resume is None:
        read_config_file(config.config)
    if config.model_overrides and config.resume is None:
        check_model_overrides(config)
    if config.zero_init_proj and config.init_from is not None and config.resume is None:
        raise ValueError("--zero-init-proj sets a fresh model's starting weights and --init-from brings trained "
                         "ones; drop one of them")
    if config.data is None:
        check_vocab_size(config.vocab_size)
    if config.tokenizer == "char":
        check_char_tokenizer(config)
    for name in ("max_steps", "max_time", "batch_size", "eval_steps", "sample_tokens", "log_every"):
        if getattr(config, name) is not None and getattr(config, name) <= 0:
            raise ValueError(f"{flag_name(name)} must be positive, got {getattr(config, name)}")
    if config.eval_tasks:  # every task known and its data file there before any work
        check_settings(eval_settings(config))
    if config.eval_limit is not None and config.eval_limit < 1:
        raise ValueError(f"--eval-limit must be >= 1, got {config.eval_limit}")
    for name in ("eval_every", "sample_every", "ckpt_every", "keep", "eval_tasks_every"):
        if getattr(config, name) < 0:
            raise ValueError(f"{flag_name(name)} must be >= 0, got {getattr(config, name)}")


def check_char_tokenizer(config: TrainConfig) -> None:
    """--tokenizer char makes a tokenizer from --source text: nothing else may bring or size one."""
    brings = {"data": "--data's shards were encoded by their own tokenizer", "init_from": "--init-from's model "
              "brings its own tokenizer", "instruct_data": "--instruct-data is encoded with the model's tokenizer"}
    for name, why in brings.items():
        if getattr(config, name) is not None and config.resume is None:
            raise ValueError(f"--tokenizer char conflicts with {flag_name(name)}: {why}; drop --tokenizer char, or "
                             f"train from --source text")
    if config.vocab_size != TrainConfig.vocab_size:
        raise ValueError(f"--vocab-size {config.vocab_size} does not apply to --tokenizer char (its vocabulary is "
                         f"the characters of the text); drop --vocab-size")


def check_model_overrides(config: TrainConfig) -> None:
    """The --model.* fields on the model they change, validated before any data is prepared (the vocabulary is
    the data's, known later: --vocab-size stands in for it here)."""
    if config.init_from is not None:
        model_flags.check_init_from(config.model_overrides)
    else:
        requested_model_config(config, config.vocab_size)


def requested_model_config(config: TrainConfig, vocab_size: int) -> ModelConfig:
    """The model a fresh run asks for: --config or --preset, with --seq-len, the vocabulary and the --model.*
    fields on top (validated: a spec error names the --model flags behind it)."""
    base = read_config_file(config.config) if config.config is not None else ModelConfig.from_preset(
        config.preset).to_dict()
    sizes = {"vocab_size": vocab_size, **({"seq_len": config.seq_len} if config.seq_len is not None else {})}
    return model_flags.apply({**base, **sizes}, config.model_overrides)


def eval_settings(config: TrainConfig) -> EvalSettings:
    """The benchmark tasks a training run evaluates (--eval-tasks), on their default data files."""
    return EvalSettings(parse_tasks(config.eval_tasks), limit=config.eval_limit)


def read_config_file(path) -> dict:
    """The ModelConfig fields in a --config JSON file, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path} not found; give a ModelConfig JSON file or use --preset")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
        raise ValueError(f"--config {path} is not valid JSON ({where})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} holds a JSON {type(data).__name__}; it must be an object of ModelConfig "
                         f'fields, e.g. {{"n_layer": 4, "n_embd": 256}}')
    return data
