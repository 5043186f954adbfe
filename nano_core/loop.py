"""The training loop, written once for both backends.

    python -m nano_mlx.train  ...   ==  nano_core.loop.main(nano_mlx.backend.Backend, argv)
    python -m nano_torch.train ...  ==  nano_core.loop.main(nano_torch.backend.Backend, argv)

What happens here: the learning-rate schedule, logging (metrics.jsonl, the progress bar, wandb), evaluation (loss,
perplexity, bits per byte on fixed val batches), samples, checkpoints and exact resume, --max-time, Ctrl-C, the
start-up and closing lines, the loss plot. What the framework does (nano_core/backend.py): build the model and the
optimizer from numpy, run the compiled train step, give per-token losses and next-token logits, report memory.

Loop invariants: one loader batch holds all micro-batches of a step (the window stream does not depend on the
batch size, so the loader state is the same whatever the accumulation, and checkpoints move between backends);
the loss is read (a host sync) only on logging steps; the schedule is a pure function of the step.
"""
from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nano_core.checkpoint import WriteError, latest_checkpoint, load_checkpoint, save_checkpoint
from nano_core.cli import TrainConfig, parse_train_args
from nano_core.data import ShardLoader, unigram_entropy
from nano_core.distributed import (agree_to_stop, launched, lost_peer_cause, lost_peer_message,
                                   quiet_unless_rank0, world_change_notice)
from nano_core.generate import generate
from nano_core.host import keep_freed_memory
from nano_core.init import init_weights
from nano_core.instruct import InstructLoader
from nano_core.metrics import (ASSUMED_MFU, MetricsLogger, NullLogger, format_count, format_flops, init_wandb, mfu,
                               plot_loss_curve, recheck_peak, unigram_val_loss, val_metrics)
from nano_core.eval import Scorer, run_tasks, summary_metrics
from nano_core.plan import DEFAULT_EPOCHS
from nano_core.run import Run, prepare_run, run_meta
from nano_core.settings import eval_settings, resolve_resume
from nano_core.schedule import TimeBudget, lr_at
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


# ----------------------------------------------------------------------------- what the user sees
def startup_line(backend, model_config, params: int, data_tokens: int, entropy: float, val_bar: float, peak: float,
                 peak_source: str, grad_accum: int, batch_size: int) -> str:
    """The first line of a run. The unigram bars are figures of token shards: a run on instruction rows has none,
    and says nothing of them."""
    world = backend.world_size
    bars = (f"unigram entropy {entropy:.3f} nats/token on train, {val_bar:.3f} on val (the losses to beat) | "
            if math.isfinite(entropy) and math.isfinite(val_bar) else "")
    return (f"nano {backend.name} | device {backend.device} | dtype {backend.dtype} ({backend.dtype_why}) | "
            f"params {format_count(params)} | FLOPs/token {format_count(model_config.estimate_flops())} | "
            f"batch {batch_size}x{model_config.seq_len}x{grad_accum}" + (f"x{world} processes" if world > 1 else "")
            + f" | data {format_count(data_tokens)} train tokens | {bars}peak {format_flops(peak)}/s ({peak_source})")


def summary_line(step: int, last: dict, val_bar: float, run_dir) -> str:
    """The closing line of a training run, the same for both backends: the figures the run has, and no others."""
    figures = []
    if "train_loss" in last:
        figures.append(f"train loss {last['train_loss']:.4f}")
    if "val_loss" in last:
        figures.append(f"val loss {last['val_loss']:.4f}" + unigram_note(val_bar, " (unigram on val {:.4f})"))
    if "val_bpb" in last:
        figures.append(f"bpb {last['val_bpb']:.4f}")
    if "tok_per_s" in last:
        figures.append(f"{last['tok_per_s']:,.0f} tok/s, MFU {last.get('mfu', 0):.1%}")
    if "peak_memory_gb" in last:
        figures.append(f"{last.get('memory_label', 'peak memory')} {last['peak_memory_gb']:.2f} GB")
    if last.get("trainable_params", 0) < last.get("total_params", 0):
        figures.append(f"trained {format_count(last['trainable_params'])} of {format_count(last['total_params'])} "
                       f"params")
    return f"done at step {step}: " + ", ".join(figures) + f"; checkpoint in {run_dir}"


def unigram_note(val_bar: float, template: str) -> str:
    """`template` filled with the unigram bar on val, or nothing where the run has none (instruction rows)."""
    return template.format(val_bar) if math.isfinite(val_bar) else ""


