"""Peak learning rates by parameter group, written once for both backends' AdamW.

AdamW's parameters may take their own peak learning rates: the input tables (token and position embeddings) at
--embed-lr and an untied head at --head-lr; every other parameter AdamW updates (norm weights, biases) stays at
--lr. Each group follows the one schedule: its lr at a step is the schedule's lr times (its peak / --lr), as
Muon's --muon-lr does, so warm-up, decay and the time budget move every group together.

Why: an embedding row is updated only when its token occurs, and Adam's normalised step moves a row by about lr
per update whatever its gradient's size, so at the small --lr a shared setting must choose (for the matrices
before Muon took them), the embeddings barely move in a short run. nanochat trains its embedding at 0.2 and its
head at 0.004 (x (d/768)^-0.5), modded-nanogpt's embeddings at 0.3-0.6, both far above their head and hidden-matrix
learning rates. A tied head is the token embedding: it takes --embed-lr, and --head-lr is refused.
"""
from __future__ import annotations

EMBED_NAMES = ("wte.weight", "wpe.weight")
HEAD_NAMES = ("lm_head.weight",)


def lr_ratios(names, lr: float, embed_lr: float | None = None, head_lr: float | None = None) -> dict[str, float]:
    """Canonical name -> its peak lr / the peak lr, for the named parameters whose group has its own peak (absent:
    ratio 1). `names`: the parameters AdamW updates."""
    out = {}
    for name in names:
        peak = embed_lr if name in EMBED_NAMES else head_lr if name in HEAD_NAMES else None
        if peak is not None:
            out[name] = peak / lr
    return out


def check_lr_groups(names, embed_lr: float | None, head_lr: float | None, lora) -> None:
    """The one-line refusals both backends' build_optimizer make (names: the trainable parameters)."""
    if lora is not None and (embed_lr is not None or head_lr is not None):
        raise ValueError("--embed-lr and --head-lr set a full model's embedding and head learning rates; a LoRA run "
                         "trains only its adapters (at --lr): drop them")
    if head_lr is not None and not any(name in HEAD_NAMES for name in names):
        raise ValueError("--head-lr needs an untied head, and this model's head is its token embedding "
                         "(tie_embeddings): set --embed-lr instead")
