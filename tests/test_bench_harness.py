"""benchmarks/harness.py, the plumbing every benchmark script shares: the environment of a backend's child, running
a child (its record, a failure, a timeout that stops the child's whole tree), reading what children report, and
reusing a finished step."""
import json
import os
import sys
import time
from pathlib import Path

import pytest

from helpers import load_benchmark

harness = load_benchmark("harness")


def test_openblas_is_preloaded_for_mlx_only(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", harness.OPENBLAS)
    assert "LD_PRELOAD" not in harness.child_env("torch")
    if Path(harness.OPENBLAS).is_file():
        assert harness.child_env("mlx")["LD_PRELOAD"] == harness.OPENBLAS
    env = harness.child_env("torch", threads=1)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"


def test_a_child_runs_from_the_repository_root_and_leaves_a_record(tmp_path):
    log = tmp_path / "logs" / "child.log"
    code = "import os, json; print('working'); print(json.dumps({'cwd': os.getcwd(), 'x': [1, 2]}))"
    record = harness.run_child("child", [sys.executable, "-c", code], log, None)
    assert record["rc"] == 0 and record["seconds"] > 0 and record["peak_rss_bytes"] > 1_000_000
    assert len(record["loadavg_before"]) == len(record["loadavg_after"]) == 3
    assert record["cmd"] == ["-c", code]
    assert harness.last_json(log.read_text()) == {"cwd": str(harness.ROOT), "x": [1, 2]}


def test_a_failed_child_is_one_error_naming_its_log(tmp_path):
    log = tmp_path / "fail.log"
    with pytest.raises(harness.StepError, match=r"broken failed \(exit 3\): bad input -- see .*fail\.log"):
        harness.run_child("broken", [sys.executable, "-c", "import sys; print('bad input'); sys.exit(3)"], log,
                          None)
    # a launcher that exits 0 while a rank failed: its log says so
    with pytest.raises(harness.StepError, match="exited with code 1"):
        harness.run_child("launch", [sys.executable, "-c", "print('Node with rank 1 exited with code 1')"], log,
                          None, fail_markers=("exited with code",))


def test_a_timeout_stops_the_child_and_what_it_started(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.perf_counter()
    with pytest.raises(harness.StepError, match="no result within 1 s"):
        harness.run_child("slow", [sys.executable, "-c", code], tmp_path / "slow.log", None, timeout=1.0)
    assert time.perf_counter() - t0 < 30
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # killed with the child's session; the init process reaps it
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the child's own child outlived the timeout")


def test_reading_what_children_report(tmp_path):
    assert harness.last_json("noise\n{\"a\": 1}\nprogress 100%\r{\"a\": 2}\n\n") == {"a": 2}
    assert harness.last_json("no json here\n{torn") is None
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "tr')  # the last line torn by a kill mid-write
    assert harness.read_jsonl(metrics) == [{"step": 1}, {"step": 2}]
    assert harness.read_jsonl(tmp_path / "absent.jsonl") == []


def test_a_finished_step_is_reused_only_for_the_same_command(tmp_path):
    saved = harness.save_json(tmp_path / "step.json", {"cmd": ["-m", "x", "--steps", "3"], "seconds": 1.0})
    cmd = [sys.executable, "-m", "x", "--steps", "3"]
    assert harness.finished(saved, cmd, fresh=False)["seconds"] == 1.0
    assert harness.finished(saved, cmd, fresh=True) is None
    assert harness.finished(saved, [*cmd[:-1], "4"], fresh=False) is None
    assert harness.finished(tmp_path / "absent.json", cmd, fresh=False) is None
    assert json.loads(saved.read_text())["cmd"][0] == "-m"
    assert harness.machine()["cpu_count"] >= 1