def nothing_to_do(step: int, max_steps: int, checkpoint) -> str:
    """What resuming a run that already reached its last step says, instead of a summary of figures it has not
    measured."""
    where = "where its schedule ends" if step == max_steps else f"past --max-steps {max_steps}"
    return (f"nothing to do: the run already reached step {step} ({checkpoint}), {where}; give --max-steps M with "
            f"M > {step} to train longer")


def expected_time(steps: int, tokens_per_step: int, flops_per_token: float, peak: float) -> str:
    """A start-up estimate of the training time from the measured matmul peak at a typical utilisation (the
    evaluations, samples and checkpoints come on top)."""
    seconds = steps * tokens_per_step * flops_per_token / max(peak * ASSUMED_MFU, 1.0)
    when = f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return (f"expect about {when} for {steps:,} steps (an estimate at {ASSUMED_MFU:.0%} of the measured matmul peak; "
            f"the progress bar's ETA is measured)")


class StopFlag:
    """SIGINT (Ctrl-C) and SIGTERM (kill, a job scheduler, a container stop) set a flag that the loop checks between
    steps: it then checkpoints and exits cleanly. A second signal interrupts at once (the previous handlers are
    back after the first)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None  # the name of the signal that asked
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name
        self.restore()

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


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
            weights, opt_state, meta = init_weights(plan.model_config, config.seed), None, None
        if plan.lora is not None:  # the base is frozen; a LoRA checkpoint holds the adapters alone
            adapters = weights if meta is not None else None
            self.model = backend.build_model(plan.model_config, run.base, grad_checkpoint=config.grad_checkpoint,
                                             lora=plan.lora, adapters=adapters, seed=config.seed)
        else:
            self.model = backend.build_model(plan.model_config, weights, grad_checkpoint=config.grad_checkpoint)
        self.optimizer = backend.build_optimizer(self.model, config.lr, (config.beta1, config.beta2), config.eps,
                                                 config.weight_decay, config.optimizer, config.muon_lr,
                                                 config.muon_momentum)
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
        max_steps, so checkpoints carry it and a resumed run recomputes the same schedule."""
        if self.run.plan.world_size > 1:
            steps = self.backend.all_max(steps if self.rank0 else 0)
        cap = self.run.plan.step_cap
        if cap is not None and steps > max(cap, self.step):  # more would only memorise a small corpus
            self.log(f"notice: the budget fits {steps:,} steps, more than {cap:,} ({DEFAULT_EPOCHS} passes over the "
                     f"training data); stopping there, early -- set --max-steps to train longer")
            steps = max(cap, self.step)
        self.run.plan = self.run.plan.with_horizon(steps)
        bar.total = steps
        bar.refresh()
        self.logger.log({"step": self.step, "schedule_steps": steps, "sec_per_step": per_step})
        if self.rank0:
            tqdm.write(f"time budget: {per_step:.3g} s/step over steps {budget.first[0] + 1}-{self.step} -> the "
                       f"schedule spans {steps:,} steps ({budget.seconds:,.0f} s)")

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


