"""The run configuration and the command lines of `python -m nano_{mlx,torch}.train` and `... .generate`.

`TrainConfig` is the typed run configuration: one dataclass field per train flag, with its group, help text and
argparse options in the field's metadata. It is frozen: what the user asked for is never written after parsing
(the checkpoint's settings on --resume and a recipe's fills make a new one: nano_core/settings.py), and whatever
nano works out from it lives in the run's plan (nano_core/plan.py). `build_parser` generates the parser from it,
so the flags, the config a checkpoint records and the loop's settings are the same names by construction, and the
two backends cannot drift apart: only the `--device` choices differ (mlx: auto|gpu|cpu, torch: auto|mps|cuda|cpu).
One field is many flags: `model_overrides` holds the --model.FIELD flags, one per ModelConfig field
(nano_core/model_flags.py).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields

from nano_core import model_flags
from nano_core.config import PRESETS
from nano_core.recipes import RECIPE_CHOICES
from nano_core.schedule import SCHEDULES

DEVICES = {"mlx": ("auto", "gpu", "cpu"), "torch": ("auto", "mps", "cuda", "cpu")}
NAMES = {"mlx": "MLX", "torch": "PyTorch"}
DTYPES = ("auto", "fp32", "bf16", "fp16")
ATTN_IMPLS = ("auto", "sdpa", "eager", "flash")
TOKENIZERS = ("bpe", "char")

# The no-argument run: which preset on which kind of device, and how many steps (bounded: minutes, not hours).
DEFAULT_PRESET = {"cpu": "tiny", "accelerator": "small"}
DEFAULT_MAX_STEPS = {"cpu": 300, "accelerator": 2000}


def flag(default, group: str, help: str = "", **argparse_kw):
    """A TrainConfig field: its default, the help group it is listed under, and the argparse options it needs."""
    return field(default=default, metadata={"group": group, "help": help, **argparse_kw})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Field name = flag name with '-' for '_'; None = resolved at start-up."""

    # -- model
    preset: str | None = flag(None, "model", f"model preset: {', '.join(PRESETS)} (default: the --recipe's)",
                              choices=list(PRESETS), metavar="PRESET", exclusive="model")
    config: str | None = flag(None, "model", "model config JSON (ModelConfig fields)", metavar="FILE",
                              exclusive="model")
    init_from: str | None = flag(None, "model", "start from trained weights: a nano checkpoint or run dir, or a "
                                 "Hugging Face gpt2/llama/qwen3 directory (config.json + safetensors); a fresh "
                                 "optimizer and schedule, the model's own config and tokenizer", metavar="DIR",
                                 exclusive="model")
    recipe: str | None = flag(None, "model", "a model with the training settings measured best for a time budget "
                              "(nano_core/recipes.py); fills only what is left at nano's defaults. Default: the "
                              "device's recipe when no --preset/--config/--init-from is given; none: plain defaults",
                              choices=list(RECIPE_CHOICES))
    seq_len: int | None = flag(None, "model", "context length (default: the preset's)", type=int)
    grad_checkpoint: bool = flag(False, "model", "recompute each block in backward (less memory)",
                                 action="store_true")
    zero_init_proj: bool = flag(False, "model", "start the residual output projections (attention out, MLP down) at "
                                "zero, so each block starts as the identity (modded-nanogpt); a fresh run only",
                                action="store_true")
    attn_impl: str = flag("auto", "model", "attention kernel; auto: the fastest measured for the device and dtype "
                          "(flash: PyTorch on CUDA with flash-attn installed)", choices=ATTN_IMPLS)
    # not one flag but one per ModelConfig field, --model.FIELD (nano_core/model_flags.py): field -> value
    model_overrides: dict | None = flag(None, model_flags.GROUP, model_fields=True)
    # -- data
    data: str | None = flag(None, "data", "directory of prepared token shards", metavar="SHARD_DIR",
                            exclusive="data")
    source: list[str] | None = flag(None, "data", "text sources to prepare shards from (cached); repeatable. "
                                    "Default: FineWeb-Edu from the hub when reachable, else the builtin text",
                                    nargs="+", action="extend", metavar="SPEC", exclusive="data")
    instruct_data: str | None = flag(None, "data", 'instruction data: a jsonl of {"prompt", "completion"} or '
                                     '{"messages": [...]} rows (nano_core/instruct.py), loss on the answers only; '
                                     "needs --init-from", metavar="JSONL", exclusive="data")
    skip_bad_rows: bool = flag(False, "data", "--instruct-data: skip bad rows (counted in one notice) instead of "
                               "stopping at the first", action="store_true")
    vocab_size: int = flag(8192, "data", "tokenizer vocabulary when preparing --source data", type=int)
    tokenizer: str = flag("bpe", "data", "how --source text becomes tokens: bpe (trained to --vocab-size), or char: "
                          "one id per distinct character of the text (character-level models, e.g. on "
                          "TinyShakespeare)", choices=TOKENIZERS)
    # -- fine-tuning (with --init-from; nano_core/lora.py)
    lora_rank: int | None = flag(None, "fine-tuning", "train rank-R LoRA adapters on a frozen base instead of every "
                                 "weight (a full fine-tune without it)", type=int, metavar="R")
    lora_alpha: float = flag(16.0, "fine-tuning", "LoRA scale = alpha / rank", type=float)
    lora_dropout: float = flag(0.0, "fine-tuning", "dropout on the adapters' input", type=float)
    lora_targets: str = flag("wq,wk,wv,wo,fc,gate,proj", "fine-tuning", "the Linears that get adapters: attention "
                             "wq wk wv wo, MLP fc gate proj (comma-separated)")
    lora_layers: int | None = flag(None, "fine-tuning", "adapters in the last N blocks only (default: all)", type=int,
                                   metavar="N")
    # -- run
    out: str | None = flag(None, "run", "run directory (default: runs/BACKEND-PRESET-TIME)", metavar="RUN_DIR")
    max_steps: int | None = flag(None, "run", f"optimizer steps; the schedule spans them (default: "
                                 f"{DEFAULT_MAX_STEPS['cpu']} on CPU, {DEFAULT_MAX_STEPS['accelerator']} on a GPU)",
                                 type=int)
    max_time: float | None = flag(None, "run", "a time budget for training (evaluations and checkpoints not "
                                  "counted): without --max-steps the schedule is laid out over the steps that fit, "
                                  "measured over the warm-up, and ends annealed at the deadline; with --max-steps it "
                                  "only stops the run early", type=float, metavar="SECONDS")
    epochs: float | None = flag(None, "run", "passes over the training data instead of --max-steps / --max-time: "
                                "the schedule spans N x the training tokens / the tokens per step",
                                type=float, metavar="N")
    resume: str | None = flag(None, "run", 'continue exactly from a checkpoint dir, a run dir, or "latest" in --out',
                              metavar="CKPT")
    overwrite: bool = flag(False, "run", "start fresh in an --out that holds another run: delete its checkpoints, "
                           "metrics and samples first", action="store_true")
    seed: int = flag(0, "run", "seed for the init, the data order and dropout", type=int)
    device: str = flag("auto", "run", "where to run; auto picks the fastest available (default: auto)")
    dtype: str = flag("auto", "run", "auto: bf16 where the hardware is fast at it, else fp32", choices=DTYPES)
    compile: bool | None = flag(None, "run", "compile the step (default: on for MLX, off for PyTorch)",
                                action=argparse.BooleanOptionalAction)
    memory_limit: float | None = flag(None, "run", "cap accelerator memory (ignored, with a notice, on CPU)",
                                      type=float, metavar="GB")
    dist_timeout: float = flag(300.0, "run", "under torchrun / mlx.launch: how long a rank waits for the others to "
                               "start before it gives up with an error", type=float, metavar="SECONDS")
    # -- optimization (the schedule settings are read by nano_core.schedule.lr_at)
    batch_size: int = flag(8, "optimization", "sequences per micro-batch", type=int)
    total_batch_tokens: int | None = flag(None, "optimization", "tokens per optimizer step over all processes; "
                                          "gradient accumulation = this / (batch-size x seq-len x processes) "
                                          "(default: one micro-batch per process)", type=int)
    lr: float = flag(1e-3, "optimization", "peak learning rate", type=float)
    embed_lr: float | None = flag(None, "optimization", "AdamW's peak learning rate for the token and position "
                                  "embeddings (a tied head too); follows the schedule as --lr does (default: --lr)",
                                  type=float)
    head_lr: float | None = flag(None, "optimization", "AdamW's peak learning rate for an untied head (default: --lr)",
                                 type=float)
    min_lr_frac: float = flag(0.1, "optimization", "final learning rate as a fraction of --lr", type=float)
    warmup_steps: int = flag(50, "optimization", "linear warmup steps", type=int)
    schedule: str = flag("cosine", "optimization", "learning-rate schedule", choices=tuple(SCHEDULES))
    decay_frac: float = flag(0.2, "optimization", "wsd: fraction of the steps spent decaying", type=float)
    weight_decay: float = flag(0.1, "optimization", "decoupled decay on weights with >= 2 dims (AdamW's and Muon's)",
                               type=float)
    optimizer: str = flag("adamw", "optimization", "adamw, or muon: Muon on the hidden matrices (attention and MLP "
                          "weights) at --muon-lr, AdamW on the rest at --lr", choices=("adamw", "muon"))
    muon_lr: float = flag(0.02, "optimization", "Muon's peak learning rate (follows the schedule as --lr does)",
                          type=float)
    muon_momentum: float = flag(0.95, "optimization", "Muon's momentum (Nesterov)", type=float)
    muon_ns: str = flag("keller", "optimization", "Muon's orthogonalisation: keller (Keller Jordan's quintic, 5 "
                        "steps) or polar (Polar Express, Amsel et al. 2025: a tuned quintic per step, as nanochat "
                        "and modded-nanogpt)", choices=("keller", "polar"))
    normuon: bool = flag(False, "optimization", "NorMuon (Li et al. 2025, as nanochat): each neuron's Muon update "
                         "divided by the root of an EMA (0.95) of its mean square, the update's norm kept",
                         action="store_true")
    cautious_wd: bool = flag(False, "optimization", "cautious weight decay (Chen et al. 2025, as nanochat): Muon "
                             "decays only the weights its update moves towards zero (same sign); AdamW's parameters "
                             "keep plain decay", action="store_true")
    muon_momentum_warmup: int = flag(0, "optimization", "Muon's momentum rises linearly from 0.85 to "
                                     "--muon-momentum over the first N steps (modded-nanogpt: 300; 0: off)",
                                     type=int, metavar="N")
    beta1: float = flag(0.9, "optimization", type=float)
    beta2: float = flag(0.95, "optimization", type=float)
    eps: float = flag(1e-8, "optimization", type=float)
    grad_clip: float = flag(1.0, "optimization", "global grad-norm clip (0: off)", type=float)
    # -- evaluation and logging
    eval_every: int = flag(100, "evaluation and logging", "validate every N steps (0: only at the end)", type=int)
    eval_steps: int = flag(20, "evaluation and logging", "validation batches per evaluation", type=int)
    sample_every: int = flag(200, "evaluation and logging", "print a sample every N steps (0: only at the end)",
                             type=int)
    sample_prompt: str = flag("The", "evaluation and logging", "prompt for the samples")
    sample_tokens: int = flag(64, "evaluation and logging", "tokens per sample", type=int)
    ckpt_every: int = flag(500, "evaluation and logging", "checkpoint every N steps (and always at the end)",
                           type=int)
    keep: int = flag(3, "evaluation and logging", "keep the last K checkpoints", type=int)
    log_every: int = flag(10, "evaluation and logging", "write a train-loss record every N steps", type=int)
    eval_tasks: str | None = flag(None, "evaluation and logging", "benchmark tasks to run during training, "
                                  "comma-separated: bpb, wikitext2, hellaswag (see python -m nano_core.eval)",
                                  metavar="TASKS")
    eval_tasks_every: int = flag(0, "evaluation and logging", "run --eval-tasks every N steps (0: only at the end)",
                                 type=int)
    eval_limit: int | None = flag(None, "evaluation and logging", "--eval-tasks: the first N hellaswag items / N "
                                  "windows of bpb and wikitext2 (default: all)", type=int)
    wandb: bool = flag(False, "evaluation and logging", "also log to Weights & Biases (needs `pip install wandb`)",
                       action="store_true")

    def to_dict(self) -> dict:
        return asdict(self)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default unless its help already says it, or there is none to show (None/False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _check_backend(backend: str) -> None:
    if backend not in DEVICES:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(DEVICES)}")


