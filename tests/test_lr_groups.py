"""--embed-lr and --head-lr (nano_core/lr_groups.py): AdamW's embeddings and untied head take their own peak learning
rates. A group's step is its ratio times the plain step (the schedule's lr times the ratio) while every other
parameter steps exactly as without the flags; both backends take the same steps with AdamW alone and beside Muon
(1e-5, MLX compiled and eager); the setting is saved and a run resumes bit for bit; the refusals are one line.
CPU, fp32, tiny models."""
import json
import os

os.environ.setdefault("MLX_ENABLE_TF32", "0")  # before mlx is imported (irrelevant on CPU, but parity is the point)

import numpy as np
import pytest
from helpers import one_torch_thread  # noqa: F401 (autouse: one torch thread for this module)
from helpers import BACKEND_CFG, MICRO, backend_class, losses, micro_setup, one_line_error, real_batch, train_args
from helpers import train_main

from nano_core import checkpoint as ck
from nano_core import cli, settings
from nano_core.config import ModelConfig
from nano_core.init import init_weights
from nano_core.lora import LoraConfig
from nano_core.lr_groups import lr_ratios

CFG = dict(BACKEND_CFG, tie_embeddings=False, pos="learned")  # an untied head and a position table: all 3 groups
LR = 1e-3
GROUPS = dict(embed_lr=10 * LR, head_lr=3 * LR)



def run(name, optimizer, shared_data, steps, compile=None, cfg=CFG, **groups):
    """`steps` train steps (2 micro-batches, clipping at 0.5, warm-up over 4 steps): (losses, final weights)."""
    b = backend_class(name)(device="cpu", dtype="fp32", compile=compile)
    config = ModelConfig.from_dict(cfg)
    model = b.build_model(config, init_weights(config, 0))
    opt = b.build_optimizer(model, LR, (0.9, 0.95), 1e-8, 0.1, optimizer, 0.02, 0.95, **groups)
    step = b.make_train_step(model, opt, 2, 0.5, seed=0)
    out = [b.loss_value(step(real_batch(shared_data, offset=i * 4000), LR * min(1.0, (i + 1) / 4), i))
           for i in range(steps)]
    return out, b.model_weights(model)


def test_lr_ratios_name_the_tables_and_the_head_only():
    names = ["wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.attn.wq.weight", "lm_head.weight"]
    assert lr_ratios(names, 1e-3, embed_lr=1e-2, head_lr=3e-3) == pytest.approx(
        {"wte.weight": 10, "wpe.weight": 10, "lm_head.weight": 3})
    assert lr_ratios(names, 1e-3) == {}


@pytest.mark.parametrize("name", ["torch", "mlx"])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_groups_first_step_is_its_ratio_times_the_plain_step_and_the_rest_is_unchanged(name, optimizer,
                                                                                         shared_data):
    """Adam's first step (and the decoupled decay) is linear in the lr, so from the same start the embeddings move
    10x and the head 3x as far as without the flags, at the scheduled lr of that step (a quarter of the peak); the
    other parameters take bit-identical steps."""
    start = init_weights(ModelConfig.from_dict(CFG), 0)
    _, plain = run(name, optimizer, shared_data, 1)
    _, grouped = run(name, optimizer, shared_data, 1, **GROUPS)
    ratios = {"wte.weight": 10, "wpe.weight": 10, "lm_head.weight": 3}
    for k, w in plain.items():
        if k in ratios:
            # fp32 weights near 0.1 hold a step to ~1e-8: a few ulps of the ratio-times-larger step are allowed
            np.testing.assert_allclose(grouped[k] - start[k], ratios[k] * (w - start[k]), rtol=1e-3, atol=1e-7,
                                       err_msg=k)
            assert np.abs(w - start[k]).max() > 1e-4  # a step far above that tolerance
        else:
            np.testing.assert_array_equal(grouped[k], w, err_msg=k)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_both_backends_take_the_same_steps_with_group_learning_rates(optimizer, shared_data):
    runs = {label: run(name, optimizer, shared_data, 5, compile=compile, **GROUPS)
            for label, name, compile in (("torch", "torch", None), ("mlx", "mlx", True), ("eager", "mlx", False))}
    np.testing.assert_allclose(runs["mlx"][0], runs["torch"][0], rtol=1e-5)
    np.testing.assert_allclose(runs["mlx"][0], runs["eager"][0], rtol=1e-6)
    for k, w in runs["torch"][1].items():
        np.testing.assert_allclose(runs["mlx"][1][k], w, rtol=1e-4, atol=1e-5, err_msg=k)


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name", ["torch", "mlx"])
def test_a_head_lr_for_a_tied_head_and_group_lrs_under_lora_are_one_line_errors(name):
    b = backend_class(name)(device="cpu", dtype="fp32")
    tied = ModelConfig.from_dict(BACKEND_CFG)
    model = b.build_model(tied, init_weights(tied, 0))
    one_line_error(lambda: b.build_optimizer(model, LR, (0.9, 0.95), 1e-8, 0.1, "adamw", head_lr=1e-2),
                   "--head-lr needs an untied head.*set --embed-lr instead")
    b.build_optimizer(model, LR, (0.9, 0.95), 1e-8, 0.1, "adamw", embed_lr=1e-2)  # the tied table: --embed-lr
    lora = b.build_model(tied, init_weights(tied, 0), lora=LoraConfig(rank=2), seed=0)
    one_line_error(lambda: b.build_optimizer(lora, LR, (0.9, 0.95), 1e-8, 0.1, "adamw", embed_lr=1e-2),
                   "a LoRA run trains only its adapters")


