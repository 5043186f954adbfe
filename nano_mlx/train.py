"""Train a nano GPT with MLX (Metal GPU or CPU). Mirror of nano_torch/train.py: same flags, same loop, same files.

    python -m nano_mlx.train                        # whole pipeline: data, default preset, eval, sample, checkpoint
    python -m nano_mlx.train --preset tiny --source ../shared/data/fineweb_edu --source ../shared/data/gutenberg
    python -m nano_mlx.train --resume latest --out runs/mlx-tiny-...   # continue exactly where it stopped

Loop: AdamW (decay on >= 2-D weights), global-norm clipping, warmup + cosine/WSD, gradient accumulation from
--total-batch-tokens; eval (loss, perplexity, bits per byte) on fixed val batches, samples with the KV cache,
metrics.jsonl, atomic checkpoints (weights, optimizer, loader, RNG, step) that --resume continues bit for bit.

MLX specifics: the whole step (forward, backward, accumulation, clipping, AdamW) is one mx.compile'd function with
[model.state, optimizer.state, mx.random.state] as inputs and outputs, evaluated with one mx.eval per step; the
loss is read (.item()) only when logging; the learning rate goes in through optimizer.state (no retrace). MLX has
no autocast: --dtype bf16 casts the fp32 master weights to bf16 inside the loss function, so gradients flow back
to the fp32 masters and AdamW updates those.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import math
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map
from tqdm import tqdm

from nano_core.checkpoint import load_checkpoint, save_checkpoint
from nano_core.cli import (Run, StopFlag, build_parser, explicit_flags, prepare_run, run_meta, startup_line,
                           summary_line)
from nano_core.data import ShardLoader, unigram_entropy
from nano_core.host import keep_freed_memory
from nano_core.metrics import (MetricsLogger, init_wandb, mfu, plot_loss_curve, probe_peak_flops,
                               recheck_peak, unigram_val_loss, val_metrics)
from nano_core.schedule import lr_at
from nano_mlx.generate import generate, pick_device
from nano_mlx.model import GPT
from nano_mlx.optim import (build_optimizer, clip_grad_norm, load_optimizer_state_numpy, optimizer_state_numpy,
                            set_lr)

BACKEND = "mlx"
COMPUTE_DTYPES = {"fp32": mx.float32, "bf16": mx.bfloat16}
OPENBLAS_GLOBS = ("/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0", "/usr/lib/*-linux-gnu/libopenblas.so.0",
                  "/usr/lib64/libopenblas.so.0", "/usr/lib/libopenblas.so.0")


# ----------------------------------------------------------------------------- device, dtype, memory
def device_name(device) -> str:
    return "gpu" if device == mx.gpu else "cpu"


def pick_dtype(name: str, device) -> tuple[str, str]:
    """(fp32 | bf16, why). Master weights and optimizer states stay fp32; bf16 is the compute dtype."""
    if name == "auto":
        # bf16 matmuls are fast on Apple GPUs; on a Linux CPU MLX has no bf16 BLAS path, so fp32 there
        return ("bf16", "auto: Metal GPU") if device == mx.gpu else ("fp32", "auto: fp32 on the MLX CPU backend")
    if name == "fp16":
        raise ValueError("--dtype fp16 is not supported by nano_mlx (no loss scaling); use --dtype bf16 or fp32")
    return name, "as asked"


def pick_attn_impl(name: str, device, dtype: str) -> str:
    """auto: the fused mx.fast kernel everywhere (flash is a PyTorch/CUDA kernel: asking for it is an error)."""
    if name == "flash":
        raise ValueError("--attn-impl flash is a PyTorch/CUDA kernel; nano_mlx has sdpa (mx.fast) and eager")
    return "sdpa" if name == "auto" else name


@contextlib.contextmanager
def compute_dtype(model, dtype: str):
    """Run eval/sampling in the training compute dtype, then put the fp32 masters back."""
    if dtype == "fp32":
        yield
        return
    masters = model.parameters()
    model.update(tree_map(lambda p: p.astype(COMPUTE_DTYPES[dtype]), masters))
    try:
        yield
    finally:
        model.update(masters)


def set_memory_limit(gb: float | None, device, log) -> None:
    if device == mx.gpu:
        # Wire the model's working set (no paging mid-step) and bound the buffer cache, as mlx-lm does.
        info = mx.device_info()
        recommended = info.get("max_recommended_working_set_size")
        if recommended:
            mx.set_wired_limit(int(recommended))
            mx.set_cache_limit(int(recommended) // 4)
    if gb is not None:
        mx.set_memory_limit(int(gb * 2**30))


def peak_memory_gb(device) -> float:
    """Peak memory in GiB of this process's MLX allocator (mx.get_peak_memory)."""
    return mx.get_peak_memory() / 2**30


