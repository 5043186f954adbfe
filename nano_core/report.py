"""What a training run says: its start-up line, its time estimate, its closing line, and what a resume that has
nothing to do says instead. The same words for both backends; only figures the run has are shown (a run on
instruction rows has no unigram bars, a run that did not log has no losses).

Names: `model_config` is a ModelConfig.
"""
from __future__ import annotations

import math

from nano_core.hf import export_layout
from nano_core.metrics import ASSUMED_MFU, expected_tokens_per_s, format_count, format_flops


def startup_line(backend, model_config, params: int, data_tokens: int, entropy: float, val_bar: float, peak: float,
                 peak_source: str, grad_accum: int, batch_size: int) -> str:
    """The first line of a run. The unigram bars are figures of token shards: a run on instruction rows has none,
    and says nothing of them."""
    world = backend.world_size
    bars = (f"unigram entropy {entropy:.3f} nats/token on train, {val_bar:.3f} on val (the losses to beat) | "
            if math.isfinite(entropy) and math.isfinite(val_bar) else "")
    return (f"nano {backend.name} | device {backend.device} | dtype {backend.dtype} ({backend.dtype_why}) | "
            f"params {format_count(params)} | FLOPs/token {format_count(model_config.estimate_flops())} | "
            f"batch {batch_size}x{model_config.seq_len}x{grad_accum}" + (f"x{world} processes" if world > 1 else "")
            + f" | data {format_count(data_tokens)} train tokens | {bars}peak {format_flops(peak)}/s ({peak_source})")


def summary_line(step: int, last: dict, val_bar: float, run_dir) -> str:
    """The closing line of a training run, the same for both backends: the figures the run has, and no others."""
    figures = []
    if "train_loss" in last:
        figures.append(f"train loss {last['train_loss']:.4f}")
    if "val_loss" in last:
        figures.append(f"val loss {last['val_loss']:.4f}" + unigram_note(val_bar, " (unigram on val {:.4f})"))
    if "val_bpb" in last:
        figures.append(f"bpb {last['val_bpb']:.4f}")
    if "tok_per_s" in last:
        figures.append(f"{last['tok_per_s']:,.0f} tok/s, MFU {last.get('mfu', 0):.1%}")
    if "peak_memory_gb" in last:
        figures.append(f"{last.get('memory_label', 'peak memory')} {last['peak_memory_gb']:.2f} GB")
    if last.get("trainable_params", 0) < last.get("total_params", 0):
        figures.append(f"trained {format_count(last['trainable_params'])} of {format_count(last['total_params'])} "
                       f"params")
    return f"done at step {step}: " + ", ".join(figures) + f"; checkpoint in {run_dir}"


def unigram_note(val_bar: float, template: str) -> str:
    """`template` filled with the unigram bar on val, or nothing where the run has none (instruction rows)."""
    return template.format(val_bar) if math.isfinite(val_bar) else ""


def nothing_to_do(step: int, max_steps: int, checkpoint) -> str:
    """What resuming a run that already reached its last step says, instead of a summary of figures it has not
    measured."""
    where = "where its schedule ends" if step == max_steps else f"past --max-steps {max_steps}"
    return (f"nothing to do: the run already reached step {step} ({checkpoint}), {where}; give --max-steps M with "
            f"M > {step} to train longer")


def expected_time(steps: int, tokens_per_step: int, flops_per_token: float, peak: float) -> str:
    """A start-up estimate of the training time from the measured matmul peak at a typical utilisation (the
    evaluations, samples and checkpoints come on top)."""
    seconds = steps * tokens_per_step / expected_tokens_per_s(flops_per_token, peak)
    when = f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return (f"expect about {when} for {steps:,} steps (an estimate at {ASSUMED_MFU:.0%} of the measured matmul peak; "
            f"the progress bar's ETA is measured)")


def next_steps(model_config, run_dir, lora: bool = False) -> str:
    """What to do with the model once trained: the export command when a stock Hugging Face / mlx-lm layout holds
    it (and how to run it there), else why not and which presets export."""
    if lora:
        return (f"next: merge the adapters with `python -m nano_core.fuse --ckpt {run_dir} --out FUSED`, then export "
                f"FUSED with `python -m nano_core.export`")
    name = "exported/" + (str(run_dir).rstrip("/").rsplit("/", 1)[-1] or "model")
    try:
        layout = export_layout(model_config)
    except ValueError as e:
        return f"export: not possible for this model ({e}); train a nanochat-* preset for a model that leaves nano"
    return (f"next: `python -m nano_core.export --ckpt {run_dir} --out {name}` ({layout} layout), then "
            f"`python -m mlx_lm generate --model {name} --prompt \"...\"`, transformers' AutoModelForCausalLM, or "
            f"`lm_eval --model hf --model_args pretrained={name}` (docs/finetune-export.md)")