def checked(argv):
    config, typed = cli.parse_train_args("torch", argv)
    settings.check_config(settings.resolve_defaults(config, "cpu", typed, log=lambda *_: None))


@pytest.mark.parametrize("flags, message", [
    (["--preset", "tiny", "--embed-lr", "0"], "--embed-lr must be a finite number > 0, got 0.0"),
    (["--preset", "tiny", "--head-lr=-1e-3"], "--head-lr must be a finite number > 0"),
    (["--lora-rank", "4", "--init-from", "x", "--embed-lr", "1e-2"], "a LoRA run trains only its adapters"),
])
def test_bad_group_lrs_are_refused_before_any_work(flags, message):
    one_line_error(lambda: checked(flags), message)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.e2e
@pytest.mark.parametrize("name", ["torch", "mlx"])
def test_a_run_with_group_lrs_saves_them_and_resumes_bit_for_bit(name, shared_data, tmp_path):
    data, _ = micro_setup(shared_data)
    config = tmp_path / "untied.json"
    config.write_text(json.dumps(dict(MICRO, tie_embeddings=False)))
    out = tmp_path / "run"
    argv = train_args(data, config, out, **{"max-steps": 3, "ckpt-every": 2, "eval-every": 0, "sample-every": 0,
                                            "optimizer": "muon", "embed-lr": 0.03, "head-lr": 0.006})
    train_main(name)(argv)
    got = losses(out)
    saved = ck.load_checkpoint(out)[2]["train_config"]
    assert (saved["embed_lr"], saved["head_lr"]) == (0.03, 0.006)
    resumed = tmp_path / "resumed"
    train_main(name)(["--resume", str(out / "ckpt_0000002"), "--out", str(resumed)])
    again = losses(resumed)
    assert sorted(again) == [3] and again[3] == got[3], (again, got)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["torch", "mlx"])
def test_a_head_lr_refused_by_the_optimizer_leaves_no_run_dir_behind(name, shared_data, tmp_path):
    """The tied-head refusal comes when the optimizer is built, after the run dir was claimed: the start is undone
    as a refusal inside prepare_run is (rundir.undo_start), and the error is one line."""
    data, config = micro_setup(shared_data)  # MICRO ties its head
    out = tmp_path / "new" / "run"
    with pytest.raises(SystemExit) as exit_:
        train_main(name)(train_args(data, config, out, **{"max-steps": 1, "head-lr": 0.01}))
    message = str(exit_.value.code)  # sys.exit(message): Python prints it and exits 1
    assert message.startswith("error: --head-lr needs an untied head") and "\n" not in message, message
    assert not (tmp_path / "new").exists()