def blas_notice() -> str | None:
    """On Linux the mlx[cpu] wheel links the reference BLAS (~30x slower matmuls than OpenBLAS). Look at what is
    loaded in this process (nothing is timed) and, when an OpenBLAS is installed, say how to preload it. The
    numerics are never changed behind the user's back: this only prints."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libs = {ln.split()[-1] for ln in open("/proc/self/maps") if ".so" in ln}
    except OSError:
        return None
    # numpy's own OpenBLAS (libscipy_openblas64_) uses suffixed symbols that MLX cannot bind to: look for a plain
    # libopenblas, which is what an LD_PRELOAD puts in front of the reference libblas.
    if any(Path(lib).name.startswith("libopenblas") for lib in libs):
        return None
    if not any("libblas" in Path(lib).name for lib in libs):
        return None  # some other BLAS (MKL, BLIS, ...): nothing known to say
    found = [p for g in OPENBLAS_GLOBS for p in sorted(glob.glob(g))]
    if found:
        return (f"notice: MLX's CPU backend runs on the reference BLAS here (~30x slower matmuls); an OpenBLAS is "
                f"installed, preload it: LD_PRELOAD={found[0]} python -m nano_mlx.train ...")
    return ("notice: MLX's CPU backend runs on the reference BLAS here (~30x slower matmuls); install OpenBLAS "
            "(apt-get install libopenblas0-pthread) and preload it with LD_PRELOAD=.../libopenblas.so.0")


@functools.cache
def peak_flops(device: str, dtype: str) -> tuple[float, str]:
    """Measured matmul FLOP/s in the compute dtype (~0.5 s, once per process): the MFU denominator. 1024 on CPU: with
    the reference BLAS of the Linux wheel (~8 GFLOP/s) a 2048 probe alone would take seconds."""
    n = 1024 if device == "cpu" else 4096
    a = mx.full((n, n), 1.0 / n, dtype=COMPUTE_DTYPES[dtype])  # constant data: no RNG draws
    b = mx.full((n, n), 0.5, dtype=COMPUTE_DTYPES[dtype])
    mx.eval(a, b)

    def matmul():
        mx.eval(a @ b)

    return probe_peak_flops(matmul, n), f"measured {n}x{n} {dtype} matmul on mlx {device}"


# ----------------------------------------------------------------------------- RNG state (exact resume)
# MLX exposes no setter for the global key (mx.random.state cannot be assigned), so instead of restoring a saved
# key the loop reseeds before every step from (seed, step): dropout masks are then a pure function of the step,
# and a resumed run draws exactly what the uninterrupted one drew. The key is still saved, for the record.
def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % 2**32


def rng_state(device) -> dict:
    return {"mlx_key": np.array(mx.random.state[0]).tolist(), "scheme": "mx.random.seed(step_seed(seed, step))"}


def set_rng_state(state: dict, device) -> None:
    pass  # nothing to restore: see step_seed


# ----------------------------------------------------------------------------- step, eval, sample
def to_device(batch: np.ndarray, grad_accum: int = 1) -> mx.array:
    """(grad_accum * B, T+1) int32 windows -> one (grad_accum, B, T+1) array (mx.array of the numpy buffer)."""
    return mx.array(batch).reshape(grad_accum, -1, batch.shape[1])


def make_train_step(model, optimizer, grad_accum: int, grad_clip: float, dtype: str, use_compile: bool):
    """step(batch) -> mean loss (lazy). With use_compile the whole step is one compiled graph."""
    cast = COMPUTE_DTYPES[dtype]

    def loss_fn(params, x, y):
        # The model runs on (a bf16 copy of) `params`, so the gradient is taken w.r.t. the fp32 masters.
        model.update(params if cast == mx.float32 else tree_map(lambda p: p.astype(cast), params))
        return model.loss(x, y) / grad_accum

    grad_fn = mx.value_and_grad(loss_fn)

    def step(batch):
        params = model.trainable_parameters()
        total, grads = 0.0, None
        for i in range(grad_accum):  # unrolled: grad_accum is fixed for the run, so the graph shape is too
            loss, g = grad_fn(params, batch[i, :, :-1], batch[i, :, 1:])
            total = total + loss
            grads = g if grads is None else tree_map(mx.add, grads, g)
        model.update(params)  # the fp32 masters back in place of the bf16 copies
        if grad_clip > 0:
            grads, _ = clip_grad_norm(grads, grad_clip)
        optimizer.update(model, grads)
        return total

    if not use_compile:
        return step
    state = [model.state, optimizer.state, mx.random.state]
    return mx.compile(step, inputs=state, outputs=state)


def evaluate(model, data_dir, batch_size: int, seq_len: int, steps: int, dtype: str, token_bytes) -> dict:
    """val loss / perplexity / bits per byte on the first `steps` val batches, in file order (the same every time)."""
    loader = ShardLoader(data_dir, batch_size, seq_len, split="val", shuffle=False)
    model.eval()
    nats, targets = [], []
    with compute_dtype(model, dtype):
        for _ in range(min(steps, max(1, loader.batches_per_epoch))):
            batch = to_device(loader.next_batch())[0]
            x, y = batch[:, :-1], batch[:, 1:]
            logits = model(x)
            nats.append(np.array(nn.losses.cross_entropy(logits.astype(mx.float32), y, reduction="none")))
            targets.append(np.array(y))
    model.train()
    return val_metrics(nats, targets, token_bytes)


def sample_text(model, tok, args, dtype: str) -> str:
    with compute_dtype(model, dtype):
        ids = generate(model, tok.encode(args.sample_prompt), args.sample_tokens, temperature=0.8, top_k=50,
                       top_p=1.0, seed=args.seed, stop_id=tok.eot_id)
    return args.sample_prompt + tok.decode(ids)


# ----------------------------------------------------------------------------- the run
def train(args, typed: set[str], log=print) -> Path:
    device = pick_device(args.device)
    run: Run = prepare_run(args, typed, BACKEND, device_name(device), log)
    cfg, run_dir = run.model_config, run.run_dir
    dtype, dtype_why = pick_dtype(args.dtype, device)
    set_memory_limit(args.memory_limit, device, log)
    keep_freed_memory()  # reuse each step's big buffers instead of page-faulting them in again (Linux)
    use_compile = args.compile is not False  # on unless --no-compile
    if device == mx.cpu and (notice := blas_notice()):
        log(notice)

    mx.random.seed(args.seed)
    model = GPT(cfg, attn_impl=pick_attn_impl(args.attn_impl, device, dtype))
    model.init_weights(seed=args.seed)
    model.grad_checkpoint = args.grad_checkpoint
    model.train()
    optimizer = build_optimizer(model, args.lr, (args.beta1, args.beta2), args.eps, args.weight_decay)
    # One loader batch holds all micro-batches of a step (the window stream does not depend on the batch size, so
    # the loader state is the same whatever the accumulation, and checkpoints move between backends).
    loader = ShardLoader(run.data_dir, args.batch_size * run.grad_accum, cfg.seq_len, split="train", seed=args.seed)
    tok = loader.tokenizer
    token_bytes = tok.token_byte_lengths()

    step = 0
    logger = MetricsLogger(run_dir)
    if run.resume_path is not None:
        weights, opt_state, meta = load_checkpoint(run.resume_path)
        model.load_numpy(weights)
        load_optimizer_state_numpy(optimizer, model, opt_state)
        loader.load_state_dict(meta["loader_state"])
        step = int(meta["step"])
        if meta.get("backend") == BACKEND:
            set_rng_state(meta["rng_state"], device)
        else:
            log(f"notice: checkpoint written by {meta.get('backend')}; its RNG state does not carry over "
                f"(matters only with dropout)")
        logger.truncate_after(step)
        log(f"resuming from {run.resume_path} at step {step}")
    if args.wandb:
        logger.wandb_run = init_wandb("nano", run_dir, vars(args), resume_id=run_dir.name if step else None)
    train_step = make_train_step(model, optimizer, run.grad_accum, args.grad_clip, dtype, use_compile)

    peak, peak_source = peak_flops(device_name(device), dtype)
    remeasure_peak = lambda: peak_flops.__wrapped__(device_name(device), dtype)[0]  # noqa: E731 (uncached probe)
    flops_per_token = cfg.estimate_flops()
    entropy = unigram_entropy(run.data_dir, max_tokens=50_000_000)
    val_bar = unigram_val_loss(run.data_dir)
    log(startup_line(BACKEND, device_name(device), f"{dtype} ({dtype_why})", cfg, cfg.num_params(), loader.tokens,
                     entropy, val_bar, peak, peak_source, run.grad_accum, args.batch_size))
    log(f"run dir: {run_dir}")

    def save(at_step: int, last: dict) -> Path:
        meta = run_meta(run, BACKEND, at_step, loader.state_dict(), rng_state(device), last, device_name(device),
                        dtype)
        return save_checkpoint(run_dir, at_step, model.to_numpy(), optimizer_state_numpy(optimizer, model), meta,
                               keep=args.keep, tokenizer_dir=run.data_dir / "tokenizer")

    def eval_and_sample(at_step: int, do_eval: bool, do_sample: bool, last: dict):
        if do_eval:
            last.update(evaluate(model, run.data_dir, args.batch_size, cfg.seq_len, args.eval_steps, dtype,
                                 token_bytes))
            logger.log({"step": at_step, "val_loss": last["val_loss"], "val_ppl": last["val_ppl"],
                        "val_bpb": last["val_bpb"], "lr": last.get("lr"), "tok_per_s": last.get("tok_per_s"),
                        "mfu": last.get("mfu")})
            tqdm.write(f"step {at_step}: val loss {last['val_loss']:.4f} | ppl {last['val_ppl']:.1f} | "
                       f"bpb {last['val_bpb']:.4f} | unigram on val {val_bar:.4f}")
        if do_sample:
            text = sample_text(model, tok, args, dtype)
            last["sample"] = text
            (run_dir / "samples.txt").open("a").write(f"--- step {at_step}\n{text}\n")
            tqdm.write(f"step {at_step} sample: {text!r}")

    stop = StopFlag()
    last: dict = {}
    bar = tqdm(total=args.max_steps, initial=step, desc=f"train {BACKEND}", unit="step", dynamic_ncols=True,
               mininterval=0.5)
    t_start = t_log = time.time()
    tokens_since_log, interrupted = 0, False
    while step < args.max_steps:
        lr = lr_at(step, args)
        set_lr(optimizer, lr)
        mx.random.seed(step_seed(args.seed, step))
        batch = to_device(loader.next_batch(), run.grad_accum)
        loss = train_step(batch)
        mx.eval(loss, model.state, optimizer.state)  # the one evaluation per step
        step += 1
        tokens_since_log += run.tokens_per_step
        bar.update(1)
        if step % args.log_every == 0 or step == 1 or step == args.max_steps:
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                bar.close()
                raise ValueError(f"loss is {loss_value} at step {step}; lower --lr or raise --warmup-steps")
            now = time.time()
            tok_per_s = tokens_since_log / max(now - t_log, 1e-9)
            t_log, tokens_since_log = now, 0
            peak, remeasure_peak = recheck_peak(peak, flops_per_token, tok_per_s, remeasure_peak)
            last.update(train_loss=loss_value, lr=lr, tok_per_s=tok_per_s, mfu=mfu(flops_per_token, tok_per_s, peak))
            logger.log({"step": step, "train_loss": loss_value, "lr": lr, "tok_per_s": tok_per_s, "mfu": last["mfu"]})
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tok_per_s:,.0f}", mfu=f"{last['mfu']:.1%}")
        done = step == args.max_steps
        out_of_time = args.max_time is not None and time.time() - t_start >= args.max_time
        interrupted = stop.requested
        if interrupted:
            break
        finishing = done or out_of_time
        eval_and_sample(step, (args.eval_every and step % args.eval_every == 0) or finishing,
                        (args.sample_every and step % args.sample_every == 0) or finishing, last)
        if (args.ckpt_every and step % args.ckpt_every == 0) or finishing:
            save(step, last)
        if finishing:
            break
    bar.close()
    stop.restore()
    last["peak_memory_gb"] = peak_memory_gb(device)
    if interrupted:
        path = save(step, last)
        log(f"interrupted: saved {path}; continue with --resume latest --out {run_dir}")
    else:
        log(summary_line(step, last, val_bar, run_dir))
    plot_loss_curve(run_dir, entropy, val_bar, title=f"{BACKEND} {args.preset or args.config} ({dtype})")
    logger.close()
    return run_dir


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(BACKEND)
    args = parser.parse_args(argv)
    try:
        return train(args, explicit_flags(parser, argv))
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