def train(backend, run: Run, log=print) -> Path:
    """Train `run` on `backend` to its plan's max_steps (or --max-time, or a signal); returns the run dir.
    Under several processes every rank runs this loop in lockstep (the same steps, the same branches, agreed on
    where a rank could decide alone: nano_core/distributed.py); rank 0 alone logs, evaluates and checkpoints.
    The plan changes once at most, when a time budget fixes the horizon (Trainer.fix_horizon): read it from
    `run.plan` each step."""
    t = Trainer(backend, run, log)
    config, plan = run.config, run.plan
    shards = run.instruct_rows is None and t.rank0  # the unigram bars are figures of token shards
    entropy = unigram_entropy(plan.data_dir, max_tokens=50_000_000) if shards else float("nan")
    val_bar = unigram_val_loss(plan.data_dir) if shards else float("nan")
    log(startup_line(backend, plan.model_config, backend.num_params(t.model), t.loader.tokens, entropy, val_bar,
                     t.peak, t.peak_source, plan.grad_accum, config.batch_size))
    log(f"run dir: {plan.run_dir}")
    # --max-time alone: the schedule's horizon is measured over the warm-up (nano_core/schedule.py, TimeBudget)
    budget = TimeBudget(plan.max_time, plan.warmup_steps, t.step, t.trained_s) if plan.max_steps is None else None
    if budget is None:
        log(expected_time(plan.max_steps - t.step, plan.tokens_per_step, t.flops_per_token, t.peak))
    else:
        log(f"time budget: {plan.max_time:,.0f} s of training (evaluations and checkpoints not counted); the "
            f"schedule is laid out over the steps that fit, measured over steps {budget.clock_from + 1}-{budget.fix_at}")

    stop = StopFlag()
    bar = tqdm(total=plan.max_steps, initial=t.step, desc=f"train {backend.name}", unit="step", dynamic_ncols=True,
               mininterval=0.5, disable=not t.rank0)
    t_start = t.t_log = time.time()
    trained_before = t.trained_s
    paused = 0.0  # seconds spent evaluating, sampling and checkpointing: not training time
    interrupted = False  # a stop every rank agreed on (see agree_to_stop below)
    tokens_since_log, unread = 0, []
    try:
        while run.plan.max_steps is None or t.step < run.plan.max_steps:
            lr = lr_at(t.step, run.plan)
            batch, mask = split_batch(t.loader.next_batch())
            unread.append((t.step + 1, lr, t.train_step(batch, lr, t.step, mask=mask)))
            t.step += 1
            tokens_since_log += plan.tokens_per_step
            bar.update(1)
            if budget is not None and budget.clock_points(t.step):
                backend.sync()  # the clock must see the step done, not queued
            trained = time.time() - t_start - paused
            t.trained_s = trained_before + trained
            if budget is not None and run.plan.max_steps is None and (horizon := budget.observe(t.step, trained)):
                t.fix_horizon(*horizon, budget, bar)
            max_steps = run.plan.max_steps
            log_now = t.step % config.log_every == 0 or t.step == 1 or t.step == max_steps
            limit = plan.max_time if budget is None else budget.limit(fixed=max_steps is not None)
            # rank 0's clock decides (the others' clocks also count their waits while rank 0 evaluates)
            deadline = limit is not None and trained >= limit and t.rank0
            # each process has its own signals: all ranks act on what any of them saw
            # `signalled`, not the live flag, steers what follows: a signal landing after this line waits for the
            # next step, or one rank would leave the loop while the others go on into the next all-reduce
            deadline, signalled = agree_to_stop(backend, deadline, stop.requested is not None)
            if signalled and stop.requested is None:
                stop.requested = "a signal to another process"
            interrupted = signalled
            finishing = t.step == max_steps or deadline
            do_eval = bool(config.eval_every and t.step % config.eval_every == 0) or finishing
            do_tasks = bool(config.eval_tasks) and (finishing or bool(
                config.eval_tasks_every and t.step % config.eval_tasks_every == 0))
            do_sample = bool(config.sample_every and t.step % config.sample_every == 0) or finishing
            do_save = bool(config.ckpt_every and t.step % config.ckpt_every == 0) or finishing or signalled
            if log_now or do_eval or do_tasks or do_sample or do_save:  # losses read only where the loop syncs
                loss_value = check_finite(unread, backend, plan.run_dir)
            if log_now and t.rank0:
                t.log_train(loss_value, lr, tokens_since_log, bar)
                tokens_since_log = 0
            if signalled:
                break
            if t.rank0:  # the other ranks go on to the next step and wait in its all-reduce meanwhile
                t_pause = time.time()
                t.evaluate_and_sample(do_eval, do_sample, val_bar)
                if do_tasks:
                    t.run_eval_tasks()
                if do_save:
                    t.save()
                paused += time.time() - t_pause
            if finishing:
                if deadline and budget is not None and max_steps is None:
                    log(f"notice: the --max-time budget ({plan.max_time:,.0f} s) ran out during the warm-up, at step "
                        f"{t.step}, before the schedule could decay; give more time or fewer --warmup-steps")
                break
    finally:
        bar.close()
        stop.restore()
    t.last["peak_memory_gb"] = backend.peak_memory()[0] / 2**30
    t.last["memory_label"] = backend.memory_label
    t.last["trainable_params"], t.last["total_params"] = backend.num_params(t.model), backend.num_total_params(t.model)
    if not t.rank0:
        return plan.run_dir
    if interrupted:
        log(f"interrupted ({stop.requested}): saved {t.save()}; continue with --resume latest --out {plan.run_dir}")
    else:
        log(summary_line(t.step, t.last, val_bar, plan.run_dir))
    plot_loss_curve(plan.run_dir, entropy, val_bar, title=f"{backend.name} {config.preset or config.config} "
                                                          f"({backend.dtype})")
    t.logger.close()
    return plan.run_dir


