"""Recipes: a model and the settings that train it best for a budget of wall time, on a kind of machine.

A preset (nano_core/config.py) is a model shape; a recipe is a preset plus the optimizer, learning rates, batch,
schedule and time budget that go with it. They are chosen by measurement (benchmarks/recipe.py; the results are in
docs/training.md, what helped and what did not in dev/LOG.md), not by assertion.

How one applies (nano_core/settings.py resolve_defaults): `--recipe NAME` picks one; with no model given at all (no
--preset, --config or --init-from) the device's recipe is the default, so `python -m nano_torch.train` with no
arguments -- or with nothing but `--max-time 600` and the data -- trains the recipe. A recipe fills only the
settings the user left at nano's defaults: anything typed wins. `--recipe none` gives nano's plain defaults.
The time budget becomes --max-time unless --max-steps or --max-time is given.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    name: str
    preset: str                 # the model (nano_core.config.PRESETS)
    budget_s: float             # the wall time it is tuned for: its default --max-time
    train: dict = field(default_factory=dict)  # TrainConfig fields it sets
    why: str = ""               # one line for the start-up log

    def describe(self) -> str:
        return f"recipe {self.name}: {self.why} ({self.budget_s / 60:.0f} min budget; --recipe none for nano's " \
               f"plain defaults)"


RECIPES: dict[str, Recipe] = {
    # Measured on 2 cores of an AMD EPYC (Zen 4) only, PyTorch bf16 autocast (benchmarks/recipe.py; docs/training.md).
    # The qwen3 block (SwiGLU) rather than ReLU^2: it trains as well in the budget and exports (python -m
    # nano_core.export) to transformers and mlx-lm; dev/LOG.md has the comparison. The embeddings at 30x and the
    # head at 3x AdamW's lr (nano_core/lr_groups.py says why), chosen the same way.
    "cpu-10min": Recipe(
        name="cpu-10min", preset="qwen3-3x192", budget_s=600.0,
        train=dict(optimizer="muon", lr=3e-3, muon_lr=0.02, embed_lr=0.09, head_lr=0.009, batch_size=32,
                   warmup_steps=50, schedule="cosine", min_lr_frac=0.1),
        why="qwen3-style 3 x 192 (RoPE, RMSNorm, QK-norm, SwiGLU, untied head), Muon, embeddings at 30x the lr, "
            "batch 32 x 256"),
    # On paper, for an hour on an M-series Mac (sized from Apple's published GPU throughput: docs/mac.md). The
    # embedding and head lrs are cpu-10min's scaled by (d / 192)^-0.5 for the wider model, nanochat's rule.
    "mac-1h": Recipe(
        name="mac-1h", preset="qwen3-6x384", budget_s=3600.0,
        train=dict(optimizer="muon", lr=3e-3, muon_lr=0.02, embed_lr=0.064, head_lr=0.0064, batch_size=16,
                   warmup_steps=100, schedule="cosine", min_lr_frac=0.1),
        why="qwen3-style 6 x 384 (RoPE, RMSNorm, QK-norm, SwiGLU, untied head), Muon, embeddings at 21x the lr, "
            "batch 16 x 512"),
}
DEFAULT_RECIPE = {"cpu": "cpu-10min", "accelerator": "mac-1h"}
RECIPE_CHOICES = (*RECIPES, "none")
