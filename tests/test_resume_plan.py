"""--resume keeps the run it continues: a typed flag that contradicts the checkpoint's model, adapters or data is a
one-line error (issue 22), flags that may change on resume still do, and resuming a finished run says there is
nothing to do instead of printing figures it never measured (issue 23 item 9). Also: the start-up and closing
lines show only the figures a run has."""
import json
import math
import re
from pathlib import Path

import pytest

from nano_core import metrics
from nano_core.report import startup_line, summary_line
from nano_core.settings import check_resume_flags

MICRO = {"n_layer": 1, "n_head": 2, "n_embd": 32, "seq_len": 32}


@pytest.fixture(scope="module")
def finished_run(shared_data, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(shard dir, model config file, run dir): a 2-step PyTorch run on a small corpus, checkpoints at 1 and 2."""
    from nano_core.prepare import prepare
    from nano_torch.train import main

    root = tmp_path_factory.mktemp("resume")
    text = root / "small.txt"
    text.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    prepare([text], root / "shards", vocab_size=300, val_tokens=2_000, num_workers=1, progress=False)
    (root / "micro.json").write_text(json.dumps(MICRO))
    main(train_args(root / "shards", root / "micro.json", root / "run"))
    return root / "shards", root / "micro.json", root / "run"


def train_args(data, config, out, *extra) -> list[str]:
    return ["--data", str(data), "--config", str(config), "--out", str(out), "--batch-size", "2", "--max-steps", "2",
            "--ckpt-every", "1", "--keep", "5", "--eval-every", "0", "--eval-steps", "1", "--sample-every", "0",
            "--sample-tokens", "4", "--log-every", "1", "--dtype", "fp32", "--warmup-steps", "1", *extra]


def resume(run: Path, *flags) -> list[str]:
    from nano_torch.train import main

    return main(["--resume", str(run / "ckpt_0000001"), "--out", str(run.parent / "resumed"), *flags])


def one_line_error(capsys, call) -> str:
    with pytest.raises(SystemExit) as e:
        call()
    message = str(e.value.code)
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err
    return message


@pytest.mark.parametrize("flags, words", [
    (["--seq-len", "64"], "--seq-len 64 conflicts with the checkpoint"),
    (["--vocab-size", "1024"], "which holds vocab size 300"),
    (["--preset", "tiny"], "which holds the model of --config"),
    (["--lora-rank", "4"], "which holds no LoRA adapters"),
    (["--source", "elsewhere.txt"], "--source elsewhere.txt conflicts"),
    (["--recipe", "cpu-10min"], "which holds recipe none"),
])
def test_a_flag_that_contradicts_the_checkpoint_is_a_one_line_error(finished_run, capsys, flags, words):
    _, _, run = finished_run
    message = one_line_error(capsys, lambda: resume(run, *flags))
    assert words in message and f"drop {flags[0]}" in message and "--init-from" in message
    assert not (run.parent / "resumed").exists() or not list((run.parent / "resumed").glob("ckpt_*"))


def test_typed_data_elsewhere_is_refused_and_the_same_shards_are_not(finished_run, capsys, tmp_path):
    import shutil

    data, config, run = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)  # the same tokenizer: only the path tells it is not the checkpoint's data
    message = one_line_error(capsys, lambda: resume(run, "--data", str(copy)))
    assert f"--data {copy} conflicts with the checkpoint" in message and "drop --data" in message
    # the checkpoint's own data and model, typed again, are no conflict
    resume(run, "--data", str(data), "--config", str(config), "--seq-len", "32", "--max-steps", "2")
    assert sorted(r["step"] for r in metrics.read_metrics(run.parent / "resumed") if "train_loss" in r) == [2]


def test_what_may_change_on_resume_still_does(finished_run, tmp_path):
    _, _, run = finished_run
    resume(run, "--max-steps", "3", "--lr", "2e-3", "--log-every", "2", "--device", "cpu")
    out = run.parent / "resumed"
    meta = json.loads((out / "ckpt_0000003" / "meta.json").read_text())
    assert meta["plan"]["max_steps"] == 3 and meta["plan"]["lr"] == 2e-3 and meta["train_config"]["lr"] == 2e-3


def test_resuming_a_finished_run_says_there_is_nothing_to_do(finished_run, capsys):
    from nano_torch.train import main

    _, _, run = finished_run
    before = sorted(p.name for p in run.iterdir())
    main(["--resume", "latest", "--out", str(run)])
    said = capsys.readouterr().out
    assert "nothing to do: the run already reached step 2" in said and "--max-steps M with M > 2" in said
    assert not re.search(r"\bnan\b", said) and "done at step" not in said
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written
    main(["--resume", "latest", "--out", str(run), "--max-steps", "1"])
    assert "past --max-steps 1" in capsys.readouterr().out


def test_check_resume_flags_names_lora_settings_the_checkpoint_holds():
    meta = {"model_config": {"n_layer": 2, "n_embd": 64, "seq_len": 64, "vocab_size": 512},
            "train_config": {"preset": "tiny"}, "lora": {"rank": 8, "alpha": 16.0, "dropout": 0.0,
                                                         "targets": ["wq", "wv"], "layers": None}}
    from nano_core.cli import parse_train_args

    def check(*argv):
        config, typed = parse_train_args("torch", ["--resume", "x", *argv])
        check_resume_flags(config, typed, meta, "ckpt")

    check("--lora-rank", "8", "--lora-targets", "wv,wq", "--preset", "tiny", "--max-steps", "9")  # agrees
    with pytest.raises(ValueError, match="--lora-rank 4 conflicts with the checkpoint ckpt, which holds LoRA adapters "
                                         "with rank 8"):
        check("--lora-rank", "4")
    with pytest.raises(ValueError, match="--lora-alpha 2.0 conflicts"):
        check("--lora-alpha", "2")


class _Backend:
    name, device, dtype, dtype_why, world_size = "torch", "cpu", "fp32", "asked", 1


def test_the_start_up_line_leaves_out_the_unigram_bars_a_run_on_instruction_rows_lacks():
    from nano_core.config import ModelConfig

    model_config = ModelConfig(**MICRO, vocab_size=300)
    shards = startup_line(_Backend, model_config, 1000, 5000, 5.1, 5.2, 1e9, "measured", 1, 2)
    rows = startup_line(_Backend, model_config, 1000, 5000, math.nan, math.nan, 1e9, "measured", 1, 2)
    assert "unigram entropy 5.100 nats/token on train, 5.200 on val" in shards
    assert "unigram" not in rows and not re.search(r"\bnan\b", rows) and rows.endswith("peak 1.00 GFLOP/s (measured)")


def test_the_closing_line_has_the_figures_the_run_has_and_no_others():
    full = {"train_loss": 2.0, "val_loss": 2.5, "val_bpb": 1.1, "tok_per_s": 1234.0, "mfu": 0.1,
            "peak_memory_gb": 1.5, "memory_label": "peak memory"}
    assert summary_line(8, full, 3.0, "runs/x") == (
        "done at step 8: train loss 2.0000, val loss 2.5000 (unigram on val 3.0000), bpb 1.1000, 1,234 tok/s, "
        "MFU 10.0%, peak memory 1.50 GB; checkpoint in runs/x")
    rows = summary_line(8, full, math.nan, "runs/x")
    assert "unigram" not in rows and not re.search(r"\bnan\b", rows)
    short = summary_line(3, {"peak_memory_gb": 1.5}, 3.0, "runs/x")
    assert short == "done at step 3: peak memory 1.50 GB; checkpoint in runs/x"
