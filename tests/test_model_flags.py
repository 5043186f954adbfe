"""--model.FIELD=VALUE (issue 24): every ModelConfig field from the train command line of both backends, parsed by
its type, checked by the spec's one-line errors before any data is prepared, listed by --help, recorded in the
checkpoint and refused on --resume when it contradicts the checkpoint's model."""
import importlib
import json
import re
from dataclasses import fields

import pytest

from nano_core import cli, model_flags, settings
from nano_core.checkpoint import load_checkpoint
from nano_core.config import ModelConfig

from helpers import micro_setup, train_args, train_main


def parse(*argv):
    return cli.parse_train_args("torch", list(argv))


def one_error_line(capsys, call) -> str:
    """argparse's refusal: usage lines, then exactly one error line; that line is returned."""
    with pytest.raises(SystemExit) as stop:
        call()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_every_model_field_is_a_flag_of_both_backends_under_model_fields(capsys):
    names = {f.name for f in fields(ModelConfig)}
    for backend in ("torch", "mlx"):
        flags = {s for a in cli.build_parser(backend)._actions for s in a.option_strings if s.startswith("--model.")}
        assert flags == {f"--model.{n}" for n in names}, backend
    with pytest.raises(SystemExit):
        importlib.import_module("nano_torch.train").main(["--help"])
    out = capsys.readouterr().out
    group = out[out.index("model fields:"):]
    assert all(f"--model.{n} " in group for n in names)
    assert "--model.pos STR" in group and "rope" in group  # the choices are in the help


def test_values_are_parsed_by_the_fields_type_in_both_spellings():
    config, typed = parse("--preset", "tiny", "--model.pos=rope", "--model.n_kv_head", "2", "--model.window=64",
                          "--model.bias=false", "--model.rope_pct", "0.5", "--model.logit_softcap=none",
                          "--model.rope_scaling", '{"type": "ntk", "factor": 2}', "--model.qk_norm", "yes")
    assert config.model_overrides == {"pos": "rope", "n_kv_head": 2, "window": 64, "bias": False, "rope_pct": 0.5,
                                      "logit_softcap": None, "rope_scaling": {"type": "ntk", "factor": 2},
                                      "qk_norm": True}
    assert "model_overrides" in typed and not any(t.startswith("model.") for t in typed)
    model = settings.requested_model_config(config, 512)
    tiny = ModelConfig.from_preset("tiny")
    assert (model.pos, model.kv_heads, model.window, model.bias, model.rope_dim, model.qk_norm) == \
        ("rope", 2, 64, False, tiny.head_dim // 2, True)
    assert (model.n_layer, model.n_embd, model.vocab_size) == (tiny.n_layer, tiny.n_embd, 512)  # the rest: the preset
    assert cli.TrainConfig(**json.loads(json.dumps(config.to_dict()))) == config  # as a checkpoint records it


def test_emb_scale_is_a_float_flag_on_top_of_the_preset():
    config, _ = parse("--preset", "nano44m", "--model.n_embd=256", "--model.emb_scale=16")
    model = settings.requested_model_config(config, 512)
    assert (model.n_embd, model.emb_scale, model.pos) == (256, 16.0, "sinusoidal")
    config, _ = parse("--preset", "nano44m", "--model.n_embd=256")  # the preset's 50 stays unless typed
    assert settings.requested_model_config(config, 512).emb_scale == 50.0


def test_no_model_flags_leave_the_preset_alone():
    config, typed = parse("--preset", "tiny")
    assert config.model_overrides is None and "model_overrides" not in typed
    assert settings.requested_model_config(config, 8192) == ModelConfig.from_preset("tiny")


def test_the_overrides_go_on_top_of_a_config_file(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 32, "seq_len": 32}))
    config, _ = parse("--config", str(tmp_path / "m.json"), "--model.mlp=swiglu", "--model.n_layer=3")
    model = settings.requested_model_config(config, 300)
    assert (model.n_layer, model.n_embd, model.mlp) == (3, 32, "swiglu")


def test_seq_len_and_vocab_size_are_the_runs_own_flags():
    config, typed = parse("--preset", "tiny", "--model.seq_len=64", "--model.vocab_size", "1024")
    assert (config.seq_len, config.vocab_size, config.model_overrides) == (64, 1024, None)
    assert {"seq_len", "vocab_size"} <= typed


def test_seq_len_typed_twice_with_two_values_is_refused(capsys):
    line = one_error_line(capsys, lambda: parse("--seq-len", "32", "--model.seq_len=64"))
    assert "--model.seq_len=64 contradicts --seq-len 32" in line


@pytest.mark.parametrize("argv, words", [
    (["--model.n_kv_heads=2"], "--model.n_kv_heads: no such model field; did you mean --model.n_kv_head?"),
    (["--model.rope", "true"], "--model.rope: no such model field"),
    (["--model.n_layer=two"], "argument --model.n_layer: expected an integer, got 'two'"),
    (["--model.n_layer=1.5"], "argument --model.n_layer: expected an integer"),
    (["--model.window", "wide"], "argument --model.window: expected an integer or none"),
    (["--model.bias=maybe"], "argument --model.bias: expected true or false"),
    (["--model.rope_pct=nan"], "argument --model.rope_pct: expected a finite number"),
    (["--model.rope_scaling=[1, 2]"], "argument --model.rope_scaling: expected a JSON object"),
    (["--model.n_head=none"], "argument --model.n_head: expected an integer, got 'none'"),
])
def test_an_unknown_field_or_a_bad_value_is_one_line_naming_the_flag(capsys, argv, words):
    assert words in one_error_line(capsys, lambda: parse("--preset", "tiny", *argv))


