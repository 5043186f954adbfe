"""One CLI for both backends: the train and generate parsers agree on every flag and default but --device."""
import importlib
import re

import pytest

import dataclasses

from nano_core import cli
from nano_core import plan as plan_mod
from nano_core import settings
from nano_core.recipes import RECIPES


def options(parser):
    return {a.dest: (tuple(a.option_strings), a.default, a.choices, a.nargs, type(a).__name__)
            for a in parser._actions}


@pytest.mark.parametrize("command", ["train", "generate"])
def test_both_entry_points_take_the_same_flags(command, capsys):
    """python -m nano_mlx.X and python -m nano_torch.X, as a user reaches them: the same flags in their --help."""
    flags = {}
    for backend in ("mlx", "torch"):
        main = importlib.import_module(f"nano_{backend}.{command}").main
        with pytest.raises(SystemExit) as stop:
            main(["--help"])
        assert stop.value.code == 0
        flags[backend] = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", capsys.readouterr().out))
    assert flags["mlx"] == flags["torch"] and {"--device", "--help"} <= flags["mlx"]


@pytest.mark.parametrize("build", [cli.build_parser, cli.build_generate_parser])
def test_device_choices_are_each_backends_own(build):
    mlx, torch = options(build("mlx"))["device"], options(build("torch"))["device"]
    assert mlx[2] == ("auto", "gpu", "cpu") and torch[2] == ("auto", "mps", "cuda", "cpu")
    assert mlx[1] == torch[1] == "auto"


def test_train_parser_has_every_documented_flag_in_kebab_case():
    flags = {s for a in cli.build_parser("torch")._actions for s in a.option_strings}
    wanted = ("--preset --config --data --source --out --max-steps --max-time --batch-size --seq-len "
              "--total-batch-tokens --lr --min-lr-frac --warmup-steps --schedule --decay-frac --weight-decay --beta1 "
              "--beta2 --eps --grad-clip --dtype --device --compile --no-compile --eval-every --eval-steps "
              "--sample-every --sample-prompt --sample-tokens --ckpt-every --keep --resume --seed --wandb "
              "--grad-checkpoint --memory-limit --vocab-size --log-every").split()
    assert set(wanted) <= flags
    # the --model.FIELD flags spell the field as ModelConfig (and a --config file) does: --model.n_kv_head
    assert not [f for f in flags if "_" in f and not f.startswith("--model.")]


def test_repeated_source_flags_accumulate_and_data_excludes_source():
    p = cli.build_parser("mlx")
    assert p.parse_args(["--source", "a", "b", "--source", "c"]).source == ["a", "b", "c"]
    with pytest.raises(SystemExit):
        p.parse_args(["--data", "x", "--source", "y"])
    with pytest.raises(SystemExit):
        p.parse_args(["--preset", "tiny", "--config", "c.json"])


def test_explicit_flags_tells_typed_from_default():
    p = cli.build_parser("torch")
    assert cli.explicit_flags(p, ["--lr", "0.1", "--no-compile", "--wandb", "--source", "a"]) == \
        {"lr", "compile", "wandb", "source"}
    assert cli.explicit_flags(p, []) == set()


def test_resume_takes_checkpoint_settings_unless_typed():
    args, typed = cli.parse_train_args("torch", ["--resume", "latest", "--max-steps", "50"])
    saved = {"lr": 0.01, "max_steps": 20, "seed": 3, "log_every": 1, "out": "elsewhere", "device": "mps",
             "a_flag_of_an_older_version": 1}
    resumed = settings.resumed_config(args, saved, typed)
    assert (resumed.lr, resumed.max_steps, resumed.seed, resumed.log_every) == (0.01, 50, 3, 1)
    assert (resumed.out, resumed.device) == (None, "auto")  # session/machine settings are not taken over
    assert (args.lr, args.seed) == (1e-3, 0)  # a new config: the parsed one is never written


def test_grad_accum_from_total_batch_tokens():
    args, _ = cli.parse_train_args("mlx", ["--batch-size", "4", "--total-batch-tokens", "4096"])
    assert plan_mod.grad_accum_steps(args.total_batch_tokens, args.batch_size, 256) == (4096, 4)
    with pytest.raises(ValueError, match="multiple"):
        plan_mod.grad_accum_steps(1000, args.batch_size, 256)


def test_the_parsed_config_cannot_be_written():
    args, _ = cli.parse_train_args("torch", ["--max-steps", "5"])
    for name, value in [("max_steps", 300), ("out", "runs/x"), ("total_batch_tokens", 512), ("warmup_steps", 1)]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(args, name, value)
    assert args.max_steps == 5 and args.out is None


