"""The live objects of one training run and what the loop does with them, step by step.

Trainer builds the model and optimizer on a backend (fresh, from --init-from, or from a checkpoint), and keeps the
loader, the logger and the figures of the last record; it logs train records, evaluates, samples, runs benchmark
tasks, fixes a time budget's horizon (a new plan) and checkpoints. Divergence is caught where the loop reads the
losses (check_finite) and before anything is saved (Trainer.save): nothing non-finite is ever checkpointed.

Names: `config` is the run's TrainConfig, `plan` its Plan (nano_core/plan.py), `model_config` a ModelConfig.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nano_core.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from nano_core.data import ShardLoader
from nano_core.distributed import world_change_notice
from nano_core.eval import run_tasks, summary_metrics
from nano_core.eval_tasks import Scorer
from nano_core.generate import generate
from nano_core.host import keep_freed_memory
from nano_core.init import init_weights
from nano_core.instruct import InstructLoader
from nano_core.metrics import MetricsLogger, NullLogger, init_wandb, mfu, recheck_peak, val_metrics
from nano_core.plan import DEFAULT_EPOCHS
from nano_core.report import unigram_note
from nano_core.run import Run, run_meta
from nano_core.schedule import TimeBudget
from nano_core.settings import eval_settings
from tokenizer import load_tokenizer


# ----------------------------------------------------------------------------- evaluation and samples
def evaluate(backend, model, data_dir, batch_size: int, seq_len: int, steps: int, token_bytes, loader=None) -> dict:
    """val loss / perplexity / bits per byte on the first `steps` val batches, in file order (the same every time).
    `loader`: a val loader of another kind (instruction data: its batches carry a mask, and only the targets it
    counts are scored); default the val shard of `data_dir`."""
    loader = loader or ShardLoader(data_dir, batch_size, seq_len, split="val", shuffle=False)
    nats, targets = [], []
    with backend.inference(model):
        for _ in range(min(steps, max(1, loader.batches_per_epoch))):
            batch, mask = split_batch(loader.next_batch())
            counted = np.ones(batch[:, 1:].shape, bool) if mask is None else mask > 0
            nats.append(backend.token_losses(model, batch)[counted])
            targets.append(batch[:, 1:][counted])
    return val_metrics(nats, targets, token_bytes)


def split_batch(batch) -> tuple[np.ndarray, np.ndarray | None]:
    """(ids, mask): shard loaders give ids alone, instruction loaders (ids, loss mask)."""
    return batch if isinstance(batch, tuple) else (batch, None)


def sample_text(backend, model, tok, prompt: str, max_new_tokens: int, seed: int) -> str:
    ids = generate(backend, model, tok.encode(prompt), max_new_tokens, temperature=0.8, top_k=50, top_p=1.0,
                   seed=seed, stop_id=tok.eot_id)
    return prompt + tok.decode(ids)


# ----------------------------------------------------------------------------- divergence
class Diverged(ValueError):
    """The loss or the gradient norm stopped being finite: nothing from that step on is saved."""


def check_finite(losses: list[tuple[int, float, object]], backend, run_dir: Path) -> float:
    """Read the losses of the steps since the last read (step, lr, loss): one host sync for all of them, at the
    points where the loop syncs anyway (log steps, evaluations, checkpoints). The train step folds the gradient
    norm into its loss (nano_core/backend.py), so a NaN/inf in either shows here, with the exact step."""
    values = [backend.loss_value(loss) for _, _, loss in losses]  # the first call syncs; the rest are ready
    for (step, lr, _), value in zip(losses, values):
        if not math.isfinite(value):
            good = latest_checkpoint(run_dir, notices=[])
            raise Diverged(f"training diverged: loss or gradient norm is {value} at step {step} (lr {lr:.3g}); "
                           f"nothing from that step on was saved. Lower --lr or raise --warmup-steps, then "
                           + (f"continue from the last good checkpoint: --resume {good}" if good else
                              "start again (no checkpoint was written before it)"))
    losses.clear()
    return values[-1]


# ----------------------------------------------------------------------------- the run
class Trainer:
    """The live objects of one run (model, optimizer, loader, logger) and what the loop does with them."""

    def __init__(self, backend, run: Run, log=print):
        self.backend, self.run, self.log = backend, run, log
        config, plan = run.config, run.plan
        keep_freed_memory()  # reuse each step's big buffers instead of page-faulting them in again (Linux)
        for notice in backend.notices() + [backend.set_memory_limit(config.memory_limit)]:
            if notice:
                log(notice)
        self.step, self.last = 0, {}
        self.trained_s = run.trained_s  # training seconds of the run so far (a time budget's clock)
        self.loader = self.make_loader(config.batch_size * plan.grad_accum, "train")
        # The val split is opened now, so a split too short for one window is an error before any training.
        self.make_loader(config.batch_size, "val")
        self.tok = self.loader.tokenizer
        self.token_bytes = self.tok.token_byte_lengths()
        self.rank0 = run.rank == 0  # the one process that logs, evaluates, samples and checkpoints
        self.logger = MetricsLogger(plan.run_dir) if self.rank0 else NullLogger()
        if run.resume_path is not None:
            weights, opt_state, meta = load_checkpoint(run.resume_path, notices=log)
        elif run.init is not None:  # --init-from: trained weights, a fresh optimizer
            weights, opt_state, meta = run.init.weights, None, None
        else:
            weights, opt_state, meta = init_weights(plan.model_config, config.seed, config.zero_init_proj), None, None
        if plan.lora is not None:  # the base is frozen; a LoRA checkpoint holds the adapters alone
            adapters = weights if meta is not None else None
            self.model = backend.build_model(plan.model_config, run.base, grad_checkpoint=config.grad_checkpoint,
                                             lora=plan.lora, adapters=adapters, seed=config.seed)
        else:
            self.model = backend.build_model(plan.model_config, weights, grad_checkpoint=config.grad_checkpoint)
        self.optimizer = backend.build_optimizer(self.model, config.lr, (config.beta1, config.beta2), config.eps,
                                                 config.weight_decay, config.optimizer, config.muon_lr,
                                                 config.muon_momentum, muon_ns=config.muon_ns,
                                                 normuon=config.normuon, cautious_wd=config.cautious_wd,
                                                 embed_lr=config.embed_lr, head_lr=config.head_lr)
        if meta is not None:
            self._resume(opt_state, meta)
        if plan.world_size > 1 and backend.all_max(self.step) != -backend.all_max(-self.step):
            raise ValueError("the processes resumed from different checkpoints (each reads its own disk); copy rank "
                             "0's run dir to every machine, or give every process the same --resume path")
        if config.wandb and self.rank0:
            self.logger.wandb_run = init_wandb("nano", plan.run_dir, config.to_dict(),
                                               resume_id=plan.run_dir.name if self.step else None)
        self.train_step = backend.make_train_step(self.model, self.optimizer, plan.grad_accum, config.grad_clip,
                                                  config.seed)
        self.flops_per_token = plan.model_config.estimate_flops()
        self.peak, self.peak_source = backend.measure_peak_flops()
        self.remeasure_peak = lambda: backend.measure_peak_flops()[0]  # used at most once: recheck_peak
        self.t_log = time.time()

    def make_loader(self, batch_size: int, split: str):
        """Batches of the run's data: shards, or instruction rows (whose batches carry a loss mask)."""
        run, plan, seed = self.run, self.run.plan, self.run.config.seed
        if run.instruct_rows is not None:
            return InstructLoader(run.instruct_rows, load_tokenizer(plan.data_dir / "tokenizer"), batch_size,
                                  plan.model_config.seq_len, split=split, seed=seed)
        ranks = dict(rank=run.rank, world_size=plan.world_size) if split == "train" else {}  # val: rank 0 alone
        return ShardLoader(plan.data_dir, batch_size, plan.model_config.seq_len, split=split, seed=seed,
                           shuffle=split == "train", **ranks)

    def _resume(self, opt_state: dict, meta: dict) -> None:
        self.backend.load_optimizer_state(self.optimizer, self.model, opt_state)
        if self.loader.load_state_dict(meta["loader_state"]):  # written by another number of processes
            self.log(world_change_notice(int(meta.get("world_size", 1)), self.run.plan.world_size))
        self.step = int(meta["step"])
        model_config = self.run.plan.model_config
        if meta.get("backend") != self.backend.name and (model_config.dropout_emb or model_config.dropout_attn
                                                         or model_config.dropout_resid):
            self.log(f"notice: checkpoint written by {meta.get('backend')}; dropout masks come from "
                     f"{self.backend.name}'s generator from here on (same seeds, different draws)")
        self.logger.truncate_after(self.step, notices=self.log)
        self.log(f"resuming from {self.run.resume_path} at step {self.step}")

    def fix_horizon(self, steps: int, per_step: float, budget: TimeBudget, bar) -> None:
        """--max-time: the schedule now spans `steps` (every rank rank 0's estimate), recorded as the plan's
        max_steps, so checkpoints carry it and a resumed run recomputes the same schedule. Called when the budget
        fixes the horizon and again when it revises it (nano_core/schedule.py TimeBudget)."""
        revised = self.run.plan.max_steps is not None
        if self.run.plan.world_size > 1:
            steps = self.backend.all_max(steps if self.rank0 else 0)
        cap = self.run.plan.step_cap
        if cap is not None and steps > max(cap, self.step):  # more would only memorise a small corpus
            if not revised:  # said once
                self.log(f"notice: the budget fits {steps:,} steps, more than {cap:,} ({DEFAULT_EPOCHS} passes over "
                         f"the training data); stopping there, early -- set --max-steps to train longer")
            steps = max(cap, self.step)
        self.run.plan = self.run.plan.with_horizon(steps)
        bar.total = steps
        bar.refresh()
        self.logger.log({"step": self.step, "schedule_steps": steps, "sec_per_step": per_step})
        if self.rank0:
            first, last = budget.measured
            tqdm.write(f"time budget: {per_step:.3g} s/step over steps {first}-{last} -> the schedule "
                       f"{'now ' if revised else ''}spans {steps:,} steps ({budget.seconds:,.0f} s)")

    def log_train(self, loss: float, lr: float, tokens: int, bar) -> None:
        """A train record: loss, lr, tokens/s and MFU since the last record (the device is synced first)."""
        self.backend.sync()
        now = time.time()
        tok_per_s = tokens / max(now - self.t_log, 1e-9)
        self.t_log = now
        self.peak, self.remeasure_peak = recheck_peak(self.peak, self.flops_per_token, tok_per_s, self.remeasure_peak)
        self.last.update(train_loss=loss, lr=lr, tok_per_s=tok_per_s, mfu=mfu(self.flops_per_token, tok_per_s,
                                                                               self.peak))
        self.logger.log({"step": self.step, "train_loss": loss, "lr": lr, "tok_per_s": tok_per_s,
                         "mfu": self.last["mfu"]})
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_per_s:,.0f}", mfu=f"{self.last['mfu']:.1%}")

    def save(self) -> Path:
        """Checkpoint the current step, unless a weight or moment is not finite (then raise: the checkpoints on
        disk stay the last good ones, and retention never deletes them for a bad one)."""
        run = self.run
        weights = (self.backend.adapter_weights(self.model) if run.plan.lora is not None
                   else self.backend.model_weights(self.model))
        state = self.backend.optimizer_state(self.optimizer, self.model)
        bad = [name for name, a in {**weights, **state}.items() if not np.isfinite(a).all()]
        if bad:
            good = latest_checkpoint(run.plan.run_dir, notices=[])
            raise Diverged(f"training diverged: {len(bad)} tensors (e.g. {bad[0]}) are not finite at step "
                           f"{self.step}; not saved. Lower --lr or raise --warmup-steps, then "
                           + (f"continue from the last good checkpoint: --resume {good}" if good else "start again"))
        meta = run_meta(run, self.backend, self.step, self.loader.state_dict(), self.last, self.trained_s)
        return save_checkpoint(run.plan.run_dir, self.step, weights, state, meta, keep=run.config.keep,
                               tokenizer_dir=run.plan.data_dir / "tokenizer", notices=self.log)

    def run_eval_tasks(self) -> None:
        """The --eval-tasks benchmarks (HellaSwag, WikiText-2, bpb) on the current weights, into metrics.jsonl."""
        scorer = Scorer(self.backend, self.model, self.tok, batch_size=max(4, self.run.config.batch_size),
                        progress=False)
        results = run_tasks(scorer, eval_settings(self.run.config), str(self.run.plan.data_dir), log=tqdm.write)
        figures = summary_metrics(results)
        self.last.update(figures)
        self.logger.log({"step": self.step, **figures})
        tqdm.write(f"step {self.step}: " + " | ".join(f"{k} {v:.4f}" for k, v in figures.items()))

    def evaluate_and_sample(self, do_eval: bool, do_sample: bool, val_bar: float) -> None:
        config, plan, step = self.run.config, self.run.plan, self.step
        if do_eval:
            val = self.make_loader(config.batch_size, "val") if self.run.instruct_rows is not None else None
            self.last.update(evaluate(self.backend, self.model, plan.data_dir, config.batch_size,
                                      plan.model_config.seq_len, config.eval_steps, self.token_bytes, val))
            self.logger.log({"step": step, **{k: self.last.get(k) for k in
                                              ("val_loss", "val_ppl", "val_bpb", "lr", "tok_per_s", "mfu")}})
            tqdm.write(f"step {step}: val loss {self.last['val_loss']:.4f} | ppl {self.last['val_ppl']:.1f} | "
                       f"bpb {self.last['val_bpb']:.4f}" + unigram_note(val_bar, " | unigram on val {:.4f}"))
        if do_sample:
            text = sample_text(self.backend, self.model, self.tok, config.sample_prompt, config.sample_tokens,
                               config.seed)
            self.last["sample"] = text
            with open(plan.run_dir / "samples.txt", "a") as f:
                f.write(f"--- step {step}\n{text}\n")
            tqdm.write(f"step {step} sample: {text!r}")
