"""Checkpoints move between backends: a run started in PyTorch continues in MLX (and back), and the first loss
after the switch is the loss the original backend computes on that same batch (fp32, 1e-5 relative)."""
import pytest

from nano_core import checkpoint as ck
from helpers import losses, reference_run, train_main

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop


@pytest.mark.parametrize("src, dst", [("torch", "mlx"), ("mlx", "torch")])
def test_checkpoint_continues_in_the_other_backend(src, dst, shared_data, tmp_path):
    ref = reference_run(src, shared_data)  # 8 uninterrupted steps in `src`, checkpoint at step 4
    out = tmp_path / f"{src}-to-{dst}"
    train_main(dst)(["--resume", str(ref / "ckpt_0000004"), "--out", str(out)])
    got, want = losses(out), losses(ref)
    assert sorted(got) == [5, 6, 7, 8]
    assert got[5] == pytest.approx(want[5], rel=1e-5)  # same weights, same optimizer state, same batch
    for s in (6, 7, 8):  # and training goes on the same way
        assert got[s] == pytest.approx(want[s], rel=1e-4)
    meta = ck.load_checkpoint(out)[2]
    assert meta["backend"] == dst and meta["step"] == 8
    assert losses(out, "val_loss")[8] == pytest.approx(losses(ref, "val_loss")[8], rel=1e-4)