def test_device_dependent_defaults_are_the_devices_recipe(monkeypatch):
    monkeypatch.delenv(settings.MAX_STEPS_ENV, raising=False)
    args, typed = cli.parse_train_args("torch", [])
    args = settings.resolve_defaults(args, "cpu", typed)
    cpu = RECIPES["cpu-10min"]
    assert (args.recipe, args.preset, args.max_steps, args.max_time) == ("cpu-10min", cpu.preset, None, 600.0)
    assert all(getattr(args, k) == v for k, v in cpu.train.items())
    args, typed = cli.parse_train_args("mlx", [])
    args = settings.resolve_defaults(args, "gpu", typed)
    assert (args.recipe, args.preset, args.max_time) == ("mac-1h", RECIPES["mac-1h"].preset, 3600.0)
    # a preset chosen by hand: nano's plain defaults and step budget, no recipe
    args, typed = cli.parse_train_args("torch", ["--preset", "tiny"])
    args = settings.resolve_defaults(args, "cpu", typed)
    assert (args.recipe, args.preset, args.max_steps, args.optimizer) == (None, "tiny", None, "adamw")
    assert plan_mod.default_max_steps("cpu", train_tokens=10_000_000, tokens_per_step=2048) == 300
    args, typed = cli.parse_train_args("torch", ["--recipe", "none"])
    args = settings.resolve_defaults(args, "cpu", typed)
    assert (args.preset, args.optimizer, args.max_time) == ("tiny", "adamw", None)


def test_a_recipe_fills_only_what_is_left_at_the_defaults(monkeypatch):
    monkeypatch.delenv(settings.MAX_STEPS_ENV, raising=False)
    args, typed = cli.parse_train_args("torch", ["--recipe", "cpu-10min", "--optimizer", "adamw", "--max-time", "60",
                                                 "--lr", "1e-3", "--preset", "small"])
    filled = settings.resolve_defaults(args, "cpu", typed)
    assert (filled.optimizer, filled.max_time, filled.lr, filled.preset) == ("adamw", 60.0, 1e-3, "small")  # typed wins
    assert filled.muon_lr == RECIPES["cpu-10min"].train["muon_lr"]  # the rest comes from the recipe
    assert args.muon_lr == cli.TrainConfig().muon_lr  # into a new config: the parsed one is as typed
    # the head's lr belongs to the recipe's untied model: a model the user brings (here the tied `small`) trains
    # its tied table at the recipe's --embed-lr and gets no --head-lr, which build_optimizer would refuse
    assert (filled.embed_lr, filled.head_lr) == (RECIPES["cpu-10min"].train["embed_lr"], None)
    own = settings.resolve_defaults(*cli.parse_train_args("torch", ["--recipe", "cpu-10min"]), "cpu")
    assert (own.preset, own.head_lr) == (RECIPES["cpu-10min"].preset, RECIPES["cpu-10min"].train["head_lr"])
    lora = settings.resolve_defaults(*cli.parse_train_args("torch", ["--recipe", "cpu-10min", "--init-from", "x",
                                                                     "--lora-rank", "4"]), "cpu")
    assert (lora.embed_lr, lora.head_lr) == (None, None)  # a LoRA run trains adapters only: nothing to refuse
    args, typed = cli.parse_train_args("torch", ["--max-steps", "40"])
    args = settings.resolve_defaults(args, "cpu", typed)
    assert (args.max_steps, args.max_time) == (40, None)  # a run with a length keeps it
    monkeypatch.setenv(settings.MAX_STEPS_ENV, "2")
    args, typed = cli.parse_train_args("torch", [])
    args = settings.resolve_defaults(args, "cpu", typed)
    assert args.max_time is None  # tests shrink the no-argument run by steps: the budget stays off
    args, typed = cli.parse_train_args("torch", [])
    args = settings.resolve_defaults(args, "cpu", typed, resuming=True)
    assert args.recipe is None and args.preset is None  # a resumed run keeps what its checkpoint recorded


def test_the_default_step_budget_never_passes_a_small_corpus_more_than_a_few_times(monkeypatch, capsys):
    monkeypatch.delenv(settings.MAX_STEPS_ENV, raising=False)
    steps = plan_mod.default_max_steps("cpu", train_tokens=76_000, tokens_per_step=2048, log=print)
    assert steps == plan_mod.DEFAULT_EPOCHS * 76_000 // 2048 and "passes over 76,000" in capsys.readouterr().out


def test_attn_impl_auto_picks_eager_for_bf16_on_cpu_and_sdpa_otherwise():
    from nano_mlx.backend import pick_attn_impl as mlx_pick
    from nano_torch.backend import pick_attn_impl as torch_pick
    cpu, cuda = "cpu", "cuda"
    assert torch_pick("auto", cpu, "bf16") == "eager"
    assert torch_pick("auto", cpu, "fp32") == "sdpa"
    assert torch_pick("auto", cuda, "bf16") == "sdpa"
    assert torch_pick("eager", cpu, "fp32") == "eager"  # an explicit choice is kept
    assert mlx_pick("auto", None, "fp32") == "sdpa"
    with pytest.raises(ValueError, match="PyTorch/CUDA kernel"):
        mlx_pick("flash", None, "fp32")


