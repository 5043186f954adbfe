"""benchmarks/eval_bench.py, its pure parts: rows, table, agreement, JSON and PNG from fake eval reports (no
training, no model); the preload rule of its subprocesses; one-line errors."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "eval_bench.py"
bench = load_benchmark("eval_bench")


def fake_report(backend, logliks, items_per_s=50.0, tasks=("bpb", "wikitext2", "hellaswag")):
    """The shape python -m nano_*.eval --out writes, with made-up figures."""
    out = {"backend": backend, "trained_with": "torch", "step": 300, "limit": None, "batch_size": 16, "tasks": {}}
    if "bpb" in tasks:
        out["tasks"]["bpb"] = {"bpb": 2.05, "tokens": 1000}
    if "wikitext2" in tasks:
        out["tasks"]["wikitext2"] = {"word_ppl": 900.0, "token_ppl": 300.0, "bpb": 2.4, "tokens": 5000}
    out["tasks"]["hellaswag"] = {"items": len(logliks), "acc": 0.25, "acc_stderr": 0.004, "acc_norm": 0.26,
                                 "acc_norm_stderr": 0.0044, "items_per_s": items_per_s, "truncated_items": 0,
                                 "logliks": logliks}
    return out


def test_row_and_table_carry_the_report_figures():
    row = bench.table_row("tiny, trained by torch", "tiny", fake_report("mlx", [[-1.0, -2.0, -3.0, -4.0]]))
    assert row["eval_backend"] == "mlx" and row["word_ppl"] == 900.0 and row["val_bpb"] == 2.05
    assert row["hellaswag_minutes_full"] == pytest.approx(10_042 / 50.0 / 60)
    small = bench.table_row("small", "small", fake_report("torch", [[0.0] * 4], tasks=("hellaswag",)))
    assert math.isnan(small["word_ppl"]) and math.isnan(small["val_bpb"])
    text = bench.format_table([row, small])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run |")
    assert "| 900.00 | 300.00 | 2.4000 | 2.0500 | 0.2500 ± 0.0040 | 0.2600 ± 0.0044 | 50.0 | 3.3 |" in lines[2]
    assert "| – | – | – | – |" in lines[3]  # tasks not run on small


def test_agreement_counts_same_picks_and_the_largest_difference():
    a = fake_report("torch", [[-1.0, -2.0, -3.0, -4.0], [-5.0, -1.0, -2.0, -3.0]])
    b = fake_report("mlx", [[-1.0, -2.0, -3.0, -4.0001], [-1.0, -1.5, -2.0, -3.0]])
    ag = bench.agreement(a, b)
    assert ag["same_pick"] == 0.5 and ag["items"] == 2
    assert ag["max_abs_loglik_diff"] == pytest.approx(4.0)
    assert ag["wikitext2_word_ppl_rel_diff"] == 0.0 and ag["acc_norm_diff"] == 0.0


def test_json_and_png_are_written(tmp_path):
    rows = [bench.table_row("tiny", "tiny", fake_report(b, [[-1.0, -2.0, -3.0, -4.0]])) for b in bench.BACKENDS]
    record = [{"step": "eval", "seconds": 1.0, "loadavg_before": (1, 1, 1), "loadavg_after": (1, 1, 1), "rc": 0}]
    result = bench.assemble(rows, {}, record, {"limit": None})
    path = tmp_path / "r.json"
    bench.save_json(path, result)
    assert json.loads(path.read_text())["rows"][1]["eval_backend"] == "mlx"
    assert result["machine"]["cpu"]
    bench.plot(rows, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_train_and_eval_commands_are_the_reference_settings(tmp_path):
    cmd = bench.train_cmd("mlx", "tiny", 300, tmp_path)
    assert cmd[1:3] == ["-m", "nano_mlx.train"] and "--dtype" in cmd and cmd[cmd.index("--dtype") + 1] == "fp32"
    assert cmd[cmd.index("--max-steps") + 1] == "300" and cmd[cmd.index("--batch-size") + 1] == "8"
    ev = bench.eval_cmd("torch", tmp_path, "hellaswag", tmp_path / "r.json", 16, None)
    assert "--limit" not in ev and ev[ev.index("--device") + 1] == "cpu"


def test_bad_runs_spec_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--runs", "gpu=x", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "error: --runs takes NAME=RUN_DIR with NAME torch, mlx or small; got 'gpu=x'"


def test_a_report_with_more_tasks_is_reused_and_one_with_fewer_is_not(tmp_path, monkeypatch):
    """Dropping bpb from --tiny-tasks must not redo a finished report that holds it; asking for more must."""
    args = bench.build_parser().parse_args(["--out", str(tmp_path)])
    report = tmp_path / "reports" / "tiny-torch-on-torch.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps(fake_report("torch", [[-1.0] * 4], tasks=("wikitext2", "hellaswag"))))
    ran = []
    monkeypatch.setattr(bench, "run_step", lambda label, *a: ran.append(label))
    got = bench.ensure_report("tiny-torch", tmp_path, "torch", "hellaswag", args, [])
    assert ran == [] and got["tasks"]["wikitext2"]["word_ppl"] == 900.0
    bench.ensure_report("tiny-torch", tmp_path, "torch", "bpb,wikitext2,hellaswag", args, [])
    assert ran == ["eval tiny-torch on torch"]


@pytest.mark.parametrize("tasks, said", [
    ("bpb,wikitext2", "error: --tiny-tasks must include hellaswag (every row of the table has it), got "
                      "'bpb,wikitext2'"),
    ("hellaswag,mmlu", "error: unknown eval task mmlu; choose from bpb, wikitext2, hellaswag (comma-separated)")])
def test_bad_tiny_tasks_are_one_line_errors_before_anything_runs(tmp_path, tasks, said):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny-tasks", tasks, "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip() == said
    assert not any(tmp_path.iterdir())  # nothing trained or evaluated
