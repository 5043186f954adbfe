"""The training loop, written once for both backends.

    python -m nano_mlx.train  ...   ==  nano_core.loop.main(nano_mlx.backend.Backend, argv)
    python -m nano_torch.train ...  ==  nano_core.loop.main(nano_torch.backend.Backend, argv)

What happens here: the steps, in order (the learning rate from the plan, when to log, evaluate, sample and
checkpoint, --max-time, a signal's stop), and the command around them (main: parse, resume, run, one-line errors).
Where the rest lives: the run's config and plan (nano_core/settings.py, plan.py, run.py), the live objects and
what one step does with them (nano_core/trainer.py), what the user reads (nano_core/report.py), how a run stops
early (nano_core/stopping.py). What the framework does (nano_core/backend.py): build the model and the optimizer
from numpy, run the compiled train step, give per-token losses and next-token logits, report memory.

Loop invariants: one loader batch holds all micro-batches of a step (the window stream does not depend on the
batch size, so the loader state is the same whatever the accumulation, and checkpoints move between backends);
the loss is read (a host sync) only on logging steps; the schedule (and Muon's momentum warm-up) is a pure function
of the step and the plan.

Names: `config` is the run's TrainConfig (what was asked, never written), `plan` its Plan (what nano made of it),
`model_config` a ModelConfig.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from tqdm import tqdm

from nano_core.checkpoint import WriteError
from nano_core.cli import TrainConfig, parse_train_args
from nano_core.data import unigram_entropy
from nano_core.distributed import agree_to_stop, lost_peer_cause, lost_peer_message, quiet_unless_rank0
from nano_core.metrics import plot_loss_curve, unigram_val_loss
from nano_core.muon import momentum_at
from nano_core.report import expected_time, next_steps, nothing_to_do, startup_line, summary_line
from nano_core.run import Run, prepare_run
from nano_core.schedule import TimeBudget, lr_at
from nano_core.settings import resolve_resume
from nano_core.stopping import LostPeer, StopFlag, StoppedAtOnce, fail, raise_interrupt
from nano_core.trainer import Trainer, check_finite, split_batch


def train(backend, run: Run, log=print) -> Path:
    """Train `run` on `backend` to its plan's max_steps (or --max-time, or a signal); returns the run dir.
    Under several processes every rank runs this loop in lockstep (the same steps, the same branches, agreed on
    where a rank could decide alone: nano_core/distributed.py); rank 0 alone logs, evaluates and checkpoints.
    The plan changes only where a time budget fixes its horizon and revises it (Trainer.fix_horizon): read it
    from `run.plan` each step."""
    try:
        t = Trainer(backend, run, log)
    except BaseException:  # the model or the optimizer refused the settings: the start leaves nothing behind
        if run.abandon is not None:
            run.abandon()
        raise
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
            f"schedule is laid out over the steps that fit, measured over steps "
            f"{budget.clock_from + 1}-{budget.fix_at}")

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
            # Muon's momentum, like the lr, is a pure function of the step; it changes only during its warm-up (the
            # optimizer was built with --muon-momentum), so it is pushed only until the warm-up's last step
            if config.optimizer == "muon" and t.step <= config.muon_momentum_warmup:
                backend.set_momentum(t.optimizer, momentum_at(t.step, config.muon_momentum,
                                                              config.muon_momentum_warmup))
            batch, mask = split_batch(t.loader.next_batch())
            unread.append((t.step + 1, lr, t.train_step(batch, lr, t.step, mask=mask)))
            t.step += 1
            tokens_since_log += plan.tokens_per_step
            bar.update(1)
            if budget is not None and budget.clock_points(t.step):
                backend.sync()  # the clock must see the step done, not queued
            trained = time.time() - t_start - paused
            t.trained_s = trained_before + trained
            if budget is not None and (horizon := budget.observe(t.step, trained)):  # fixed, later revised
                t.fix_horizon(*horizon, budget, bar)
                budget.planned(run.plan.max_steps)
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
        log(next_steps(plan.model_config, plan.run_dir, lora=plan.lora is not None))
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


def main(backend_class, argv=None) -> Path:
    """`python -m nano_{backend}.train`: parse, run, and turn bad input into one line (exit 1)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    config, typed = parse_train_args(backend_class.name, argv)
    # Until the loop installs its own handlers, SIGTERM stops like Ctrl-C (data preparation resumes on a rerun).
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
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
