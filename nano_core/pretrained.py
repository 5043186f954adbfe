"""Where starting weights come from: --init-from (a nano checkpoint or a Hugging Face directory) and the frozen
base of a LoRA checkpoint, which is loaded again from that same source and checked against the hash the run
recorded. Used by the run setup (nano_core/run.py), generation, evaluation and fuse.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nano_core.checkpoint import checkpoint_tokenizer_dir, list_checkpoints, load_checkpoint, resolve_checkpoint
from nano_core.config import ModelConfig
from nano_core.hf import load_pretrained
from tokenizer import load_tokenizer


@dataclass
class InitFrom:
    """Starting weights for a fresh run (--init-from): the model's config, its weights, its tokenizer."""
    source: str
    model_config: ModelConfig
    weights: dict
    tokenizer: object
    describe: str


def load_init_from(spec: str, log=print, tokenizer: bool = True) -> InitFrom:
    """A nano checkpoint (or run dir: its newest good checkpoint), or a Hugging Face gpt2/llama/qwen3 directory.
    tokenizer=False: the weights alone (a LoRA base, whose run keeps its own copy of the tokenizer)."""
    path = Path(spec)
    if (path / "config.json").is_file() and not list_checkpoints(path):
        cfg, weights, tok, notes = load_pretrained(path, tokenizer=tokenizer)
        for note in notes:
            log(f"notice: {note}")
        if tok is None and tokenizer:
            raise ValueError(f"--init-from {path} has no tokenizer.json: nano needs the model's tokenizer to encode "
                             f"the data; copy the tokenizer files of that model into {path}")
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        return InitFrom(str(path), cfg, weights, tok, f"Hugging Face {model_type} model {path}")
    ckpt = resolve_checkpoint(spec, notices=log)
    weights, _, meta = load_checkpoint(ckpt)
    return InitFrom(str(ckpt), ModelConfig.from_dict(meta["model_config"]), weights,
                    load_tokenizer(checkpoint_tokenizer_dir(ckpt)) if tokenizer else None,
                    f"nano checkpoint {ckpt} (step {meta['step']})")


def fit_context(init: InitFrom, seq_len: int | None) -> ModelConfig:
    """The starting model's config with --seq-len applied: shorter is fine (a learned position table is cut),
    longer only where no position table limits it."""
    cfg = init.model_config
    if seq_len is None or seq_len == cfg.seq_len:
        return cfg
    if cfg.pos == "learned" and seq_len > cfg.seq_len:
        raise ValueError(f"--seq-len {seq_len} is longer than the learned position table of --init-from "
                         f"({cfg.seq_len}); use at most {cfg.seq_len}")
    if cfg.pos == "learned":
        init.weights = {**init.weights, "wpe.weight": init.weights["wpe.weight"][:seq_len]}
    return ModelConfig.from_dict({**cfg.to_dict(), "seq_len": seq_len})


def weights_hash(weights: dict) -> str:
    """Identity of a set of weights (names, shapes, float32 bytes): what a LoRA checkpoint records of its base."""
    h = hashlib.sha256()
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name], dtype=np.float32)
        h.update(f"{name}{a.shape}".encode() + a.tobytes())
    return h.hexdigest()


def load_lora_base(base_info: dict, seq_len: int, log=print) -> dict:
    """The frozen base weights of a LoRA checkpoint: loaded again from where the run started, and checked."""
    init = load_init_from(base_info["source"], log, tokenizer=False)
    fit_context(init, seq_len)
    if weights_hash(init.weights) != base_info["hash"]:
        raise ValueError(f"the base model of this LoRA checkpoint ({base_info['source']}) is not the one it was "
                         f"trained on (its weights changed); adapters only make sense on their own base")
    return init.weights
