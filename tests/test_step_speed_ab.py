"""benchmarks/step_speed_ab.py: two revisions' step_speed.py alternated in one run -- the table's ratio of medians,
and a real run (HEAD against the working tree, one round, one step) that checks out a worktree, runs both, writes
the report and removes the worktree again. No timing is asserted."""
import json
import subprocess
import sys

import pytest

from nano_core.config import ModelConfig

from helpers import REPO, load_benchmark

ab = load_benchmark("step_speed_ab")


def test_the_table_gives_every_round_and_the_ratio_of_the_medians():
    rows = {"torch": {"before": [100.0, 300.0, 200.0], "after": [220.0, 180.0, 260.0]}}
    text = ab.table(rows, ("old", "new"))
    assert "| torch | 2 | 300 | 180 |" in text
    assert "| torch | median | 200 | 220 (x1.100) |" in text


@pytest.mark.e2e
def test_head_against_the_working_tree_runs_both_on_the_model_asked_and_leaves_no_worktree(tmp_path):
    worktrees = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "step_speed_ab.py"), "--before", "HEAD",
                           "--backends", "torch", "--rounds", "1", "--steps", "1", "--warmup", "0",
                           "--preset", "tiny", "--batch-size", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "ab.json").read_text())
    assert [len(report["rows"]["torch"][k]) for k in ("before", "after")] == [1, 1]
    assert all(v > 0 for k in ("before", "after") for v in report["rows"]["torch"][k])
    assert (tmp_path / "ab.png").read_bytes()[:4] == b"\x89PNG" and "| torch | median |" in proc.stdout
    runs = [json.loads(f.read_text()) for f in tmp_path.glob("*.json") if f.name != "ab.json"]
    tiny = ModelConfig.from_preset("tiny").to_dict()
    assert len(runs) == 2 and all(r["config"] == tiny and r["batch_size"] == 1 for r in runs)  # both revisions
    after = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert after == worktrees


def test_a_revision_git_does_not_know_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "step_speed_ab.py"), "--before", "no-such-rev",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot check out 'no-such-rev'")


@pytest.mark.parametrize("args,message", [(["--preset", "nope"], "unknown preset 'nope'"),
                                          (["--batch-size", "0"], "--batch-size must be at least 1")])
def test_a_bad_model_is_refused_before_any_worktree(tmp_path, args, message):
    worktrees = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "step_speed_ab.py"), "--before", "HEAD", *args,
                           "--out", str(tmp_path / "ab")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and message in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "ab").exists()
    assert subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True,
                          text=True).stdout == worktrees
