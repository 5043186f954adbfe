"""Peak learning rates by parameter group, written once for both backends' AdamW.

AdamW's parameters may take their own peak learning rates: the input tables (token and position embeddings) at
--embed-lr and an untied head at --head-lr; every other parameter AdamW updates (norm weights, biases) stays at
--lr. Each group follows the one schedule: its lr at a step is the schedule's lr times (its peak / --lr), as
Muon's --muon-lr does, so warm-up, decay and the time budget move every group together.

Why: Adam moves a parameter by about lr per step whatever its gradient's scale, and an embedding row gets a
gradient only in the steps where its token occurs, so at the lr the norms and biases want, a short run leaves the
tables close to their random start. The speedruns train them far faster than everything else: nanochat its
embedding at 0.2 and its head at 0.004 (x (d/768)^-0.5) beside Muon's 0.02, modded-nanogpt its embeddings at
0.3-0.6. A tied head is the token embedding: it takes --embed-lr, and --head-lr is refused. The cpu-10min recipe's
choice is measured in docs/training.md.
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
    """The one-line refusals both backends' build_optimizer make (names: the trainable parameters; None before the
    model is known, when only the LoRA refusal can be made)."""
    if lora is not None and (embed_lr is not None or head_lr is not None):
        raise ValueError("--embed-lr and --head-lr set a full model's embedding and head learning rates; a LoRA run "
                         "trains only its adapters (at --lr): drop them")
    if head_lr is not None and names is not None and not any(name in HEAD_NAMES for name in names):
        raise ValueError("--head-lr needs an untied head, and this model's head is its token embedding "
                         "(tie_embeddings): set --embed-lr instead")
