"""What is MLX's own in nano_mlx.train: bf16 compute with fp32 masters, the compiled step, the BLAS notice.
The end-to-end checks both train commands share are parametrized over the backends in test_train.py."""
import math

import numpy as np
import pytest

from nano_core import checkpoint as ck
from test_train import losses, micro_setup, reference_run, train_args, train_main

def test_bf16_trains_with_fp32_masters_close_to_fp32(shared_data, tmp_path):
    data, config = micro_setup(shared_data)
    common = {"max-steps": 2, "eval-every": 0, "sample-every": 0, "ckpt-every": 0, "eval-steps": 1,
              "sample-tokens": 1}
    train_main(BACKEND)(train_args(data, config, tmp_path / "bf16", dtype="bf16", **common))
    weights, opt, meta = ck.load_checkpoint(tmp_path / "bf16")
    assert meta["dtype"] == "bf16"
    assert all(w.dtype == np.float32 for w in weights.values())  # masters stay fp32 ...
    assert all(v.dtype == np.float32 for k, v in opt.items() if k != "step")  # ... and so do the AdamW moments
    fp32 = losses(reference_run(BACKEND, shared_data))
    bf16 = losses(tmp_path / "bf16")
    assert bf16[1] != fp32[1] and bf16[1] == pytest.approx(fp32[1], rel=1e-2)  # really bf16, still the same model

BACKEND = "mlx"


def test_uncompiled_step_gives_the_compiled_losses(shared_data, tmp_path):
    data, config = micro_setup(shared_data)
    common = {"max-steps": 3, "eval-every": 0, "sample-every": 0, "ckpt-every": 0, "eval-steps": 1,
              "sample-tokens": 1}
    train_main(BACKEND)(train_args(data, config, tmp_path / "eager", **common) + ["--no-compile"])
    eager, compiled = losses(tmp_path / "eager"), losses(reference_run(BACKEND, shared_data))
    for s in (1, 2, 3):
        assert eager[s] == pytest.approx(compiled[s], rel=1e-5)


def test_blas_notice_names_the_openblas_to_preload(monkeypatch):
    from nano_mlx import train as mt

    maps = ["7f0 r-xp 0 0 0 /venv/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0\n",
            "7f1 r-xp 0 0 0 /venv/numpy.libs/libscipy_openblas64_-32a4b2a6.so\n"]  # numpy's copy does not count
    monkeypatch.setattr(mt.sys, "platform", "linux")
    monkeypatch.setattr(mt.glob, "glob", lambda g: ["/usr/lib/x/openblas-pthread/libopenblas.so.0"]
                        if "openblas-pthread" in g else [])
    real_open = open
    monkeypatch.setitem(mt.__builtins__ if isinstance(mt.__builtins__, dict) else vars(mt.__builtins__), "open",
                        lambda p, *a, **k: iter(maps) if p == "/proc/self/maps" else real_open(p, *a, **k))
    notice = mt.blas_notice()
    assert "LD_PRELOAD=/usr/lib/x/openblas-pthread/libopenblas.so.0" in notice
    maps.append("7f2 r-xp 0 0 0 /usr/lib/x/openblas-pthread/libopenblasp-r0.3.21.so\n")
    assert mt.blas_notice() is None  # preloaded: nothing to say


def test_mlx_dtype_choice():
    import mlx.core as mx

    from nano_mlx import train as mt

    assert mt.pick_dtype("auto", mx.cpu)[0] == "fp32"
    assert mt.pick_dtype("auto", mx.gpu)[0] == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        mt.pick_dtype("fp16", mx.cpu)
    assert math.isfinite(mt.peak_flops("cpu", "fp32")[0])
