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

from tqdm import tqdm

from nano_core.checkpoint import load_checkpoint, save_checkpoint
from nano_core.cli import TrainConfig, parse_train_args
from nano_core.data import ShardLoader, unigram_entropy
from nano_core.generate import generate
from nano_core.host import keep_freed_memory
from nano_core.init import init_weights
from nano_core.metrics import (MetricsLogger, format_count, format_flops, init_wandb, mfu, plot_loss_curve,
                               recheck_peak, unigram_val_loss, val_metrics)
from nano_core.run import Run, prepare_run, resolve_resume, run_meta
from nano_core.schedule import lr_at


# ----------------------------------------------------------------------------- evaluation and samples
def evaluate(backend, model, data_dir, batch_size: int, seq_len: int, steps: int, token_bytes) -> dict:
    """val loss / perplexity / bits per byte on the first `steps` val batches, in file order (the same every time)."""
    loader = ShardLoader(data_dir, batch_size, seq_len, split="val", shuffle=False)
    nats, targets = [], []
    with backend.inference(model):
        for _ in range(min(steps, max(1, loader.batches_per_epoch))):
            batch = loader.next_batch()
            nats.append(backend.token_losses(model, batch))
            targets.append(batch[:, 1:])
    return val_metrics(nats, targets, token_bytes)


def sample_text(backend, model, tok, prompt: str, max_new_tokens: int, seed: int) -> str:
    ids = generate(backend, model, tok.encode(prompt), max_new_tokens, temperature=0.8, top_k=50, top_p=1.0,
                   seed=seed, stop_id=tok.eot_id)
    return prompt + tok.decode(ids)


# ----------------------------------------------------------------------------- what the user sees
def startup_line(backend, cfg, params: int, data_tokens: int, entropy: float, val_bar: float, peak: float,
                 peak_source: str, grad_accum: int, batch_size: int) -> str:
    return (f"nano {backend.name} | device {backend.device} | dtype {backend.dtype} ({backend.dtype_why}) | "
            f"params {format_count(params)} | FLOPs/token {format_count(cfg.estimate_flops())} | "
            f"batch {batch_size}x{cfg.seq_len}x{grad_accum} | data {format_count(data_tokens)} train tokens | "
            f"unigram entropy {entropy:.3f} nats/token on train, {val_bar:.3f} on val (the losses to beat) | "
            f"peak {format_flops(peak)}/s ({peak_source})")


def summary_line(step: int, last: dict, val_bar: float, run_dir) -> str:
    """The closing line of a training run, the same for both backends."""
    nan = float("nan")
    return (f"done at step {step}: train loss {last.get('train_loss', nan):.4f}, "
            f"val loss {last.get('val_loss', nan):.4f} (unigram on val {val_bar:.4f}), "
            f"bpb {last.get('val_bpb', nan):.4f}, {last.get('tok_per_s', 0):,.0f} tok/s, MFU {last.get('mfu', 0):.1%}, "
            f"peak memory {last.get('peak_memory_gb', nan):.2f} GB; checkpoint in {run_dir}")


