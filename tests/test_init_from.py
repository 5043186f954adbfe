"""--init-from on both train commands: a run starts from trained weights (a nano checkpoint of either backend, or a
Hugging Face directory) with a fresh optimizer and schedule, the model's own config and tokenizer."""
import shutil
import subprocess
import sys

import pytest

from nano_core import checkpoint as ck
from nano_core.data import ShardLoader
from nano_core.metrics import read_metrics
from helpers import REPO, losses, micro_setup, reference_run, train_args, train_main

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

QUICK = {"eval-every": 0, "sample-every": 0, "eval-steps": 1, "sample-tokens": 1, "ckpt-every": 0, "log-every": 1}


def first_batch_loss(backend_name: str, ckpt, data, batch_size: int = 4, seq_len: int = 64, seed: int = 0) -> float:
    """The loss the checkpoint's weights give on the first training batch of a run with `seed`: what a run that
    starts from those weights must report at step 1 (the step's loss is taken before its update)."""
    from nano_core.config import ModelConfig

    weights, _, meta = ck.load_checkpoint(ckpt)
    backend = __import__(f"nano_{backend_name}.backend", fromlist=["Backend"]).Backend(device="cpu", dtype="fp32")
    model = backend.build_model(ModelConfig.from_dict(meta["model_config"]), weights)
    batch = ShardLoader(data, batch_size, seq_len, split="train", seed=seed).next_batch()
    with backend.inference(model):
        return float(backend.token_losses(model, batch).mean())


@pytest.mark.parametrize("source, target", [("torch", "torch"), ("torch", "mlx"), ("mlx", "torch")])
def test_init_from_a_nano_checkpoint_starts_from_its_weights_with_a_fresh_optimizer(source, target, shared_data,
                                                                                   tmp_path):
    data, _ = micro_setup(shared_data)
    ref = reference_run(source, shared_data)
    out = tmp_path / "init"
    args = train_args(data, None, out, **{**QUICK, "max-steps": 3, "seed": 5})
    train_main(target)(args + ["--init-from", str(ref)])
    want = first_batch_loss(target, ref / "ckpt_0000008", data, seed=5)
    assert losses(out)[1] == pytest.approx(want, rel=1e-5)  # step 1 is the trained model on the new run's batch
    weights, opt, meta = ck.load_checkpoint(out)
    assert int(opt["step"]) == 3 and meta["step"] == 3  # a fresh optimizer: 3 AdamW steps, not 8 + 3
    assert meta["init_from"] == str(ref / "ckpt_0000008") and meta["model_config"]["n_embd"] == 64
    assert meta["train_config"]["init_from"] == str(ref)
    # a fresh schedule too: the warmup of this run, not the end of the old one
    lrs = [r["lr"] for r in read_metrics(out) if "train_loss" in r]
    assert lrs[0] == pytest.approx(3e-3 / 2)


def test_init_from_refuses_what_cannot_work(shared_data, tmp_path):
    data, config = micro_setup(shared_data)
    ref = reference_run("torch", shared_data)
    base = train_args(data, None, tmp_path / "a", **{**QUICK, "max-steps": 1})
    with pytest.raises(SystemExit) as e:  # a learned position table cannot grow
        train_main("torch")(base + ["--init-from", str(ref), "--seq-len", "128"])
    assert "longer than the learned position table" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        train_main("torch")(base + ["--init-from", str(tmp_path / "nothing-here")])
    assert "error:" in str(e.value.code) and "\n" not in str(e.value.code)
    proc = subprocess.run([sys.executable, "-m", "nano_torch.train", "--init-from", str(ref), "--preset", "tiny"],
                          cwd=REPO, capture_output=True, text=True)  # the model comes from one place only
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    other = tmp_path / "other-tokenizer"
    from nano_core.prepare import prepare

    prepare([str(shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl")], other, vocab_size=512,
            val_tokens=16384, progress=False, max_docs=120)
    with pytest.raises(SystemExit) as e:
        train_main("torch")(["--data", str(other), "--init-from", str(ref), "--out", str(tmp_path / "b")])
    assert "encoded with another tokenizer" in str(e.value.code)


def test_a_shorter_context_cuts_the_learned_position_table(shared_data, tmp_path):
    data, _ = micro_setup(shared_data)
    ref = reference_run("mlx", shared_data)
    out = tmp_path / "short"
    train_main("mlx")(train_args(data, None, out, **{**QUICK, "max-steps": 1, "seq-len": 32})
                      + ["--init-from", str(ref)])
    weights, _, meta = ck.load_checkpoint(out)
    assert meta["model_config"]["seq_len"] == 32 and weights["wpe.weight"].shape == (32, 64)


def test_init_from_a_hugging_face_export_of_a_nano_model(shared_data, tmp_path):
    """nano -> HF directory (python -m nano_core.export) -> --init-from: the same model, the same first loss."""
    from nano_core import export

    data, _ = micro_setup(shared_data)
    ref = reference_run("torch", shared_data)
    hf_dir = tmp_path / "hf"
    export.main(["--ckpt", str(ref), "--out", str(hf_dir)])
    out = tmp_path / "from-hf"
    train_main("torch")(train_args(data, None, out, **{**QUICK, "max-steps": 1})
                        + ["--init-from", str(hf_dir)])
    assert losses(out)[1] == pytest.approx(first_batch_loss("torch", ref / "ckpt_0000008", data), rel=1e-5)
    shutil.rmtree(hf_dir)
