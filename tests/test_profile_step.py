"""benchmarks/profile_step.py: ops land in the categories its tables name; --quick profiles both backends' real
step end to end and writes the tables."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("op,phase,category", [
    ("aten::mm", "backward", "matmul / linear"), ("aten::addmm", "forward", "matmul / linear"),
    ("mkldnn::_linear_pointwise", "forward", "matmul / linear"), ("aten::bmm", "optimizer", "optimizer"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "backward", "attention (sdpa)"),
    ("aten::_softmax_backward_data", "backward", "softmax / cross-entropy"),
    ("aten::nll_loss_forward", "forward", "softmax / cross-entropy"),
    ("aten::native_layer_norm_backward", "backward", "norm"), ("aten::_foreach_norm", "forward", "optimizer"),
    ("aten::linalg_vector_norm", "forward", "optimizer"), ("aten::_fused_adamw_", "optimizer", "optimizer"),
    ("aten::gelu_backward", "backward", "elementwise"), ("aten::copy_", "forward", "copies / casts"),
    ("aten::_to_copy", "forward", "copies / casts"), ("aten::pow", "forward", "elementwise"),
    ("autograd::engine::evaluate_function: NativeLayerNormBackward0", "backward", "norm"),
    ("autograd::engine::evaluate_function: ScaledDotProductFlashAttentionForCpuBackward0", "backward",
     "attention (sdpa)"), ("autograd::engine::evaluate_function: NllLossBackward0", "backward",
                           "softmax / cross-entropy"), ("aten::embedding_dense_backward", "backward", "other"),
    ("aten::view", "forward", "other")])
def test_torch_ops_fall_in_the_named_categories(op, phase, category):
    assert load_benchmark("profile_step").torch_category(op, phase) == category


class Event:
    def __init__(self, name, parent=None):
        self.name, self.cpu_parent = name, parent


def test_an_op_inside_a_composite_counts_as_the_composite():
    profile_step = load_benchmark("profile_step")
    rms = Event("aten::rms_norm")
    linear = Event("aten::linear", Event("autograd::engine::evaluate_function: SomethingBackward0"))
    assert profile_step.torch_event_category(Event("aten::pow", rms), "forward") == "norm"
    assert profile_step.torch_event_category(Event("aten::copy_", linear), "forward") == "matmul / linear"
    assert profile_step.torch_event_category(Event("aten::mul", Event("aten::embedding")), "forward") == "elementwise"
    assert profile_step.torch_event_category(Event("aten::mm", rms), "optimizer") == "optimizer"


@pytest.mark.e2e
def test_quick_profiles_both_backends_and_writes_the_tables(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--quick", "--cases",
                           "comparison", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    t = json.loads((tmp_path / "profile_torch_comparison.json").read_text())
    assert t["step_ms"] > 0 and t["self_ms_total"] > 0 and t["top"]
    assert sum(t["categories"].values()) == pytest.approx(t["self_ms_total"])
    assert sum(t["phases"].values()) == pytest.approx(t["self_ms_total"])
    assert t["categories"].get("matmul / linear", 0) > 0 and t["categories"].get("optimizer", 0) > 0
    m = json.loads((tmp_path / "profile_mlx_comparison.json").read_text())
    assert m["step_ms"] > 0 and set(m["phases"]) == {"uncompiled", "compiled"}
    assert set(m["parts"]) == {"attention", "MLP", "norm", "output layer + cross-entropy"}
    assert m["matmul_at_peak_ms"] > 0
    md = (tmp_path / "profile.md").read_text()
    assert "**torch, comparison**" in md and "**mlx, comparison**" in md
