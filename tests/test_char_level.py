"""Character-level training from the train command (issue 24): `--source ../shared/data/tinyshakespeare
--tokenizer char` prepares shards with the character tokenizer, trains, samples and measures bits per byte; the
generate and eval commands then load the checkpoint's character tokenizer. On both backends."""
import json
import math

import pytest

from nano_core import checkpoint as ck
from nano_core import cli, metrics, settings
from tokenizer import CharTokenizer, load_tokenizer

MICRO = {"n_layer": 1, "n_head": 2, "n_embd": 32, "seq_len": 64}


def command(backend: str, name: str):
    return __import__(f"nano_{backend}.{name}", fromlist=["main"]).main


def check_config(*argv):
    model = [] if "--init-from" in argv else ["--preset", "tiny"]
    config, _ = cli.parse_train_args("torch", [*model, "--tokenizer", "char", *argv])
    settings.check_config(config)


@pytest.mark.parametrize("argv, words", [
    (["--vocab-size", "1024"], "--vocab-size 1024 does not apply to --tokenizer char"),
    (["--data", "shards"], "--tokenizer char conflicts with --data"),
    (["--init-from", "ckpt"], "--tokenizer char conflicts with --init-from"),
])
def test_what_a_character_tokenizer_cannot_go_with_is_refused_in_one_line(argv, words):
    with pytest.raises(ValueError, match=words):
        check_config(*argv)


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_tinyshakespeare_by_characters_trains_samples_generates_and_evaluates(backend, shared_data, tmp_path,
                                                                             monkeypatch, capsys):
    monkeypatch.setenv("NANO_CACHE", str(tmp_path / "cache"))  # the prepared shards go here, not to ~/.cache
    (tmp_path / "micro.json").write_text(json.dumps(MICRO))
    source = shared_data / "tinyshakespeare"
    run = tmp_path / "run"
    argv = ["--source", str(source), "--tokenizer", "char", "--config", str(tmp_path / "micro.json"),
            "--max-steps", "6", "--batch-size", "4", "--eval-every", "3", "--eval-steps", "2", "--sample-every", "0",
            "--sample-tokens", "24", "--sample-prompt", "ROMEO:", "--log-every", "1", "--warmup-steps", "1",
            "--lr", "3e-3", "--dtype", "fp32", "--device", "cpu"]
    command(backend, "train")([*argv, "--out", str(run)])
    alphabet = sorted(set(source.joinpath("input.txt").read_text(encoding="utf-8")))

    _, _, meta = ck.load_checkpoint(run)
    tok = load_tokenizer(ck.checkpoint_tokenizer_dir(run / "ckpt_0000006"))
    assert isinstance(tok, CharTokenizer) and tok.chars == alphabet
    assert meta["model_config"]["vocab_size"] == len(alphabet) + 1 == tok.vocab_size  # + <|endoftext|>
    assert meta["train_config"]["tokenizer"] == "char" and meta["step"] == 6
    val = [r for r in metrics.read_metrics(run) if "val_bpb" in r]
    # one character is one byte here (TinyShakespeare is ASCII): bits per byte = bits per token
    assert [r["step"] for r in val] == [3, 6] and all(
        r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-3) for r in val)
    assert "ROMEO:" in (run / "samples.txt").read_text()

    capsys.readouterr()
    command(backend, "generate")(["--ckpt", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "1",
                                  "--device", "cpu"])
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and set(text[:-1]) <= set(alphabet)
    report = command(backend, "eval")(["--ckpt", str(run), "--tasks", "bpb", "--limit", "4", "--device", "cpu",
                                       "--out", str(tmp_path / "eval.json")])
    assert 0 < report["tasks"]["bpb"]["bpb"] < math.log2(len(alphabet) + 1) + 1

    # the second run reuses the prepared shards; a prompt outside the alphabet is refused before any training
    with pytest.raises(SystemExit) as stop:
        command(backend, "train")([*argv, "--out", str(tmp_path / "other"), "--sample-prompt", "Zürich"])
    message = str(stop.value.code)
    assert "--sample-prompt 'Zürich'" in message and "'ü'" in message and "\n" not in message
    assert "data: cached shards" in capsys.readouterr().out and not (tmp_path / "other").exists()
