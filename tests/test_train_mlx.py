"""What is MLX's own in a training run: bf16 compute with fp32 masters, the compiled step (the backend's own choices
are tested in test_backend.py).
The end-to-end checks both train commands share are parametrized over the backends in test_train.py."""
import numpy as np
import pytest

from nano_core import checkpoint as ck
from helpers import losses, micro_setup, reference_run, train_args, train_main

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop


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
