"""benchmarks/step_speed.py: one short run per backend writes its JSON with the resolved attention kernel and
self-consistent figures; the MKL switch really changes the torch GEMM path."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "step_speed.py"
SMALL = '{"n_layer": 1, "n_head": 2, "n_embd": 32, "seq_len": 16, "vocab_size": 64}'


def run(tmp_path, *flags):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--config", SMALL, "--steps", "2", "--warmup", "1",
                           "--batch-size", "2", "--out", str(out), *flags], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.parametrize("backend,dtype,attn", [("torch", "fp32", "sdpa"), ("torch", "bf16", "eager"),
                                                ("mlx", "fp32", "sdpa")])
def test_step_speed_writes_a_consistent_record_with_the_cli_attention_choice(tmp_path, backend, dtype, attn):
    r, stdout = run(tmp_path, "--backend", backend, "--dtype", dtype)
    assert r["attn_impl"] == attn  # --attn-impl auto resolved as nano_{backend}.train resolves it
    assert len(r["step_ms"]) == 2 and len(r["losses"]) == 2
    assert r["tokens_per_step"] == 2 * 16
    assert r["tok_s"] == pytest.approx(r["tokens_per_step"] / (r["ms_median"] / 1000))
    assert r["gflop_s"] == pytest.approx(r["tok_s"] * r["flops_per_token"] / 1e9)
    assert all(loss == loss and 0 < loss < 10 for loss in r["losses"])  # finite, about ln(64) = 4.2 at init
    assert f"{r['tok_s']:.0f}" in stdout
    png = tmp_path / "r.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the per-step plot beside the JSON


def test_aten_gemm_flag_gives_the_same_losses_as_the_onednn_path(tmp_path):
    a, _ = run(tmp_path, "--backend", "torch")
    b, _ = run(tmp_path, "--backend", "torch", "--aten-gemm")
    assert (a["aten_gemm"], b["aten_gemm"]) == (False, True)
    assert b["losses"] == pytest.approx(a["losses"], rel=1e-5)


@pytest.mark.parametrize("backend,dtype", [("torch", "bf16"), ("mlx", "fp32")])
def test_two_pass_ce_flag_measures_the_same_training(tmp_path, backend, dtype):
    a, _ = run(tmp_path, "--backend", backend, "--dtype", dtype)
    b, _ = run(tmp_path, "--backend", backend, "--dtype", dtype, "--two-pass-ce")
    assert (a["two_pass_ce"], b["two_pass_ce"]) == (False, True)
    assert b["losses"] == pytest.approx(a["losses"], rel=1e-6)  # the same gradients to fp32 rounding


@pytest.mark.parametrize("flag", ["--aten-gemm", "--threads=2"])
def test_torch_only_flags_with_mlx_are_a_one_line_error(tmp_path, flag):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--backend", "mlx", flag, "--config", SMALL,
                           "--out", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "error: --aten-gemm and --threads are torch options; drop them with --backend mlx"
    assert not (tmp_path / "r.json").exists()
