"""Fine-tuning end to end on both train commands: LoRA runs (small adapter checkpoints, exact resume, a switch of
backend, fuse, generate and eval on unfused adapters), instruction data with the loss on the answers only, and a
real adaptation (FineWeb base -> TinyShakespeare) that lowers the Shakespeare val loss training < 5% of the weights.
The adapters' maths (parity, frozen base, fuse, masks) is tested in test_lora.py; the rows in test_instruct.py."""
import json
import shutil

import numpy as np
import pytest

from nano_core import checkpoint as ck
from nano_core.lora import is_adapter_name
from nano_core.metrics import read_metrics
from helpers import losses, micro_setup, reference_run, train_args, train_main

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

QUICK = {"eval-every": 0, "sample-every": 0, "eval-steps": 1, "sample-tokens": 1, "log-every": 1}


@pytest.fixture(params=["torch", "mlx"])
def backend(request) -> str:
    return request.param


def lora_run(backend: str, shared_data, out, steps: int = 4, **over) -> list[str]:
    data, _ = micro_setup(shared_data)
    args = train_args(data, None, out, **{**QUICK, "max-steps": steps, "ckpt-every": 2, **over})
    return args + ["--init-from", str(reference_run("torch", shared_data)), "--lora-rank", "4"]


def test_a_lora_checkpoint_holds_only_small_adapters_and_resumes_exactly(backend, shared_data, tmp_path, capsys):
    out = tmp_path / "lora"
    train_main(backend)(lora_run(backend, shared_data, out))
    closing = capsys.readouterr().out
    from nano_core.config import ModelConfig
    from nano_core.lora import LoraConfig, adapter_shapes
    from nano_core.metrics import format_count

    cfg = ModelConfig.from_dict(ck.load_checkpoint(out)[2]["model_config"])
    n_adapter = sum(int(np.prod(s)) for s in adapter_shapes(cfg, LoraConfig(4).check(cfg)).values())
    assert f"trained {format_count(n_adapter)} of {format_count(cfg.num_params() + n_adapter)} params" in closing
    adapters, opt, meta = ck.load_checkpoint(out)
    assert adapters and all(is_adapter_name(k) for k in adapters)  # the base is not copied
    assert {k.rsplit(".", 1)[0] for k in opt if k != "step"} == set(adapters)  # AdamW state for adapters only
    assert meta["lora"]["rank"] == 4 and len(meta["base"]["hash"]) == 64
    assert any(np.abs(v).max() > 0 for k, v in adapters.items() if k.endswith("lora_b"))  # B has moved off zero
    base_file = ck.list_checkpoints(reference_run("torch", shared_data))[-1] / "model.safetensors"
    assert (out / "ckpt_0000004" / "model.safetensors").stat().st_size < base_file.stat().st_size / 5
    resumed = tmp_path / "resumed"
    train_main(backend)(["--resume", str(out / "ckpt_0000002"), "--out", str(resumed)])
    want, got = losses(out), losses(resumed)
    assert all(got[s] == want[s] for s in (3, 4)), (want, got)


def test_a_lora_checkpoint_continues_in_the_other_backend(shared_data, tmp_path):
    out = tmp_path / "lora"
    train_main("torch")(lora_run("torch", shared_data, out))
    switched = tmp_path / "switched"
    train_main("mlx")(["--resume", str(out / "ckpt_0000002"), "--out", str(switched)])
    assert losses(switched)[3] == pytest.approx(losses(out)[3], rel=1e-5)


def test_fuse_gives_a_plain_checkpoint_with_the_adapter_models_outputs(shared_data, tmp_path, capsys):
    from nano_core import fuse
    from nano_core.generate import load_model
    from nano_torch.backend import Backend

    out = tmp_path / "lora"
    train_main("torch")(lora_run("torch", shared_data, out))
    fused = tmp_path / "fused"
    fuse.main(["--ckpt", str(out), "--out", str(fused)])
    weights, _, meta = ck.load_checkpoint(fused)
    assert not any(is_adapter_name(k) for k in weights) and "lora" not in meta and meta["fused_from"]
    backend = Backend(device="cpu", dtype="fp32")
    batch = np.arange(65, dtype=np.int32).reshape(1, 65) % 512
    nats = {}
    for name, ckpt in (("adapters", out), ("fused", fused)):
        model, _, _ = load_model(backend, ckpt)
        with backend.inference(model):
            nats[name] = backend.token_losses(model, batch)
    np.testing.assert_allclose(nats["fused"], nats["adapters"], rtol=1e-5)
    for ckpt in (out, fused):  # generate takes unfused adapters and the fused model alike
        __import__("nano_torch.generate", fromlist=["main"]).main(["--ckpt", str(ckpt), "--max-new-tokens", "5"])
    assert capsys.readouterr().out.count("The") >= 2