class StopFlag:
    """SIGINT (Ctrl-C) sets a flag that the loop checks between steps: it then checkpoints and exits cleanly.
    A second Ctrl-C interrupts at once (the default handler is back after the first)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def restore(self):
        signal.signal(signal.SIGINT, self._previous)


# ----------------------------------------------------------------------------- the run
class Trainer:
    """The live objects of one run (model, optimizer, loader, logger) and what the loop does with them."""

    def __init__(self, backend, run: Run, log=print):
        self.backend, self.run, self.log = backend, run, log
        config, cfg = run.config, run.model_config
        keep_freed_memory()  # reuse each step's big buffers instead of page-faulting them in again (Linux)
        for notice in backend.notices() + [backend.set_memory_limit(config.memory_limit)]:
            if notice:
                log(notice)
        self.step, self.last = 0, {}
        self.loader = ShardLoader(run.data_dir, config.batch_size * run.grad_accum, cfg.seq_len, split="train",
                                  seed=config.seed)
        self.tok = self.loader.tokenizer
        self.token_bytes = self.tok.token_byte_lengths()
        self.logger = MetricsLogger(run.run_dir)
        weights, opt_state, meta = (load_checkpoint(run.resume_path) if run.resume_path is not None
                                    else (init_weights(cfg, config.seed), None, None))
        self.model = backend.build_model(cfg, weights, grad_checkpoint=config.grad_checkpoint)
        self.optimizer = backend.build_optimizer(self.model, config.lr, (config.beta1, config.beta2), config.eps,
                                                 config.weight_decay)
        if meta is not None:
            self._resume(opt_state, meta)
        if config.wandb:
            self.logger.wandb_run = init_wandb("nano", run.run_dir, config.to_dict(),
                                               resume_id=run.run_dir.name if self.step else None)
        self.train_step = backend.make_train_step(self.model, self.optimizer, run.grad_accum, config.grad_clip,
                                                  config.seed)

    def _resume(self, opt_state: dict, meta: dict) -> None:
        self.backend.load_optimizer_state(self.optimizer, self.model, opt_state)
        self.loader.load_state_dict(meta["loader_state"])
        self.step = int(meta["step"])
        cfg = self.run.model_config
        if meta.get("backend") != self.backend.name and (cfg.dropout_emb or cfg.dropout_attn or cfg.dropout_resid):
            self.log(f"notice: checkpoint written by {meta.get('backend')}; dropout masks come from "
                     f"{self.backend.name}'s generator from here on (same seeds, different draws)")
        self.logger.truncate_after(self.step)
        self.log(f"resuming from {self.run.resume_path} at step {self.step}")

    def save(self) -> Path:
        run = self.run
        meta = run_meta(run, self.backend, self.step, self.loader.state_dict(), self.last)
        return save_checkpoint(run.run_dir, self.step, self.backend.model_weights(self.model),
                               self.backend.optimizer_state(self.optimizer, self.model), meta,
                               keep=run.config.keep, tokenizer_dir=run.data_dir / "tokenizer")

    def evaluate_and_sample(self, do_eval: bool, do_sample: bool, val_bar: float) -> None:
        config, step = self.run.config, self.step
        if do_eval:
            self.last.update(evaluate(self.backend, self.model, self.run.data_dir, config.batch_size,
                                      self.run.model_config.seq_len, config.eval_steps, self.token_bytes))
            self.logger.log({"step": step, **{k: self.last.get(k) for k in
                                              ("val_loss", "val_ppl", "val_bpb", "lr", "tok_per_s", "mfu")}})
            tqdm.write(f"step {step}: val loss {self.last['val_loss']:.4f} | ppl {self.last['val_ppl']:.1f} | "
                       f"bpb {self.last['val_bpb']:.4f} | unigram on val {val_bar:.4f}")
        if do_sample:
            text = sample_text(self.backend, self.model, self.tok, config.sample_prompt, config.sample_tokens,
                               config.seed)
            self.last["sample"] = text
            with open(self.run.run_dir / "samples.txt", "a") as f:
                f.write(f"--- step {step}\n{text}\n")
            tqdm.write(f"step {step} sample: {text!r}")


def train(backend, run: Run, log=print) -> Path:
    """Train `run` on `backend` to run.config.max_steps (or --max-time, or Ctrl-C); returns the run dir."""
    t = Trainer(backend, run, log)
    config, cfg = run.config, run.model_config
    peak, peak_source = backend.measure_peak_flops()
    remeasure_peak = lambda: backend.measure_peak_flops()[0]  # noqa: E731 (used at most once: recheck_peak)
    flops_per_token = cfg.estimate_flops()
    entropy = unigram_entropy(run.data_dir, max_tokens=50_000_000)
    val_bar = unigram_val_loss(run.data_dir)
    log(startup_line(backend, cfg, backend.num_params(t.model), t.loader.tokens, entropy, val_bar, peak, peak_source,
                     run.grad_accum, config.batch_size))
    log(f"run dir: {run.run_dir}")

    stop = StopFlag()
    bar = tqdm(total=config.max_steps, initial=t.step, desc=f"train {backend.name}", unit="step", dynamic_ncols=True,
               mininterval=0.5)
    t_start = t_log = time.time()
    tokens_since_log, interrupted = 0, False
    while t.step < config.max_steps:
        lr = lr_at(t.step, config)
        loss = t.train_step(t.loader.next_batch(), lr, t.step)
        t.step += 1
        tokens_since_log += run.tokens_per_step
        bar.update(1)
        if t.step % config.log_every == 0 or t.step == 1 or t.step == config.max_steps:
            loss_value = backend.loss_value(loss)  # the one sync per logging interval
            if not math.isfinite(loss_value):
                bar.close()
                raise ValueError(f"loss is {loss_value} at step {t.step}; lower --lr or raise --warmup-steps")
            backend.sync()
            now = time.time()
            tok_per_s = tokens_since_log / max(now - t_log, 1e-9)
            t_log, tokens_since_log = now, 0
            peak, remeasure_peak = recheck_peak(peak, flops_per_token, tok_per_s, remeasure_peak)
            t.last.update(train_loss=loss_value, lr=lr, tok_per_s=tok_per_s, mfu=mfu(flops_per_token, tok_per_s, peak))
            t.logger.log({"step": t.step, "train_loss": loss_value, "lr": lr, "tok_per_s": tok_per_s,
                          "mfu": t.last["mfu"]})
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tok_per_s:,.0f}", mfu=f"{t.last['mfu']:.1%}")
        interrupted = stop.requested
        if interrupted:
            break
        out_of_time = config.max_time is not None and time.time() - t_start >= config.max_time
        finishing = t.step == config.max_steps or out_of_time
        t.evaluate_and_sample((config.eval_every and t.step % config.eval_every == 0) or finishing,
                              (config.sample_every and t.step % config.sample_every == 0) or finishing, val_bar)
        if (config.ckpt_every and t.step % config.ckpt_every == 0) or finishing:
            t.save()
        if finishing:
            break
    bar.close()
    stop.restore()
    t.last["peak_memory_gb"] = backend.peak_memory()[0] / 2**30
    if interrupted:
        log(f"interrupted: saved {t.save()}; continue with --resume latest --out {run.run_dir}")
    else:
        log(summary_line(t.step, t.last, val_bar, run.run_dir))
    plot_loss_curve(run.run_dir, entropy, val_bar, title=f"{backend.name} {config.preset or config.config} "
                                                         f"({backend.dtype})")
    t.logger.close()
    return run.run_dir


def run_training(backend_class, config: TrainConfig, typed: set[str] = frozenset(), log=print) -> Path:
    """Resume settings first (a checkpoint's dtype picks the backend's), then the backend, the run, the loop."""
    resume = resolve_resume(config, typed)
    backend = backend_class(device=config.device, dtype=config.dtype, attn_impl=config.attn_impl,
                            compile=config.compile)
    return train(backend, prepare_run(config, backend.name, backend.device, resume, log), log)


def main(backend_class, argv=None) -> Path:
    """`python -m nano_{backend}.train`: parse, run, and turn bad input into one line (exit 1)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    config, typed = parse_train_args(backend_class.name, argv)
    try:
        return run_training(backend_class, config, typed)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