def build_parser(backend: str) -> argparse.ArgumentParser:
    """The training CLI, generated from TrainConfig. Every default is the same for both backends."""
    _check_backend(backend)
    p = argparse.ArgumentParser(
        prog=f"python -m nano_{backend}.train",
        description=f"Train a GPT-style language model from scratch with {NAMES[backend]}. With no arguments: "
                    "prepare data, train the default preset for this device, evaluate, sample and checkpoint.",
        formatter_class=HelpFormatter)
    groups: dict[str, argparse._ArgumentGroup] = {}
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        if meta.get("model_fields"):
            model_flags.add_model_flags(p)
            continue
        name = meta.pop("group")
        if name not in groups:
            groups[name] = p.add_argument_group(name)
        group = groups[name]
        if (together := meta.pop("exclusive", None)) is not None:  # e.g. --preset | --config
            if together not in exclusive:
                exclusive[together] = group.add_mutually_exclusive_group()
            group = exclusive[together]
        if f.name == "device":
            meta["choices"] = DEVICES[backend]
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=f.default, **meta)
    return p


def parse_train_args(backend: str, argv) -> tuple[TrainConfig, set[str]]:
    """(config, the fields the user typed): the typed set tells --resume which settings override the checkpoint.
    The --model.FIELD flags are one field, model_overrides ("model_overrides" in the typed set)."""
    parser = build_parser(backend)
    argv = list(argv)
    model_flags.check_flag_names(parser, argv)
    values, typed = model_flags.collect(parser, vars(parser.parse_args(argv)), explicit_flags(parser, argv))
    return TrainConfig(**values), typed