@pytest.mark.parametrize("argv, words", [
    (["--model.n_kv_head=3"], "--model.n_kv_head=3: n_head=4 is not divisible by n_kv_head=3"),
    (["--model.pos=alibi"], "--model.pos=alibi: pos='alibi' is not one of"),
    (["--model.dropout_attn=1"], "--model.dropout_attn=1.0: dropout_attn=1.0 must be in [0, 1)"),
    (["--model.rope_scaling", '{"type": "ntk", "factor": 2}'], "use pos='rope' or drop rope_scaling"),
    (["--model.arch=rnn"], "arch='rnn' has no position encoding"),
    (["--model.emb_scale=0"], "--model.emb_scale=0.0: emb_scale=0.0 must be a finite number > 0"),
])
def test_the_spec_refuses_a_bad_model_before_any_data(capsys, tmp_path, argv, words):
    """Through the train command: the spec's one line, naming the flag, and no data prepared (--source is a file
    that is never read)."""
    text = tmp_path / "never-read.txt"
    main = importlib.import_module("nano_torch.train").main
    with pytest.raises(SystemExit) as stop:
        main(["--preset", "tiny", "--source", str(text), "--out", str(tmp_path / "run"), *argv])
    message = str(stop.value.code)
    assert words in message and "\n" not in message and "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_starting_weights_take_only_the_dropout_fields():
    model_flags.check_init_from({"dropout_resid": 0.1, "dropout_attn": 0.0})
    with pytest.raises(ValueError, match=r"--model.pos=rope conflicts with --init-from: .* only "
                                         r"--model.dropout_emb, --model.dropout_attn, --model.dropout_resid"):
        model_flags.check_init_from({"pos": "rope", "dropout_resid": 0.1})


def test_a_resumed_run_refuses_a_field_its_checkpoint_does_not_hold():
    meta = {"model_config": ModelConfig.from_preset("tiny", pos="rope").to_dict(),
            "train_config": {"preset": "tiny", "model_overrides": {"pos": "rope"}}}
    config, typed = parse("--resume", "ckpt", "--model.pos=rope")
    settings.check_resume_flags(config, typed, meta, "ckpt")  # the same value: fine
    config, typed = parse("--resume", "ckpt", "--model.pos=learned")
    with pytest.raises(ValueError, match=re.escape("--model.pos=learned conflicts with the checkpoint ckpt, which "
                                                   "holds pos rope") + ".*drop --model.pos"):
        settings.check_resume_flags(config, typed, meta, "ckpt")


def test_a_checkpoint_from_before_a_field_existed_holds_its_default():
    old = ModelConfig.from_preset("tiny").to_dict()
    del old["emb_scale"]
    meta = {"model_config": old, "train_config": {"preset": "tiny"}}
    config, typed = parse("--resume", "ckpt", "--model.emb_scale=1")
    settings.check_resume_flags(config, typed, meta, "ckpt")  # the model it holds runs with emb_scale 1.0
    config, typed = parse("--resume", "ckpt", "--model.emb_scale=2")
    with pytest.raises(ValueError, match=re.escape("holds emb_scale 1.0")):
        settings.check_resume_flags(config, typed, meta, "ckpt")


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_model_flags_train_are_recorded_and_a_resume_keeps_them(backend, shared_data, tmp_path, capsys):
    data, config = micro_setup(shared_data)
    flags = ["--model.pos=rope", "--model.n_kv_head=1", "--model.mlp", "swiglu", "--model.window=16"]
    out = tmp_path / "run"
    train_main(backend)(train_args(data, config, out, **{"max-steps": 2, "ckpt-every": 1, "eval-every": 0,
                                                         "sample-every": 0, "sample-tokens": 2}) + flags)
    _, _, meta = load_checkpoint(out / "ckpt_0000002")
    model = meta["model_config"]
    assert (model["pos"], model["n_kv_head"], model["mlp"], model["window"], model["n_layer"]) == \
        ("rope", 1, "swiglu", 16, 2)  # on top of the micro config file
    assert meta["train_config"]["model_overrides"] == {"pos": "rope", "n_kv_head": 1, "mlp": "swiglu", "window": 16}
    train_main(backend)(["--resume", str(out / "ckpt_0000001"), "--out", str(tmp_path / "again"), "--model.pos=rope"])
    _, _, again = load_checkpoint(tmp_path / "again" / "ckpt_0000002")
    assert again["model_config"] == model and again["train_config"]["model_overrides"] == \
        meta["train_config"]["model_overrides"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train_main(backend)(["--resume", str(out / "ckpt_0000001"), "--out", str(tmp_path / "other"),
                             "--model.n_kv_head=2"])
    assert "--model.n_kv_head=2 conflicts with the checkpoint" in str(stop.value.code)
    assert "which holds n_kv_head 1" in str(stop.value.code)
