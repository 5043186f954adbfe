"""nano_torch.train and nano_mlx.train end to end on real shards (CPU, a micro model): metrics, checkpoints, samples,
exact resume, Ctrl-C, the no-argument pipeline, generation. The run helpers (tests/helpers.py) are memoized, so
each backend's reference run happens once per session."""
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nano_core import checkpoint as ck
from nano_core import metrics
from nano_core.config import ModelConfig
from nano_core.recipes import RECIPES
from nano_core.settings import MAX_STEPS_ENV

from helpers import MICRO, REPO, losses, micro_setup, reference_run, train_args, train_main

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

_CACHE: dict = {}  # the no-argument runs' data cache, one per session


def check_short_run(run: Path, backend: str):
    records = metrics.read_metrics(run)
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    for r in train:
        assert {"step", "train_loss", "lr", "tok_per_s", "mfu"} <= set(r)
        assert math.isfinite(r["train_loss"]) and r["tok_per_s"] > 0 and r["mfu"] > 0
    assert [r["step"] for r in val] == [4, 8]
    for r in val:
        assert {"val_loss", "val_bpb", "val_ppl", "lr"} <= set(r)
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert 0 < r["val_bpb"] < 8 * 1.01  # a 512-token model is still far from the 8 bits of a raw byte
    assert train[-1]["train_loss"] < train[0]["train_loss"]  # lr 3e-3 learns something in 8 steps
    assert [p.name for p in ck.list_checkpoints(run)] == ["ckpt_0000004", "ckpt_0000008"]
    weights, opt, meta = ck.load_checkpoint(run)
    assert meta["backend"] == backend and meta["step"] == 8 and meta["tokens_seen"] == 8 * 4 * 64
    assert meta["loader_state"]["pos"] == 8 * 4 and "step_seed" in meta["rng"] and meta["model_config"]["n_embd"] == 64
    assert meta["train_config"]["lr"] == 3e-3 and meta["code_version"]["package"]
    assert opt["step"] == 8 and all(v.dtype == np.float32 for v in weights.values())
    assert (run / "ckpt_0000008" / "tokenizer" / "tokenizer.json").is_file()
    samples = (run / "samples.txt").read_text()
    assert "--- step 4" in samples and "--- step 8" in samples
    assert (run / "loss_curve.png").stat().st_size > 1000


def check_resume_bit_exact(backend: str, shared_data: Path, tmp_path: Path):
    ref = reference_run(backend, shared_data)
    out = tmp_path / "resumed"
    train_main(backend)(["--resume", str(ref / "ckpt_0000004"), "--out", str(out)])
    got, want = losses(out), losses(ref)
    assert sorted(got) == [5, 6, 7, 8]
    assert all(got[s] == want[s] for s in got), (got, want)  # bit for bit, not approximately
    assert losses(out, "val_loss")[8] == losses(ref, "val_loss")[8]


def check_ctrl_c(backend: str, shared_data: Path, tmp_path: Path):
    data, config = micro_setup(shared_data)
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", f"nano_{backend}.train",
           *train_args(data, config, out, **{"max-steps": 100000, "eval-every": 0, "sample-every": 0,
                                             "ckpt-every": 0})]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not metrics.read_metrics(out) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert metrics.read_metrics(out), "training never logged a step"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-2000:]
    assert "interrupted (SIGINT): saved" in output
    latest = ck.latest_checkpoint(out)
    step = ck.load_checkpoint(latest)[2]["step"]
    assert step >= 1 and latest.name == f"ckpt_{step:07d}"
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    # ... and "--resume latest" picks it up in place, appending to the same metrics.jsonl
    train_main(backend)(["--resume", "latest", "--out", str(out), "--max-steps", str(step + 2)])
    steps = [r["step"] for r in metrics.read_metrics(out) if "train_loss" in r]
    assert steps == list(range(1, step + 3))


