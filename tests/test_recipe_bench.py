"""benchmarks/recipe.py --quick: every candidate trains with nothing but a time budget on the shared shards, is scored
on the same held-out tokens, and the table, JSON and plot come out; the recipes it chose are runnable presets."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from nano_core.cli import TrainConfig
from nano_core.config import PRESETS, ModelConfig
from nano_core.recipes import DEFAULT_RECIPE, RECIPES

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

REPO = Path(__file__).resolve().parents[1]


def test_quick_recipe_benchmark_ranks_candidates_by_held_out_bpb(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "benchmarks/recipe.py", "--quick", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((out / "recipe.json").read_text())
    results = {x["name"]: x for x in report["results"]}
    assert set(results) == {"micro-adamw", "micro-muon"} and report["baseline"] == "micro-adamw"
    for x in results.values():
        assert "--max-time" in x["command"] and "--max-steps" not in x["command"]  # a budget, nothing else
        assert math.isfinite(x["val_bpb"]) and 0 < x["val_bpb"] < 10
        assert x["steps"] >= 1 and x["tokens"] == x["steps"] * 8 * 64
        # scored once, at the end, on the same held-out tokens: eval_tokens / (batch x context) batches
        steps = x["command"][x["command"].index("--eval-steps") + 1]
        assert int(steps) * 8 * 64 >= report["eval_tokens"]
    table = (out / "table.md").read_text()
    assert table.index(min(results, key=lambda n: results[n]["val_bpb"])) < table.index(
        max(results, key=lambda n: results[n]["val_bpb"]))  # sorted, best first
    assert (out / "recipe.png").stat().st_size > 10_000
    again = subprocess.run([sys.executable, "benchmarks/recipe.py", "--quick", "--out", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("reusing") == 2  # finished candidates are not rerun


def test_steps_trains_every_candidate_exactly_that_many_steps_without_a_time_budget(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "benchmarks/recipe.py", "--quick", "--steps", "3", "--only", "cpu10",
                        "micro-muon", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((out / "recipe.json").read_text())
    assert report["fixed_steps"] == 3 and report["budget_s"] is None and "3 steps each" in r.stdout
    for x in report["results"]:
        assert x["steps"] == 3 and x["fixed_steps"] == 3
        assert x["command"][x["command"].index("--max-steps") + 1] == "3" and "--max-time" not in x["command"]
    cpu10 = next(x for x in report["results"] if x["name"] == "cpu10")
    recipe = RECIPES["cpu-10min"].train  # the candidate is the recipe's settings (here on the micro model)
    flags = cpu10["flags"]
    for flag, key in (("--lr", "lr"), ("--embed-lr", "embed_lr"), ("--head-lr", "head_lr"),
                      ("--batch-size", "batch_size")):
        assert float(flags[flags.index(flag) + 1]) == recipe[key]


def test_steps_below_one_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/recipe.py", "--steps", "0", "--out", str(tmp_path / "b")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.splitlines()[-1].endswith("--steps must be at least 1, got 0")
    assert not (tmp_path / "b").exists()


def test_every_recipe_is_a_valid_model_and_settings():
    for kind, name in DEFAULT_RECIPE.items():
        assert name in RECIPES, kind
    fields = set(TrainConfig.__dataclass_fields__)
    for recipe in RECIPES.values():
        assert recipe.preset in PRESETS
        ModelConfig.from_preset(recipe.preset).validate()
        assert set(recipe.train) <= fields - {"max_time", "max_steps", "preset", "config"}, recipe.name
        assert recipe.budget_s > 0 and recipe.name in recipe.describe()
