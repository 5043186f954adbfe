"""benchmarks/compare.py: the quick cross-backend run (CPU, both backends), its files and fields, loss parity, and
the one-line error for a bad backend name. (The FLOP count it reports is checked in tests/test_flops.py.)"""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nano_core.config import ModelConfig

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "compare.py"


def compare_docstring() -> str:
    return ast.get_docstring(ast.parse(SCRIPT.read_text()))


def documented_fields(doc: str, section: str | None = None) -> list[str]:
    """Keys of the docstring's report.json field list: the top level (2-space indent), or the '.name' keys listed
    under one top-level section (several may share a line: '.os .python .cpu')."""
    block = doc.split("report.json fields", 1)[1]
    if section is None:
        return re.findall(r"^  ([a-z_]+)\s", block, flags=re.M)
    part = re.split(rf"^  {section}\s", block, flags=re.M)[1]
    part = re.split(r"^  [a-z_]+\s", part, flags=re.M)[0]
    keys = []
    for names in re.findall(r"^    (\.[a-z_0-9]+(?: \.[a-z_0-9]+)*)", part, flags=re.M):
        keys += [k.lstrip(".") for k in names.split()]
    return keys


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("compare")
    env = {**os.environ, "NANO_CACHE": str(tmp_path_factory.mktemp("cache"))}  # prepares its own small shard set
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out / "tmp")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "tmp", json.loads((out / "tmp" / "report.json").read_text()), proc.stdout


def test_quick_run_writes_every_file_and_shows_both_cpu_backends(quick_run):
    out, report, stdout = quick_run
    for name in ("report.json", "report.md", "loss.png", "throughput.png", "attention.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list(report["backends"]) == ["mlx-cpu", "torch-cpu"]
    assert "mlx-cpu" in stdout and "torch-cpu" in stdout and "tok/s" in stdout  # the table on stdout
    assert "torch-cpu" in (out / "report.md").read_text()


def test_quick_report_has_every_documented_json_field(quick_run):
    _, report, _ = quick_run
    doc = compare_docstring()
    top, per_backend, env = documented_fields(doc), documented_fields(doc, "backends"), documented_fields(doc, "env")
    assert len(top) >= 10 and len(per_backend) >= 13 and len(env) >= 12  # the parser found the lists
    assert sorted(top) == sorted(report), "docstring field list and report.json keys differ"
    assert sorted(env) == sorted(report["env"]), "documented env fields and report.json env keys differ"
    for name, b in report["backends"].items():
        assert sorted(per_backend) == sorted(b), f"{name}: documented backend fields and report.json keys differ"
        assert len(b["loss"]) == report["run"]["total_steps"]
        assert b["ms_per_step"]["n"] == report["run"]["steps"] * report["run"]["repeats"]
        assert b["tok_per_s"] > 0 and b["peak_memory"]["bytes"] > 0 and b["peak_memory"]["method"]
    assert report["env"]["blas"]["mlx"] and report["env"]["blas"]["torch"] and report["env"]["versions"]["mlx"]
    kinds = {(r["kind"], r["window"] is None) for r in report["attention"]["rows"]}
    assert kinds == {(k, full) for k in ("MHA", "GQA", "MQA") for full in (True, False)}


def test_quick_run_loss_parity_within_1e5_relative_in_fp32(quick_run):
    _, report, _ = quick_run
    pair = report["parity"]["pairs"]["torch-cpu"]
    assert report["parity"]["dtype"] == "fp32" and report["env"]["mlx_enable_tf32"] == "0"
    assert len(pair["rel_diff"]) == report["run"]["total_steps"]
    assert pair["max_rel_diff"] <= 1e-5, pair["rel_diff"]
    assert pair["val_loss_rel_diff"] <= 1e-5
    # it trained: the loss moved (parity of two frozen models would prove nothing)
    loss = report["backends"]["mlx-cpu"]["loss"]
    assert loss[-1] < loss[0] - 0.05


def test_quick_run_reports_mfu_from_estimate_flops(quick_run):
    _, report, _ = quick_run
    flops = report["flops"]
    assert flops["per_token_estimate"] == ModelConfig.from_dict(report["config"]).estimate_flops()
    assert 3 * sum(flops["breakdown"].values()) == flops["per_token_estimate"]
    tokens = report["run"]["batch_size"] * report["run"]["seq_len"]
    for b in report["backends"].values():
        tps = tokens / (b["ms_per_step"]["median"] / 1e3)
        assert b["mfu"]["measured"] == pytest.approx(flops["per_token_estimate"] * tps / b["peak_flops"]["measured"])


def test_quick_run_times_the_backends_own_train_step(quick_run):
    _, report, _ = quick_run
    assert report["backends"]["mlx-cpu"]["step"].startswith("nano_mlx.backend.Backend.make_train_step (compiled")
    assert report["backends"]["torch-cpu"]["step"].startswith("nano_torch.backend.Backend.make_train_step (eager")


def test_unknown_backend_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--backends", "mlx-cpu,tpu", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown backend 'tpu'"), proc.stderr
    assert "mlx-cpu" in lines[0]  # says what would work
    assert not (tmp_path / "x").exists()  # failed before doing anything