def build_generate_parser(backend: str) -> argparse.ArgumentParser:
    _check_backend(backend)
    p = argparse.ArgumentParser(prog=f"python -m nano_{backend}.generate",
                                description="Sample text from a checkpoint (with the model's KV cache).",
                                formatter_class=HelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint dir, or a run dir (its latest checkpoint)")
    p.add_argument("--prompt", default="The", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=50, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--seed", type=int, default=0, help="sample i (from 0) of --num-samples uses seed + i: it is "
                   "the sample --seed SEED+i gives alone")
    p.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="N samples of the prompt, sampled together as one batch; each printed once done (1: the "
                        "text is streamed as it is sampled)")
    p.add_argument("--device", default="auto", choices=DEVICES[backend],
                   help="where to run; auto picks the fastest available (default: auto)")
    return p


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """Destinations the user actually typed (so --resume can tell overrides from defaults)."""
    probe = argparse.ArgumentParser(add_help=False)
    for a in parser._actions:  # noqa: SLF001  (argparse has no public way to copy its actions)
        if a.option_strings and not isinstance(a, argparse._HelpAction):  # noqa: SLF001
            kw = {"dest": a.dest, "default": argparse.SUPPRESS}
            if isinstance(a, argparse._StoreTrueAction):  # noqa: SLF001
                probe.add_argument(*a.option_strings, action="store_true", **kw)
            elif isinstance(a, argparse.BooleanOptionalAction):
                probe.add_argument(*a.option_strings, action=argparse.BooleanOptionalAction, **kw)
            else:
                probe.add_argument(*a.option_strings, nargs=a.nargs, **kw)
    ns, _ = probe.parse_known_args(argv)
    return set(vars(ns))
