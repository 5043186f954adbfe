"""benchmarks/ablate.py: a named suite runs every variant from one command at an equal budget on either backend,
writes a table, a plot and a JSON holding every variant, and a second run reuses the finished runs; the suites'
models are valid and compare what they say (equal parameters for the RNN, the KV cache of GQA/MQA); bad input is
one line."""
import json
import math
import subprocess
import sys

import pytest

from helpers import REPO, load_benchmark
from nano_core.config import ModelConfig

ablate = load_benchmark("ablate")  # puts benchmarks/ on sys.path, where ablate finds its suites
suites = sys.modules["ablate_suites"]


def run_ablate(*args):
    return subprocess.run([sys.executable, "benchmarks/ablate.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


def check_outputs(out, suite, backend):
    report = json.loads((out / suite / "ablate.json").read_text())
    names = [v.name for v in suites.SUITES[suite](True, 512).variants]
    assert [r["name"] for r in report["variants"]] == names and report["backend"] == backend
    table = (out / suite / "table.md").read_text()
    assert all(f"| {n} |" in table for n in names)
    assert (out / suite / "ablate.png").stat().st_size > 10_000
    for r in report["variants"]:
        assert math.isfinite(r["val_bpb"]) and r["tok_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["params"] > 0
        assert f"nano_{backend}.train" in " ".join(r["runs"][0]["cmd"])
    return {r["name"]: r for r in report["variants"]}


def test_quick_heads_suite_on_torch_holds_every_variant_and_a_rerun_reuses_them(tmp_path):
    r = run_ablate("heads", "--quick", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = check_outputs(tmp_path, "heads", "torch")
    assert rows["mha"]["kv_cache_kib"] == 2 * rows["gqa"]["kv_cache_kib"] == 4 * rows["mqa"]["kv_cache_kib"]
    assert all(x["tokens"] == 6 * 4 * 32 for x in rows.values())  # equal tokens: steps x batch x context
    again = run_ablate("heads", "--quick", "--out", str(tmp_path))
    assert again.returncode == 0 and again.stdout.count("reusing") == 3 and "done in" not in again.stdout


def test_quick_schedules_suite_on_torch_runs_each_schedule_and_optimizer(tmp_path):
    r = run_ablate("schedules", "--quick", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = check_outputs(tmp_path, "schedules", "torch")
    for name, flag in (("cosine", "cosine"), ("wsd", "wsd"), ("linear", "linear"), ("constant", "constant"),
                       ("muon", "muon")):
        assert flag in rows[name]["runs"][0]["cmd"]


def test_quick_rnn_suite_on_mlx_compares_at_equal_parameters_and_equal_time(tmp_path):
    r = run_ablate("rnn", "--quick", "--backend", "mlx", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = check_outputs(tmp_path, "rnn", "mlx")
    assert abs(rows["rnn-tanh"]["params"] / rows["transformer"]["params"] - 1) < 0.05
    timed = [x for x in rows.values() if x["group"] == "equal time"]
    assert len(timed) == 2 and all("--max-time" in x["runs"][0]["cmd"] for x in timed)
    assert all("--max-steps" in x["runs"][0]["cmd"] for x in rows.values() if x["group"] == "equal tokens")


@pytest.mark.parametrize("quick", [True, False])
def test_every_suite_variant_is_a_valid_model(quick):
    for name, build in suites.SUITES.items():
        suite = build(quick, 1024)
        assert len({v.name for v in suite.variants}) == len(suite.variants), name
        for v in suite.variants:
            ModelConfig(**v.model).validate()


def test_the_full_suites_compare_what_they_name():
    pos = {v.name: ModelConfig(**v.model) for v in suites.positions(False, 1024).variants}
    assert {c.pos for c in pos.values()} == {"rope", "learned", "sinusoidal", "none"}
    assert sorted(c.rope_dim / c.head_dim for c in pos.values() if c.pos == "rope") == [0.25, 0.5, 1.0]
    assert pos["sinusoidal-x50"].emb_scale == 50.0 and pos["sinusoidal-unscaled"].emb_scale == 1.0
    assert all(c.emb_scale == 1.0 for c in pos.values() if c.pos != "sinusoidal")
    heads = [ModelConfig(**v.model).kv_heads for v in suites.heads(False, 1024).variants]
    assert heads == [8, 2, 1]
    win = suites.window(False, 1024)
    assert sorted({v.seq_len for v in win.variants}) == [256, 512, 1024, 2048, 4096]
    assert {v.model["n_embd"] for v in win.variants} == {64}  # a fixed width as the context grows


def test_the_sweep_table_and_the_loss_table_hold_every_row():
    row = dict(name="a", group="g", params=10, tokens=100, val_bpb=2.0, val_bpb_spread=0.1, tok_per_s=50.0,
               peak_rss_mb=300.0, wall_s=3.0, hellaswag_acc_norm=None, hellaswag_acc_norm_spread=None, seq_len=64,
               step_ms=1.0, runs=[])
    text = ablate.table([row, {**row, "name": "b", "val_bpb_spread": 0.0}], suites.Suite("x", []))
    assert "| a | g | 10 | 100 | 2.0000 ± 0.1000 |" in text and "| b | g | 10 | 100 | 2.0000 |" in text
    sweep = ablate.table([row, {**row, "seq_len": 128}], suites.Suite("x", [], sweep=True))
    assert "| g | 64 |" in sweep and "| g | 128 |" in sweep


@pytest.mark.parametrize("args, words", [
    ([], "name a suite"),
    (["heads", "--seeds", "a,b"], "--seeds 'a,b'"),
    (["heads", "--max-steps", "0"], "--max-steps must be a positive integer"),
    (["nope"], "invalid choice: 'nope'"),
    (["--config", "missing.json"], "--config missing.json"),
])
def test_bad_input_is_one_line_naming_the_flag(args, words, tmp_path):
    r = run_ablate(*args, "--out", str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert words in r.stderr.strip().splitlines()[-1]
