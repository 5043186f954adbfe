"""Export a nano checkpoint as a Hugging Face model directory that transformers and mlx-lm load with no custom code:

    python -m nano_core.export --ckpt runs/tiny --out exported/tiny [--force]
    python -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('exported/tiny')"
    python -m mlx_lm generate --model exported/tiny --prompt "Once upon a time"

The directory holds config.json, model.safetensors (float32), tokenizer.json (tokenizer.io.export_hf: the same ids
as nano), tokenizer_config.json (PreTrainedTokenizerFast, eos <|endoftext|>, model_max_length = seq_len) and
generation_config.json (eos_token_id), and nano_export.json (what nano wrote, so that a later --force knows the
directory for its own). The layout (gpt2 / llama / qwen3 / nanochat) follows from the model config; see
nano_core/hf.py for what maps where and what is refused (a nanochat export holds its weights twice, once per
loader's names: nano_core/hf_nanochat.py says why). Everything is written into a hidden temp directory beside OUT
and renamed into place, so OUT is the old directory or the whole new one, never a mix. An existing non-empty OUT is
replaced only with --force and only when it is a previous nano export holding nothing but the files that export
wrote; any other non-empty directory is refused, --force or not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from nano_core.checkpoint import CKPT_RE, META_FILE, checkpoint_tokenizer_dir, emit, load_checkpoint
from nano_core.config import ModelConfig
from nano_core.hf import CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE, describe, to_hf
from nano_core.hf_nanochat import NANOCHAT_HF_FILE, NANOCHAT_MLX_FILE, hf_names, mlx_name
from nano_core.instruct_rows import CHAT_TEMPLATE
from nano_io.dirs import atomic_dir
from tokenizer.base import EOT
from tokenizer.bpe import BPETokenizer
from tokenizer.io import export_hf, load_tokenizer

TOKENIZER_CONFIG, GENERATION_CONFIG, MARKER = "tokenizer_config.json", "generation_config.json", "nano_export.json"
# What an export wrote before it left a marker: such a directory is still recognised as nano's own.
UNMARKED_EXPORT = {CONFIG_FILE, WEIGHTS_FILE, "tokenizer.json", TOKENIZER_CONFIG, GENERATION_CONFIG}


def export_files(out: Path) -> set[str] | None:
    """The names a previous nano export wrote into `out` (its marker's list, or the files of an export made before
    markers), or None when `out` is not one."""
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        if not (isinstance(files, list) and all(isinstance(f, str) and "/" not in f and f not in ("", ".", "..")
                                                for f in files)):
            return None
        return set(files) | {MARKER}
    except FileNotFoundError:
        return UNMARKED_EXPORT if (out / CONFIG_FILE).is_file() and (out / WEIGHTS_FILE).is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_out(out, force: bool, source=None) -> Path:
    """Refuse (ValueError, one line) an OUT that exists and is not an empty directory, unless it is a previous nano
    export holding only the files that export wrote and `force` is given; never a file, a directory holding nano
    checkpoints, one that holds the source checkpoint, or any other non-empty directory."""
    out = Path(out)
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise ValueError(f"--out {out} is a file; name a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    names = {p.name for p in out.iterdir()}
    if any(CKPT_RE.match(n) for n in names) or META_FILE in names:
        raise ValueError(f"--out {out} holds nano checkpoints (a run or checkpoint dir); pick another directory")
    if source is not None:
        src, dst = Path(source).resolve(), out.resolve()
        if src == dst or dst in src.parents:
            raise ValueError(f"--out {out} holds the checkpoint being exported; pick another directory")
    ours = export_files(out)
    if ours is None or names - ours:
        what = "is not a nano export" if ours is None else f"holds {sorted(names - ours)[0]!r}, which no export wrote"
        raise ValueError(f"--out {out} {what}; --force replaces only an empty directory or a previous export, so "
                         f"pick another --out (or empty this one yourself)")
    if not force:
        raise ValueError(f"--out {out} holds a previous export; add --force to replace it")
    return out


def tokenizer_files(tok, seq_len: int, chat: bool = False) -> tuple[dict, int | None]:
    """(tokenizer_config.json dict, eos id) for a nano tokenizer; chat=True adds nano's instruct template (only a
    model fine-tuned on it has one: a base model never saw its role markers, so it gets none)."""
    eos = tok.special_tokens.get(EOT)
    conf = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": seq_len,
            "clean_up_tokenization_spaces": False, "add_prefix_space": False}
    if eos is not None:
        conf.update(eos_token=EOT, bos_token=EOT)  # GPT-2's convention; nothing is prepended (no post-processor)
    if chat and eos is not None:
        conf["chat_template"] = CHAT_TEMPLATE
    return conf, eos


def export_model(cfg: ModelConfig, weights: dict, tok, out, force: bool = False, notices=None, source=None,
                 chat: bool = False) -> tuple[Path, str, list[str]]:
    """Write the HF directory OUT for (cfg, weights, tok) atomically; returns (OUT, layout, file names). chat: the
    model was fine-tuned on nano's instruct template (nano_core/instruct_rows.py), which goes into
    tokenizer_config.json. tok may be None or a character tokenizer (the model is written alone, with a notice).
    ValueError (one line) for a model with no stock form or a refused OUT."""
    out = check_out(out, force, source)
    eos = None
    tok_conf = None
    if tok is None:
        emit(notices, "no tokenizer: the directory holds the model only (transformers/mlx-lm need a tokenizer.json "
                      "beside it)")
    elif not isinstance(tok, BPETokenizer):
        emit(notices, f"the tokenizer is a {type(tok).__name__}, which has no HF tokenizer.json form: the directory "
                      f"holds the model only")
        tok = None
    else:
        if tok.vocab_size > cfg.vocab_size:
            raise ValueError(f"the tokenizer has {tok.vocab_size:,} ids but the model only {cfg.vocab_size:,} "
                             f"embedding rows")
        tok_conf, eos = tokenizer_files(tok, cfg.seq_len, chat)
        if eos is None:
            emit(notices, f"the tokenizer has no {EOT}: generation stops only at the length limit")
    config, tensors, layout_notices = to_hf(cfg, weights, eos_id=eos, bos_id=eos)
    for n in layout_notices:
        emit(notices, n)
    layout = config["model_type"]
    out.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    with atomic_dir(out, prefix=f".{out.name}.export-{pid}-", aside=out.with_name(f".{out.name}.replaced-{pid}")) \
            as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        files = [CONFIG_FILE] + _write_weights(tmp, layout, tensors)
        if tok is not None:
            export_hf(tok, tmp)
            (tmp / TOKENIZER_CONFIG).write_text(json.dumps(tok_conf, indent=2) + "\n")
            gen = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}
            (tmp / GENERATION_CONFIG).write_text(json.dumps(gen, indent=2) + "\n")
            files += ["tokenizer.json", TOKENIZER_CONFIG, GENERATION_CONFIG]
        (tmp / MARKER).write_text(json.dumps({"written_by": "nano_core.export", "layout": layout, "files": files},
                                             indent=2) + "\n")
        files.append(MARKER)
        check_out(out, force, source)  # checked again before the rename: OUT may have changed meanwhile
    return out, layout, files


def _write_weights(tmp: Path, layout: str, tensors: dict) -> list[str]:
    """The weight files; nanochat's twice, once per loader's names (nano_core/hf_nanochat.py says why)."""
    if layout != "nanochat":
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        return [WEIGHTS_FILE]
    save_file(tensors, str(tmp / NANOCHAT_HF_FILE), metadata={"format": "pt"})
    size = sum(a.nbytes for a in tensors.values())
    index = {"metadata": {"total_size": size}, "weight_map": {k: NANOCHAT_HF_FILE for k in sorted(tensors)}}
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    mlx = {mlx_name(k): a for k, a in hf_names(tensors).items()}
    save_file(mlx, str(tmp / NANOCHAT_MLX_FILE), metadata={"format": "mlx"})
    return [INDEX_FILE, NANOCHAT_HF_FILE, NANOCHAT_MLX_FILE]


def export_checkpoint(spec, out, force: bool = False, notices=None) -> str:
    """Export checkpoint `spec` (a checkpoint dir or a run dir: its newest good checkpoint) to OUT; returns the
    one-line summary."""
    check_out(out, force, spec)  # before reading anything
    weights, _, meta = load_checkpoint(spec, notices=notices)
    cfg = ModelConfig.from_dict(meta["model_config"])
    ckpt = Path(meta["path"])
    try:
        tok = load_tokenizer(checkpoint_tokenizer_dir(ckpt))
    except FileNotFoundError as e:
        emit(notices, str(e))
        tok = None
    weights = {k: np.asarray(v) for k, v in weights.items()}
    chat = bool((meta.get("train_config") or {}).get("instruct_data"))  # fine-tuned on nano's chat template
    out, layout, files = export_model(cfg, weights, tok, out, force, notices, source=ckpt, chat=chat)
    chat_note = ", with nano's chat template" if chat and tok is not None else ""
    return (f"exported {ckpt} (step {meta['step']}) as {layout} ({describe(cfg)}, float32{chat_note}) -> {out}: "
            f"{', '.join(files)}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m nano_core.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a checkpoint dir, or a run dir (its newest good checkpoint)")
    p.add_argument("--out", required=True, help="the HF model directory to write")
    p.add_argument("--force", action="store_true",
                   help="replace a previous export in --out (never any other non-empty directory)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        summary = export_checkpoint(args.ckpt, args.out, args.force,
                                    notices=lambda m: print(f"notice: {m}", file=sys.stderr))
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: could not write {args.out}: {e.strerror or e}")
    except KeyboardInterrupt:
        print(f"interrupted: {args.out} is unchanged", file=sys.stderr)
        sys.exit(130)
    print(summary)


if __name__ == "__main__":
    main()