def check_no_argument_run(backend: str, tmp_path_factory, monkeypatch, capsys):
    cache = _CACHE.setdefault("nano_cache", tmp_path_factory.mktemp("nano-cache"))
    monkeypatch.setenv("NANO_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline, as on this machine and in CI: the builtin text is used
    monkeypatch.setenv(MAX_STEPS_ENV, "2")
    workdir = tmp_path_factory.mktemp(f"noarg-{backend}")
    monkeypatch.chdir(workdir)
    # Keep it quick: smaller eval/sample/batch defaults (the MLX CPU wheel multiplies on the reference BLAS here).
    from nano_core import cli
    real_build = cli.build_parser

    def quick_parser(name):
        parser = real_build(name)
        parser.set_defaults(batch_size=2, eval_steps=1, sample_tokens=4)
        return parser

    monkeypatch.setattr(cli, "build_parser", quick_parser)
    run = train_main(backend)([])
    out = capsys.readouterr().out
    assert "--source ../shared/data/fineweb_edu" in out  # the notice says how to use real data
    assert run.parent == Path("runs") and run.name.startswith(f"{backend}-cpu-10min-")  # the CPU recipe
    assert "recipe cpu-10min: " in out
    _, _, meta = ck.load_checkpoint(workdir / run)
    assert meta["step"] == 2 and meta["model_config"] == ModelConfig.from_preset(
        RECIPES["cpu-10min"].preset, vocab_size=meta["model_config"]["vocab_size"]).to_dict()
    assert meta["train_config"]["optimizer"] == RECIPES["cpu-10min"].train["optimizer"]
    assert "builtin" in meta["data_dir"]
    assert [r["step"] for r in metrics.read_metrics(workdir / run) if "val_loss" in r] == [2]


def check_grad_accum(backend: str, shared_data: Path, tmp_path: Path):
    """4 x 2 accumulated micro-batches see the same windows as one batch of 8: the same first loss and steps."""
    data, config = micro_setup(shared_data)
    common = {"max-steps": 3, "eval-every": 0, "sample-every": 0, "ckpt-every": 0, "eval-steps": 1,
              "sample-tokens": 1}
    train_main(backend)(train_args(data, config, tmp_path / "a", **{"batch-size": 8, **common}))
    train_main(backend)(train_args(data, config, tmp_path / "b", **{"batch-size": 4, "total-batch-tokens": 512,
                                                                   **common}))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    for s in (1, 2, 3):
        assert b[s] == pytest.approx(a[s], rel=1e-5)
    assert ck.load_checkpoint(tmp_path / "b")[2]["grad_accum"] == 2


def check_dropout_resume(backend: str, shared_data: Path, tmp_path: Path):
    """With dropout the RNG matters: a resumed run must still draw the masks the uninterrupted run drew."""
    data, _ = micro_setup(shared_data)
    config = tmp_path / "dropout.json"
    config.write_text(json.dumps({**MICRO, "dropout_resid": 0.2, "dropout_emb": 0.1}))
    common = {"max-steps": 4, "eval-every": 0, "sample-every": 0, "ckpt-every": 2, "eval-steps": 1,
              "sample-tokens": 1}
    train_main(backend)(train_args(data, config, tmp_path / "full", **common))
    train_main(backend)(["--resume", str(tmp_path / "full" / "ckpt_0000002"), "--out", str(tmp_path / "resumed")])
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(resumed) == [3, 4] and all(resumed[s] == full[s] for s in (3, 4)), (full, resumed)


def check_max_time(backend: str, shared_data: Path, tmp_path: Path):
    """--max-time ends the run early, and the end of a run is a real end: eval, sample, checkpoint."""
    data, config = micro_setup(shared_data)
    out = tmp_path / "timed"
    train_main(backend)(train_args(data, config, out, **{"max-steps": 100000, "max-time": 1e-6, "eval-steps": 1,
                                                        "sample-tokens": 2}))
    assert [r["step"] for r in metrics.read_metrics(out)] == [1, 1]  # one train record, one val record
    assert ck.latest_checkpoint(out).name == "ckpt_0000001"


def check_generate(backend: str, shared_data: Path, capsys):
    run = reference_run(backend, shared_data)
    mod = __import__(f"nano_{backend}.generate", fromlist=["main"])
    capsys.readouterr()
    mod.main(["--ckpt", str(run), "--prompt", "The school", "--max-new-tokens", "20", "--seed", "1"])
    first = capsys.readouterr().out
    mod.main(["--ckpt", str(run / "ckpt_0000008"), "--prompt", "The school", "--max-new-tokens", "20", "--seed", "1"])
    assert first.startswith("The school") and len(first) > len("The school\n")
    assert capsys.readouterr().out == first  # seeded: the same text again


# ------------------------------------------------------------------------------------------------ the tests
@pytest.fixture(params=["torch", "mlx"])
def backend(request) -> str:
    """Every end-to-end check runs against both train commands: they share one CLI and must behave alike."""
    return request.param


def test_short_run_writes_metrics_checkpoint_and_sample(backend, shared_data):
    check_short_run(reference_run(backend, shared_data), backend)


def test_resume_from_checkpoint_reproduces_losses_bit_for_bit(backend, shared_data, tmp_path):
    check_resume_bit_exact(backend, shared_data, tmp_path)


def test_ctrl_c_saves_checkpoint_exits_zero_and_resume_latest_continues(backend, shared_data, tmp_path):
    check_ctrl_c(backend, shared_data, tmp_path)


def test_no_argument_run_prepares_builtin_offline_trains_tiny_and_checkpoints(backend, tmp_path_factory, monkeypatch,
                                                                              capsys):
    check_no_argument_run(backend, tmp_path_factory, monkeypatch, capsys)


def test_gradient_accumulation_matches_one_big_batch(backend, shared_data, tmp_path):
    check_grad_accum(backend, shared_data, tmp_path)


def test_resume_with_dropout_draws_the_same_masks(backend, shared_data, tmp_path):
    check_dropout_resume(backend, shared_data, tmp_path)


def test_max_time_stops_early_with_eval_and_checkpoint(backend, shared_data, tmp_path):
    check_max_time(backend, shared_data, tmp_path)


def test_generate_cli_samples_from_checkpoint_reproducibly(backend, shared_data, capsys):
    check_generate(backend, shared_data, capsys)


def test_bits_per_byte_skips_zero_byte_tokens_and_mfu_is_a_ratio():
    nats = np.array([math.log(2) * 3, math.log(2) * 5, 100.0])  # the last target is a special token (0 bytes)
    targets = np.array([1, 2, 0])
    lengths = np.array([0, 1, 2])
    assert metrics.bits_per_byte(nats, targets, lengths) == pytest.approx((3 + 5) / 3)
    assert metrics.mfu(1e6, 2e3, 4e9) == pytest.approx(0.5)
    v = metrics.val_metrics([nats[:2]], [targets[:2]], lengths)
    assert v["val_loss"] == pytest.approx(4 * math.log(2)) and v["val_ppl"] == pytest.approx(16.0)


def test_an_impossible_mfu_remeasures_the_peak_once_and_keeps_the_larger_value():
    calls = []

    def remeasure(value):
        calls.append(value)
        return value

    # 1e6 FLOP/token at 2e3 tok/s = 2e9 FLOP/s: under a 4e9 peak (50%) nothing is re-measured
    probe = lambda: remeasure(9e9)  # noqa: E731
    assert metrics.recheck_peak(4e9, 1e6, 2e3, probe) == (4e9, probe) and calls == []
    # over a 1e9 peak it would be 200%: the peak is measured again, the larger value kept, and no probe is left
    assert metrics.recheck_peak(1e9, 1e6, 2e3, lambda: remeasure(5e9)) == (5e9, None)
    assert metrics.recheck_peak(1e9, 1e6, 2e3, lambda: remeasure(5e8)) == (1e9, None)
    assert calls == [5e9, 5e8]
    # once used, an impossible MFU is reported as it is rather than probed at every log line
    assert metrics.recheck_peak(1e9, 1e6, 2e3, None) == (1e9, None)


def test_unigram_val_loss_is_val_cross_entropy_under_train_unigram(shared_data):
    from nano_core.shards import read_shard

    data, _ = micro_setup(shared_data)
    train = np.bincount(read_shard(data / "shard_00001.bin"), minlength=512) + 1.0
    val = np.bincount(read_shard(data / "shard_00000.bin"), minlength=512)
    want = -(val * np.log(train / train.sum())).sum() / val.sum()
    assert metrics.unigram_val_loss(data) == pytest.approx(want, rel=1e-12)
