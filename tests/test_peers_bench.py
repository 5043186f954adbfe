"""benchmarks/peers.py: the table and the ratios to the peers; a peer left out is a notice naming its flag, a path
that is not the peer a one-line error; --quick runs nano's rows end to end (the peers' sources are not here)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "peers.py"


def test_the_table_shows_each_round_the_median_and_nano_over_its_peer():
    peers = load_benchmark("peers")
    rows = {"nanoGPT fp32": {"tok_s": [1000.0, 1200.0], "peer": None, "runs_as": "torch, fp32"},
            "nano torch fp32": {"tok_s": [1500.0, 1700.0], "peer": "nanoGPT fp32", "runs_as": "torch, fp32, sdpa"},
            "nano torch --dtype auto": {"tok_s": [3000.0, None], "peer": "nanoGPT + bf16 autocast"},
            "nano mlx fp32": {"tok_s": [None, None], "peer": "mlx-examples transformer_lm (compiled)"}}
    assert peers.ratios(rows) == {"nano torch fp32": ("nanoGPT fp32", pytest.approx(1600 / 1100))}
    lines = peers.table(rows).splitlines()
    assert lines[0] == ("| implementation | round 1 tok/s | round 2 tok/s | median tok/s | vs peer | runs as |")
    assert lines[2] == "| nanoGPT fp32 | 1,000 | 1,200 | **1,100** | peer | torch, fp32 |"
    assert lines[3] == "| nano torch fp32 | 1,500 | 1,700 | **1,600** | 1.45x nanoGPT fp32 | torch, fp32, sdpa |"
    assert lines[4].startswith("| nano torch --dtype auto | 3,000 | failed | **3,000** | (nanoGPT + bf16 autocast")
    assert lines[5].startswith("| nano mlx fp32 | failed | failed | failed |")


def test_the_peer_sources_are_recognised_without_importing_them(tmp_path):
    workers = load_benchmark("peers_workers")
    (tmp_path / "nanoGPT").mkdir()
    model = tmp_path / "nanoGPT" / "model.py"
    model.write_text("import torch_is_not_imported\nclass GPTConfig: pass\n"
                     "class GPT:\n    def configure_optimizers(self, *a): pass\n")
    assert workers.nanogpt_source(tmp_path / "nanoGPT") == workers.nanogpt_source(model) == model.resolve()
    (tmp_path / "tlm").mkdir()
    (tmp_path / "tlm" / "main.py").write_text("import datasets\nclass TransformerLM: pass\n")
    assert workers.transformer_lm_source(tmp_path / "tlm" / "main.py") == (tmp_path / "tlm").resolve()
    for bad in (tmp_path / "tlm" / "main.py", tmp_path / "missing.py"):
        with pytest.raises(workers.PeerError, match="--nanogpt"):
            workers.nanogpt_source(bad)
    with pytest.raises(workers.PeerError, match="--transformer-lm"):
        workers.transformer_lm_source(tmp_path / "nanoGPT")


@pytest.mark.parametrize("flag,path", [("--nanogpt", "not_there/model.py"), ("--nanogpt", "pyproject.toml"),
                                       ("--transformer-lm", "benchmarks")])
def test_a_path_that_is_not_the_peer_is_one_line_before_anything_runs(tmp_path, flag, path):
    proc = subprocess.run([sys.executable, str(SCRIPT), flag, str(ROOT / path), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode in (1, 2)
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {flag} ")
    assert not (tmp_path / "peers.json").exists()


@pytest.mark.e2e
def test_quick_without_peers_runs_nano_rows_and_names_the_missing_flags(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--rounds", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    notices = [line for line in proc.stdout.splitlines() if line.startswith("notice:")]
    assert any("--nanogpt" in n for n in notices) and any("--transformer-lm" in n for n in notices)
    report = json.loads((tmp_path / "peers.json").read_text())
    rows = report["rows"]
    assert list(rows) == ["nano torch fp32", "nano torch --dtype auto", "nano mlx fp32"]
    for row in rows.values():
        assert len(row["tok_s"]) == 1 and row["tok_s"][0] > 0 and "ratio" not in row
        assert row["runs"][0]["result"]["tokens_per_step"] == 2 * 16  # the quick config, batch 2
    assert report["machine"]["cpu"] and len(report["loadavg_start"]) == 3
    md = (tmp_path / "peers.md").read_text()
    assert "| nano mlx fp32 |" in md and "(mlx-examples transformer_lm (compiled) not run)" in md
    assert (tmp_path / "peers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
