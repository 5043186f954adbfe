"""benchmarks/distributed.py --quick, once for both backends (through torchrun and mlx.launch, as the full run does):
the report has its documented fields and values that make sense. No timing thresholds: this machine is shared, so
only signs and exact identities are checked (bytes = 4 x trainable parameters, the global batch, the ring formula)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark
from nano_core.config import ModelConfig

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "distributed.py"
bench = load_benchmark("distributed")


@pytest.fixture(scope="module")
def report(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed_bench")
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out),
                        "--source", str(shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl")],
                       capture_output=True, text=True, cwd=REPO, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("distributed.json", "distributed.md", "distributed.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "Why no speed-up here" in r.stdout  # the table says why 2 processes on these cores are not faster
    return json.loads((out / "distributed.json").read_text()), (out / "distributed.md").read_text()


def test_the_report_names_the_machine_the_model_and_the_load(report):
    rep, _ = report
    assert rep["quick"] is True and rep["model"] == "micro" and rep["dtype"] == "fp32"
    assert rep["model_params"] == ModelConfig.from_dict(bench.MICRO).num_params() == 136_960
    assert rep["machine"]["cpu_count"] >= 1 and rep["machine"]["cpu"]
    for key in ("loadavg_start", "loadavg_end"):
        assert len(rep[key]) == 3 and all(x >= 0 for x in rep[key])
    assert "same" in rep["why_no_speedup"] and "all-reduce" in rep["why_no_speedup"]


def test_training_rows_for_both_backends_at_one_and_two_processes(report):
    rep, md = report
    rows = rep["training"]
    assert {r["backend"] for r in rows} == {"torch", "mlx"}
    for backend in ("torch", "mlx"):
        mine = [r for r in rows if r["backend"] == backend]
        assert {r["processes"] for r in mine} == {1, 2}
        for r in mine:
            assert r["tok_per_s"] > 0 and math.isfinite(r["tok_per_s"])
            assert 0 < r["tok_per_s_min"] <= r["tok_per_s"] <= r["tok_per_s_max"]
            # the per-process batch is fixed: the global batch grows with the processes, no accumulation
            assert r["global_batch_tokens"] == r["batch_per_process"] * r["seq_len"] * r["processes"]
            assert r["world_size_in_checkpoint"] == r["processes"] and r["grad_accum"] == 1
            assert r["timed_steps"] == r["steps"] - 3  # the warm-up steps are left out of the median
            assert r["step_seconds"] == pytest.approx(r["global_batch_tokens"] / r["tok_per_s"])
            assert len(r["loadavg_before"]) == 3
        assert rep["speedup"][backend] > 0
    assert "| torch | 2 | 1 |" in md and "| mlx | 2 | 1 |" in md


def test_the_bytes_per_step_are_four_times_the_trainable_parameters(report):
    rep, _ = report
    params = rep["model_params"]
    assert rep["grad_bytes"] == 4 * params
    assert rep["gpt2_grad_bytes"] == 4 * rep["gpt2_params"] == 4 * 124_439_808
    engines = {a["backend"]: a for a in rep["allreduce"]}
    assert set(engines) == {"torch", "mlx"}
    for a in engines.values():
        assert a["world_size"] == 2
        assert a["bytes_per_step"] == 4 * params and a["bytes_per_step_is_4x_params"] is True
        assert a["models"]["bench"]["trainable_params"] == params  # counted on the real nano_torch / nano_mlx model
    # DDP's buckets hold every gradient once: their bytes add up to the same 4 x params
    ddp = engines["torch"]["models"]["bench"]
    assert sum(ddp["ddp_bucket_bytes"]) == 4 * params and ddp["ddp_bucket_cap_bytes"] > 0


def test_all_reduce_times_and_bandwidths(report):
    rep, _ = report
    for a in rep["allreduce"]:
        sizes = a["sizes"]
        assert [s["bytes"] for s in sizes] == [4, rep["grad_bytes"], rep["bandwidth_buffer_bytes"]]
        for s in sizes:
            assert s["bytes"] == 4 * s["elements"] and s["reps"] == 5
            assert 0 < s["seconds_min"] <= s["seconds_median"] <= s["seconds_max"]
            assert s["algbw_GBps"] == pytest.approx(s["bytes"] / s["seconds_median"] / 1e9)
            assert s["busbw_GBps"] == pytest.approx(s["algbw_GBps"])  # 2(N-1)/N = 1 at N = 2
        assert a["busbw_GBps"] == sizes[-1]["busbw_GBps"] > 0
        assert a["grad_allreduce_seconds"] == sizes[1]["seconds_median"] and a["grad_allreduce_fraction_of_step"] > 0


def test_the_on_paper_table_is_the_ring_formula_over_the_nominal_links(report):
    rep, md = report
    rows = {r["link"]: r for r in rep["on_paper"]}
    assert len(rows) == len(bench.LINKS)
    tb5 = rows["Thunderbolt 5 (80 Gb/s)"]
    assert tb5["processes"] == 2 and tb5["GBps_per_direction"] == pytest.approx(10.0)
    assert tb5["seconds"] == pytest.approx(rep["gpt2_grad_bytes"] / 10e9)  # 2(2-1)/2 x bytes / 10 GB/s
    nvlink = next(r for name, r in rows.items() if name.startswith("NVLink"))
    assert nvlink["processes"] == 8 and nvlink["seconds"] == pytest.approx(2 * 7 / 8 * rep["gpt2_grad_bytes"] / 450e9)
    assert "Thunderbolt 4" in md and "10 GbE" in md