def _instruct_file(shared_data, path, bad_line: int | None = None):
    lines = [ln for ln in (shared_data / "tinyshakespeare" / "input.txt").read_text().splitlines() if ln.strip()]
    rows = [{"prompt": lines[i][:40], "completion": " " + lines[i + 1][:40]} for i in range(0, 400, 2)]
    text = [json.dumps(r) for r in rows]
    if bad_line is not None:
        text[bad_line - 1] = json.dumps({"prompt": "no completion here"})
    path.write_text("\n".join(text) + "\n")
    return path


def test_instruction_data_trains_on_the_answers_with_lora(backend, shared_data, tmp_path, capsys):
    jsonl = _instruct_file(shared_data, tmp_path / "sft.jsonl")
    out = tmp_path / "sft"
    args = lora_run(backend, shared_data, out, steps=3, **{"eval-every": 3})
    data_at = args.index("--data")
    args = args[:data_at] + args[data_at + 2:] + ["--instruct-data", str(jsonl)]
    train_main(backend)(args)
    printed = capsys.readouterr().out
    assert "instruction rows" in printed and "trained" in printed
    val = [r for r in read_metrics(out) if "val_loss" in r]
    assert len(val) == 1 and 0 < val[0]["val_loss"] < 20
    assert (out / "tokenizer").is_dir() and ck.load_checkpoint(out)[2]["train_config"]["instruct_data"] == str(jsonl)


def test_bad_instruction_rows_stop_the_run_naming_the_line_or_are_skipped_and_counted(shared_data, tmp_path,
                                                                                   capsys):
    jsonl = _instruct_file(shared_data, tmp_path / "bad.jsonl", bad_line=7)
    base = lora_run("torch", shared_data, tmp_path / "a", steps=1)
    data_at = base.index("--data")
    base = base[:data_at] + base[data_at + 2:] + ["--instruct-data", str(jsonl)]
    with pytest.raises(SystemExit) as e:
        train_main("torch")(base)
    assert f"{jsonl}:7:" in str(e.value.code) and "\n" not in str(e.value.code)
    base[base.index("--out") + 1] = str(tmp_path / "b")
    train_main("torch")(base + ["--skip-bad-rows"])
    assert "skipped 1 bad row" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # instruction data needs a model and its tokenizer
        train_main("torch")(["--instruct-data", str(jsonl), "--out", str(tmp_path / "c")])
    assert "--instruct-data needs --init-from" in str(e.value.code)


@pytest.mark.slow
def test_lora_adapts_a_fineweb_model_to_shakespeare_training_under_5_percent_of_the_weights(shared_data, tmp_path,
                                                                                         capsys):
    """A base pretrained here on FineWeb-edu + Gutenberg, then LoRA (rank 4) on TinyShakespeare: the Shakespeare
    val loss drops clearly below the base model's, while the adapters are < 5% of the parameters."""
    from nano_core.generate import load_model
    from nano_core.trainer import evaluate
    from nano_torch.backend import Backend
    from tokenizer import load_tokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl", corpus)
    for name in sorted(p.name for p in (shared_data / "gutenberg").glob("*.txt"))[:2]:
        shutil.copy(shared_data / "gutenberg" / name, corpus)
    model_json = tmp_path / "model.json"
    model_json.write_text(json.dumps({"n_layer": 2, "n_head": 4, "n_embd": 128, "seq_len": 64}))
    common = ["--batch-size", "16", "--eval-steps", "8", "--sample-every", "0", "--sample-tokens", "1",
              "--log-every", "50", "--dtype", "fp32", "--warmup-steps", "10", "--eval-every", "0"]
    base = tmp_path / "base"
    train_main("torch")(["--source", str(corpus), "--config", str(model_json), "--vocab-size", "512", "--out",
                         str(base), "--max-steps", "300", "--lr", "3e-3", *common])
    tuned = tmp_path / "tuned"
    train_main("torch")(["--init-from", str(base), "--source", str(shared_data / "tinyshakespeare" / "input.txt"),
                         "--lora-rank", "4", "--out", str(tuned), "--max-steps", "200", "--lr", "2e-2",
                         "--weight-decay", "0", *common])
    closing = capsys.readouterr().out.strip().splitlines()[-1]
    trained, total = (float(x.replace("k", "e3").replace("M", "e6")) for x in
                      closing.split("trained ")[1].split(" params")[0].split(" of "))
    assert trained / total < 0.05, closing
    meta = ck.load_checkpoint(tuned)[2]
    backend = Backend(device="cpu", dtype="fp32")
    tok = load_tokenizer(meta["tokenizer_dir"])
    before = evaluate(backend, load_model(backend, base)[0], meta["data_dir"], 16, 64, 8, tok.token_byte_lengths())
    after = [r["val_loss"] for r in read_metrics(tuned) if "val_loss" in r][-1]
    assert after < before["val_loss"] - 0.15, (before["val_loss"], after)  # measured: 4.874 -> 4.627 nats
