"""benchmarks/finetune_bench.py, its pure parts: the commands it runs, reading a run (closing line, metrics.jsonl,
safetensors headers), the table, JSON and PNG from made-up rows; the preload rule; one-line errors. No training."""
import json
import math
import struct
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from helpers import load_benchmark
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "finetune_bench.py"
bench = load_benchmark("finetune_bench")

LORA_CLOSING = ("done at step 40: train loss 5.1234, val loss 5.4321 (unigram on val 6.5865), bpb 2.4680, "
                "1,234 tok/s, MFU 12.5%, peak memory 0.78 GB, trained 589.82k of 30.07M params; checkpoint in runs/x")
FULL_CLOSING = ("done at step 40: train loss 4.9, val loss 5.1000 (unigram on val 6.5865), bpb 2.3000, 150 tok/s, "
                "MFU 40.0%, peak memory 1.15 GB; checkpoint in runs/y")


def args(**kw):
    defaults = bench.build_parser().parse_args([])
    return Namespace(**{**vars(defaults), **kw})


def test_closing_line_is_read_with_and_without_the_trained_part():
    lora = bench.closing_line("train mlx: 100%|###|\rstep 40: val loss 5.4321\n" + LORA_CLOSING + "\n")
    assert lora["step"] == 40 and lora["val_loss"] == 5.4321 and lora["tok_per_s"] == 1234.0
    assert lora["peak_gb"] == 0.78 and lora["trained"] == pytest.approx(589_820) and lora["total"] == 30_070_000
    assert lora["mfu"] == pytest.approx(0.125) and lora["run_dir"] == "runs/x"
    full = bench.closing_line(FULL_CLOSING)
    assert full["trained"] is None and full["peak_gb"] == 1.15
    assert bench.closing_line("interrupted (SIGTERM): saved runs/x/ckpt_0000003") is None


def test_steady_tok_per_s_leaves_out_the_first_record_and_weights_by_time():
    records = [{"step": 1, "train_loss": 9.0, "tok_per_s": 10.0},  # compilation: left out
               {"step": 10, "train_loss": 8.0, "tok_per_s": 100.0},  # 9 steps x 512 tokens in 46.08 s
               {"step": 10, "val_loss": 7.9, "val_bpb": 3.0, "tok_per_s": 100.0},  # not a train record
               {"step": 20, "train_loss": 7.0, "tok_per_s": 200.0}]  # 10 steps in 25.6 s
    assert bench.steady_tok_per_s(records, 512) == pytest.approx(19 * 512 / (46.08 + 25.6))
    assert math.isnan(bench.steady_tok_per_s(records[:1], 512))
    assert bench.last_val(records)["val_loss"] == 7.9 and bench.last_val(records[:2]) == {}


def test_parameters_are_counted_from_the_safetensors_header(tmp_path):
    header = {"__metadata__": {"format": "pt"}, "h.0.attn.wq.lora_a": {"dtype": "F32", "shape": [8, 512],
                                                                      "data_offsets": [0, 16384]},
              "h.0.attn.wq.lora_b": {"dtype": "F32", "shape": [512, 8], "data_offsets": [16384, 32768]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(32768))
    assert bench.safetensors_params(path) == 2 * 8 * 512
    assert bench.parse_count("29.48M") == pytest.approx(29_480_000) and bench.parse_count("512") == 512


def test_commands_hold_the_fine_tuning_settings(tmp_path):
    a = args()
    full = bench.finetune_cmd("torch", "full", tmp_path / "base", a, tmp_path / "full")
    lora = bench.finetune_cmd("mlx", "lora", tmp_path / "base", a, tmp_path / "lora")
    assert full[1:3] == ["-m", "nano_torch.train"] and lora[1:3] == ["-m", "nano_mlx.train"]
    assert "--lora-rank" not in full and lora[lora.index("--lora-rank") + 1] == "8"
    assert full[full.index("--lr") + 1] == "0.0005" and lora[lora.index("--lr") + 1] == "0.002"
    for cmd in (full, lora):
        assert cmd[cmd.index("--source") + 1] == bench.SHAKESPEARE and cmd[cmd.index("--seq-len") + 1] == "128"
        assert cmd[cmd.index("--max-steps") + 1] == "40" and cmd[cmd.index("--init-from") + 1] == str(tmp_path / "base")
    probe = bench.probe_cmd("torch", tmp_path / "base", a, tmp_path / "p")
    assert probe[probe.index("--lr") + 1] == "1e-12" and probe[probe.index("--max-steps") + 1] == "1"
    base = bench.base_cmd(a, tmp_path / "base")
    assert base[base.index("--preset") + 1] == "small" and "--init-from" not in base



def fake_row(backend, kind):
    lora = kind == "lora"
    return {"name": f"{kind}-{backend}", "backend": backend, "kind": kind, "rank": 8 if lora else None,
            "lr": 2e-3 if lora else 5e-4, "step": 40, "trainable_params": 589_824 if lora else 29_479_936,
            "total_params": 30_069_760 if lora else 29_479_936, "peak_memory_gb": 0.4 if lora else 0.6,
            "peak_memory_method": "MLX allocator peak" if backend == "mlx" else "process peak RSS",
            "peak_rss_gb": 0.8, "tok_per_s": 180.0, "tok_per_s_closing": 175.0, "train_loss": 6.0,
            "val_loss_before": 7.9, "val_loss": 6.2 if lora else 5.9, "val_bpb": 2.8, "checkpoint_mb": 7.4,
            "seconds": 100.0, "loadavg_before": [4.2, 4.0, 3.9], "loadavg_after": [4.4, 4.1, 3.9]}


def test_table_json_and_png(tmp_path):
    rows = [fake_row(b, k) for b in bench.BACKENDS for k in bench.KINDS]
    lines = bench.format_table(rows).splitlines()
    assert len(lines) == 6 and lines[0].startswith("| fine-tune |")
    assert lines[3].startswith("| LoRA r8 | torch | 0.002 | 589.8k / 30.07M (2.0%) | 0.40 GB (process peak RSS) |")
    assert "| 7.900 → 6.200 |" in lines[3] and "| 29.48M / 29.48M (100.0%) |" in lines[2]
    result = bench.assemble(rows, {"params": 29_479_936}, {"torch": 7.9}, [], {"steps": 40})
    path = bench.save_json(tmp_path / "r.json", result)
    assert json.loads(path.read_text())["rows"][3]["name"] == "lora-mlx" and result["machine"]["cpu"]
    bench.plot(rows, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flags, message", [
    (["--backends", "jax"], "error: --backends takes torch and/or mlx, comma-separated; got jax"),
    (["--steps", "1"], "error: --steps must be >= 2 (tok/s leaves out the first step), got 1"),
    (["--lora-lr", "0"], "error: --lora-lr must be positive, got 0.0"),
])
def test_bad_settings_are_one_line_errors(tmp_path, flags, message):
    proc = subprocess.run([sys.executable, str(SCRIPT), *flags, "--out", str(tmp_path)], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and proc.stderr.strip() == message
    assert not any(tmp_path.iterdir())  # nothing ran
