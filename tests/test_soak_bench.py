"""benchmarks/soak.py: a short soak on both backends runs the real training command, samples the child's resident
memory against its logged step, and writes the table, JSON and plot; the window arithmetic and the verdict. (The
20,000-step figures are in docs/benchmarks.md; a test asserts no timing.)"""
import json
import subprocess
import sys

import pytest

from helpers import REPO, load_benchmark

soak = load_benchmark("soak")


def test_windows_take_the_median_of_the_steps_inside_them():
    pairs = [(100, 1.0), (200, 3.0), (300, 2.0), (400, 50.0)]
    assert soak.window(pairs, 100, 300) == 2.5  # steps 200 and 300
    assert soak.window(pairs, 300, 400) == 50.0


def test_a_window_no_memory_sample_fell_in_takes_the_nearest_sample_only_when_asked():
    pairs = [(5, 100.0), (40, 300.0), (90, 900.0)]  # a fast run: nothing sampled between steps 10 and 20
    assert soak.window(pairs, 10, 20, nearest=True) == 100.0  # step 5 is 5 steps away, step 40 20 steps
    assert soak.window(pairs, 10, 20) != soak.window(pairs, 10, 20)  # nan: step times are never filled in


def test_the_verdict_says_over_when_either_figure_grows_past_the_tolerance():
    base = {"backend": "torch", "steps": 100, "rss_early": 2**20, "rss_late": 2**20, "ms_early": 1.0, "ms_late": 1.0}
    ok = soak.table([{**base, "rss_growth": 0.01, "ms_growth": 0.02, "rss_growth_2nd_half": 0.003}], 0.05)
    leak = soak.table([{**base, "rss_growth": 0.20, "ms_growth": 0.0}], 0.05)
    assert "within 5%" in ok and "OVER 5%" in leak and "| +0.3% |" in ok


@pytest.mark.e2e
def test_a_short_soak_of_both_backends_samples_memory_against_steps(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--steps", "200", "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "soak.json").read_text())
    assert [r["backend"] for r in report["results"]] == ["torch", "mlx"]
    for r in report["results"]:
        assert r["rss_samples"] and all(step <= 200 for step, _ in r["rss_samples"])
        assert r["rss_early"] > 10 * 2**20 and r["ms_early"] > 0 and r["ms_late"] > 0
        assert r["rss_mid"] > 10 * 2**20 and abs(r["rss_growth_2nd_half"]) < 1
    assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG" and "| torch | 200 |" in proc.stdout