def run_training(backend_class, config: TrainConfig, typed: set[str] = frozenset(), log=print) -> Path:
    """Resume settings first (a checkpoint's dtype picks the backend's), then the backend and its processes
    (torchrun / mlx.launch), the run, the loop."""
    log = quiet_unless_rank0(log)
    config, *resume = resolve_resume(config, typed, log)
    backend = backend_class(device=config.device, dtype=config.dtype, attn_impl=config.attn_impl,
                            compile=config.compile)
    rank, world = backend.init_distributed(config.dist_timeout)
    try:
        run = prepare_run(config, backend.name, backend.device, tuple(resume), log, rank, world, backend.barrier,
                          typed, peak_flops=lambda: backend.measure_peak_flops()[0])
        finished = run.plan.max_steps is not None and run.start_step >= run.plan.max_steps
        try:
            if finished:  # resumed at or past its last step: no figures to report, nothing written
                log(nothing_to_do(run.start_step, run.plan.max_steps, run.resume_path))
                run_dir = run.plan.run_dir
            else:
                run_dir = train(backend, run, log)
            backend.barrier()  # rank 0 may still be writing its last checkpoint: nobody leaves before it is done
        except KeyboardInterrupt as e:  # a second signal once training began (the first one's flag is not reached)
            raise StoppedAtOnce(run.plan.run_dir, rank, world) from e
        finally:
            if run.lock is not None:
                run.lock.release()
    except (RuntimeError, KeyboardInterrupt) as e:  # an engine reporting a peer gone: one line, not its traceback
        if world > 1 and (cause := lost_peer_cause(e)) is not None:
            raise LostPeer(lost_peer_message(rank, world, cause)) from None
        raise
    backend.close_distributed()
    return run_dir


class LostPeer(Exception):
    """Another process of a multi-process run stopped answering (it died, or its machine went away)."""


class StoppedAtOnce(KeyboardInterrupt):
    """A signal arrived after the first one had asked for a checkpoint and an exit (Ctrl-C twice; under a launcher,
    its SIGTERM to every rank when one fails): the process stops where it is, with the last checkpoint intact."""

    def __init__(self, run_dir: Path, rank: int, world: int):
        super().__init__(str(run_dir))
        self.run_dir, self.rank, self.world = run_dir, rank, world

    def message(self) -> str:
        said = "interrupted again: stopped at once, without a new checkpoint"
        if self.rank > 0:  # checkpoints are rank 0's, perhaps on another machine: it says where they are
            return f"rank {self.rank} of {self.world}: {said}"
        if latest_checkpoint(self.run_dir, notices=[]) is None:
            return f"{said}; no checkpoint had been written yet: rerun the same command to start again"
        who = f"rank 0 of {self.world}: " if self.world > 1 else ""
        return f"{who}{said}; the last checkpoint is intact: continue with --resume latest --out {self.run_dir}"


def main(backend_class, argv=None) -> Path:
    """`python -m nano_{backend}.train`: parse, run, and turn bad input into one line (exit 1)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    config, typed = parse_train_args(backend_class.name, argv)
    # Until the loop installs its own handlers, SIGTERM stops like Ctrl-C (data preparation resumes on a rerun).
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run_training(backend_class, config, typed)
    except (ValueError, FileNotFoundError, WriteError, LostPeer) as e:  # one line with what and the fix
        fail(f"error: {e}")
    except OSError as e:  # a full disk, a file system gone read-only, a permission taken away mid-run
        where = f" {e.filename}" if e.filename else ""
        fail(f"error: could not write{where}: {e.strerror or e}; the last checkpoint is intact: fix that and "
                 f"--resume latest")
    except StoppedAtOnce as e:
        print(e.message(), file=sys.stderr, flush=True)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted before training started; nothing was lost: rerun the same command to continue (prepared "
              "shards are kept)", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)


def fail(message: str):
    """Exit 1 with a one-line error. Under a launcher the line is printed at once: sys.exit(message) prints only at
    interpreter shutdown, and the SIGTERM that torchrun and mlx.launch send to the other ranks when one fails would
    end the process before that, with the line unsaid."""
    if launched():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's SIGTERM must not cut the line short
        print(message, file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(message)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
