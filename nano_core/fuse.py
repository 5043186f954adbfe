"""Fold a LoRA fine-tune's adapters into its base weights, giving a plain nano checkpoint (generate, eval, export and
--init-from take it like any other):

    python -m nano_core.fuse --ckpt runs/sft/ckpt_0000500 --out runs/sft-fused

The merge itself is nano_core.lora.fuse_checkpoint: W' = W + (alpha / rank) * B @ A for every adapted Linear,
float64 accumulation, float32 out. OUT becomes a run dir holding one checkpoint `ckpt_{step}` of the base ModelConfig
(no optimizer state: it is a model to use, or to start a new run from with --init-from), with the tokenizer copied.
OUT must be new or empty.

A LoRA checkpoint (what `--lora-rank` runs write) is a nano checkpoint whose model.safetensors holds the adapters
alone (`h.{i}.attn.wq.lora_a`, ...: megabytes, not a copy of the model) and whose meta.json has "lora" (a
LoraConfig.to_dict()) and "base" ({"source": the --init-from it started from, "hash": of those weights}); the
base is loaded from its source again and checked against the hash (nano_core.run.load_lora_base).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nano_core.checkpoint import checkpoint_tokenizer_dir, load_checkpoint, save_checkpoint
from nano_core.export import check_out
from nano_core.lora import LoraConfig, fuse_checkpoint
from nano_core.pretrained import load_lora_base


def read_lora_checkpoint(path) -> tuple[dict, dict, LoraConfig, dict]:
    """(base weights, adapters, LoraConfig, meta) of a LoRA checkpoint; ValueError (one line) for one without LoRA."""
    adapters, _, meta = load_checkpoint(path)
    if not meta.get("lora"):
        raise ValueError(f"{meta['path']} is not a LoRA checkpoint (its meta.json has no 'lora'); nothing to fuse")
    base = load_lora_base(meta["base"], meta["model_config"]["seq_len"])
    return base, adapters, LoraConfig.from_dict(meta["lora"]), meta


def fuse_to(ckpt, out) -> Path:
    """Write the fused model of LoRA checkpoint `ckpt` as a checkpoint in run dir `out`; returns its path."""
    base, adapters, lora, meta = read_lora_checkpoint(ckpt)
    fused = fuse_checkpoint(base, adapters, lora, meta["model_config"])
    out = check_out(out, force=False, source=meta["path"])
    new_meta = {k: v for k, v in meta.items() if k not in ("lora", "base", "path", "optimizer")}
    new_meta["fused_from"] = {"checkpoint": meta["path"], "lora": lora.to_dict()}
    try:
        tok = checkpoint_tokenizer_dir(meta["path"])
    except (FileNotFoundError, ValueError):
        tok = None
    return save_checkpoint(out, int(meta["step"]), fused, {}, new_meta, keep=0,
                           tokenizer_dir=tok if tok is not None and Path(tok).is_dir() else None)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m nano_core.fuse", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a LoRA checkpoint directory (or a run dir: its newest checkpoint)")
    p.add_argument("--out", required=True, help="the run dir to write the fused checkpoint into")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        path = fuse_to(args.ckpt, args.out)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: could not write {args.out}: {e.strerror or e}")
    print(f"fused model written to {path}")


if __name__ == "__main__":
    main()