def test_sample_next_greedy_top_k_and_top_p_keep_only_the_allowed_tokens():
    import numpy as np

    from nano_core.sampling import sample_next
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    rng = np.random.default_rng(0)
    assert sample_next(logits, 0.0, 0, 1.0, rng) == 0  # temperature 0 is greedy
    assert {sample_next(logits, 1.0, 2, 1.0, rng) for _ in range(200)} == {0, 1}  # top-k 2
    assert {sample_next(logits, 1.0, 0, 0.7, rng) for _ in range(200)} == {0, 1}  # 0.5 + 0.3 reaches 0.7
    assert {sample_next(logits, 1.0, 0, 1.0, rng) for _ in range(2000)} == {0, 1, 2, 3}


def test_unknown_preset_and_missing_config_are_refused_before_any_work(tmp_path, capsys):
    parser = cli.build_parser("torch")
    with pytest.raises(SystemExit):
        parser.parse_args(["--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    args, _ = cli.parse_train_args("mlx", ["--config", str(tmp_path / "missing.json")])
    with pytest.raises(FileNotFoundError, match="missing.json not found"):
        settings.check_config(args)


def test_train_config_is_the_parser_one_field_per_flag_with_the_same_defaults():
    from dataclasses import fields

    parser = cli.build_parser("torch")
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"
               and not a.dest.startswith("model.")}  # the --model.FIELD flags: tests/test_model_flags.py
    flagged = [f for f in fields(cli.TrainConfig) if f.name != "model_overrides"]
    assert set(actions) == {f.name for f in flagged}
    for f in flagged:
        assert actions[f.name].default == f.default, f.name
        assert actions[f.name].option_strings[0] == "--" + f.name.replace("_", "-")
    config, typed = cli.parse_train_args("mlx", ["--lr", "0.01", "--no-compile", "--source", "a", "b"])
    assert isinstance(config, cli.TrainConfig)
    assert (config.lr, config.compile, config.source) == (0.01, False, ["a", "b"])
    assert typed == {"lr", "compile", "source"}
    assert cli.TrainConfig(**config.to_dict()) == config  # what a checkpoint records rebuilds the same config


def epochs_plan(argv, train_tokens, resume_meta=None, log=print):
    config, typed = cli.parse_train_args("torch", argv)
    model_config = settings.requested_model_config(config, 512)
    return plan_mod.make_plan(config, typed, model_config=model_config, lora=None, run_dir="run", data_dir="data",
                              train_tokens=train_tokens, device="cpu", resume_meta=resume_meta, log=log)


@pytest.mark.parametrize("epochs", ["1", "2", "0.5", "7"])
def test_epochs_are_the_steps_that_pass_over_the_training_tokens_that_often(epochs, capsys):
    plan = epochs_plan(["--preset", "tiny", "--batch-size", "4", "--epochs", epochs], train_tokens=100_000)
    per_step = 4 * 256
    assert plan.tokens_per_step == per_step and plan.max_time is None
    # N passes in whole steps: the last step still within them, one more would pass them
    assert plan.max_steps * per_step <= float(epochs) * 100_000 < (plan.max_steps + 1) * per_step
    assert f"--epochs {epochs} = {plan.max_steps:,} steps" in capsys.readouterr().out
    # more passes than the default budget's cap: asked for, so not capped
    assert epochs_plan(["--preset", "tiny", "--epochs", "7"], train_tokens=2048 * 10).max_steps == 70


def test_epochs_exclude_max_steps_and_max_time_and_must_be_positive():
    for other in (["--max-steps", "10"], ["--max-time", "60"]):
        config, _ = cli.parse_train_args("torch", ["--preset", "tiny", "--epochs", "2", *other])
        with pytest.raises(ValueError, match=f"--epochs and {other[0]} each set the length of the run"):
            settings.check_config(config)
    for bad in ("0", "-1", "nan", "inf"):
        config, _ = cli.parse_train_args("torch", ["--preset", "tiny", "--epochs", bad])
        with pytest.raises(ValueError, match="--epochs must be a finite number > 0"):
            settings.check_config(config)


def test_a_resume_keeps_the_steps_its_epochs_planned_unless_a_length_is_typed():
    meta = {"step": 5, "plan": {"max_steps": 40, "total_batch_tokens": 1024, "warmup_steps": 2, "max_time": None},
            "train_config": {"epochs": 2.0}}
    config, typed = cli.parse_train_args("torch", ["--resume", "x", "--max-steps", "60"])
    assert settings.resumed_config(config, meta["train_config"], typed).epochs is None  # replaced by the new length
    assert epochs_plan(["--preset", "tiny", "--batch-size", "4"], 100_000, resume_meta=meta).max_steps == 40
    assert epochs_plan(["--preset", "tiny", "--batch-size", "4", "--epochs", "3"], 100_000,
                       resume_meta=meta).max_steps == 3 * 100_000 // 1024
