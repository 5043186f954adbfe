"""Train a nano GPT with PyTorch (CUDA, MPS or CPU). Mirror of nano_mlx/train.py: same flags, same loop, same files.

    python -m nano_torch.train                      # whole pipeline: data, default preset, eval, sample, checkpoint
    python -m nano_torch.train --preset tiny --source ../shared/data/fineweb_edu --source ../shared/data/gutenberg
    python -m nano_torch.train --resume latest --out runs/torch-tiny-...   # continue exactly where it stopped

Loop: AdamW (decay on >= 2-D weights), global-norm clipping, warmup + cosine/WSD, gradient accumulation from
--total-batch-tokens; eval (loss, perplexity, bits per byte) on fixed val batches, samples with the KV cache,
metrics.jsonl, atomic checkpoints (weights, optimizer, loader, RNG, step) that --resume continues bit for bit.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nano_core.checkpoint import load_checkpoint, save_checkpoint
from nano_core.cli import (Run, StopFlag, build_parser, explicit_flags, prepare_run, run_meta, startup_line,
                           summary_line)
from nano_core.data import ShardLoader, unigram_entropy
from nano_core.host import keep_freed_memory, preloaded_openblas
from nano_core.metrics import (MetricsLogger, init_wandb, mfu, plot_loss_curve, probe_peak_flops,
                               recheck_peak, unigram_val_loss, val_metrics)
from nano_core.schedule import lr_at
from nano_torch.generate import generate, pick_device
from nano_torch.model import GPT, linear
from nano_torch.optim import (build_optimizer, clip_grad_norm, load_optimizer_state_numpy, optimizer_state_numpy,
                              set_lr)

BACKEND = "torch"
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SYNC = {"cuda": lambda: torch.cuda.synchronize(), "mps": lambda: torch.mps.synchronize(), "cpu": lambda: None}


# ----------------------------------------------------------------------------- device, dtype, memory
def cpu_has_fast_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX-512-BF16 or AMX): read from /proc/cpuinfo, nothing is timed."""
    try:
        flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "").split()
    except OSError:  # not Linux
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


FAST_BF16 = {
    "cuda": lambda: torch.cuda.is_bf16_supported(),
    "cpu": cpu_has_fast_bf16,
    "mps": lambda: False,  # works, but measured slower than fp32 on Apple GPUs: opt in with --dtype bf16
}


def pick_dtype(name: str, device: torch.device) -> tuple[str, str]:
    """(fp32 | bf16 | fp16, why). Weights and optimizer states stay fp32; bf16/fp16 mean autocast."""
    if name == "auto":
        fast = FAST_BF16[device.type]()
        return ("bf16", f"auto: {device.type} has fast bf16") if fast else \
            ("fp32", f"auto: no fast bf16 on {device.type}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("--dtype fp16 needs CUDA (loss scaling); use --dtype bf16 or fp32 here")
    return name, "as asked"


def pick_attn_impl(name: str, device: torch.device, dtype: str) -> str:
    """auto: sdpa, except bf16 on a CPU, where the eager path measured about 2x faster per layer than the sdpa CPU
    kernel (Zen 5, fwd+bwd; in fp32 the two are even, and sdpa uses less memory) - see benchmarks/step_speed.py."""
    if name != "auto":
        return name
    return "eager" if (device.type == "cpu" and dtype == "bf16") else "sdpa"


def autocast(device: torch.device, dtype: str):
    # keyed on device.type, so MPS gets MPS autocast (not CPU's) and fp32 gets no autocast at all
    amp = AUTOCAST_DTYPES[dtype]
    return torch.autocast(device_type=device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


def set_memory_limit(gb: float | None, device: torch.device, log) -> None:
    if gb is None:
        return
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gb * 2**30 / total), device)
    elif device.type == "mps":
        torch.mps.set_per_process_memory_fraction(min(2.0, gb * 2**30 / torch.mps.recommended_max_memory()))
    else:
        log(f"notice: --memory-limit is ignored on {device.type}")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory in GiB: the allocator's peak on CUDA; on MPS the driver's current allocation (PyTorch keeps no
    MPS peak); on CPU the process's peak RSS (framework and data included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**30
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def blas_notice() -> str | None:
    """An OpenBLAS preloaded for nano_mlx (LD_PRELOAD) reaches PyTorch's CPU kernels too, and its thread pool
    competes with PyTorch's: the comparison config's fp32 step measured 3.5x slower. This only prints."""
    lib = preloaded_openblas()
    if lib is None:
        return None
    return (f"notice: LD_PRELOAD={lib} is meant for nano_mlx; inside PyTorch it made CPU steps 3.5x slower here "
            f"(two thread pools on the same cores): run nano_torch without it")


@functools.cache
def peak_flops(device_type: str, dtype: str) -> tuple[float, str]:
    """Measured matmul FLOP/s in the training dtype (~0.5 s, once per process): the MFU denominator."""
    n = 2048 if device_type == "cpu" else 4096
    tdtype = AUTOCAST_DTYPES[dtype] or torch.float32
    a = torch.full((n, n), 1.0 / n, dtype=tdtype, device=device_type)  # constant data: no RNG draws
    b = torch.full((n, n), 0.5, dtype=tdtype, device=device_type)

    def matmul():
        linear(a, b)  # the model's own GEMM path (oneDNN for fp32 on x86 CPUs), so MFU compares like with like
        SYNC[device_type]()

    return probe_peak_flops(matmul, n), f"measured {n}x{n} {dtype} matmul, {torch.get_num_threads()} threads"


# ----------------------------------------------------------------------------- RNG state (exact resume)
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state(device: torch.device) -> dict:
    state = {"torch_cpu": _b64(torch.get_rng_state())}
    if device.type == "cuda":
        state["torch_cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    if device.type == "mps":
        state["torch_mps"] = _b64(torch.mps.get_rng_state())
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(_unb64(state["torch_cpu"]))
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["torch_cuda"]])
    if device.type == "mps" and "torch_mps" in state:
        torch.mps.set_rng_state(_unb64(state["torch_mps"]))


# ----------------------------------------------------------------------------- step, eval, sample
def to_device(batch: np.ndarray, device: torch.device, grad_accum: int = 1) -> list:
    """(grad_accum * B, T+1) int32 windows -> grad_accum micro-batches (x, y) of (B, T) on the device."""
    t = torch.from_numpy(batch).to(device, non_blocking=True).long().view(grad_accum, -1, batch.shape[1])
    return [(t[i, :, :-1], t[i, :, 1:]) for i in range(grad_accum)]


def train_step(loss_fn, model, optimizer, micro_batches, ctx, grad_clip: float, scaler):
    """One optimizer step over the micro-batches; returns the mean loss as a 0-d tensor (no sync)."""
    total = 0.0
    for x, y in micro_batches:
        with ctx:
            loss = loss_fn(x, y) / len(micro_batches)
        scaler.scale(loss).backward() if scaler else loss.backward()
        total = total + loss.detach()
    if scaler:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        clip_grad_norm(model, grad_clip)
    scaler.step(optimizer) if scaler else optimizer.step()
    if scaler:
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def evaluate(model, data_dir, batch_size: int, seq_len: int, steps: int, device, ctx, token_bytes) -> dict:
    """val loss / perplexity / bits per byte on the first `steps` val batches, in file order (the same every time)."""
    loader = ShardLoader(data_dir, batch_size, seq_len, split="val", shuffle=False)
    model.eval()
    nats, targets = [], []
    for _ in range(min(steps, max(1, loader.batches_per_epoch))):
        x, y = to_device(loader.next_batch(), device)[0]
        with ctx:
            logits = model(x)
        nats.append(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").cpu().numpy())
        targets.append(y.cpu().numpy())
    model.train()
    return val_metrics(nats, targets, token_bytes)


def sample_text(model, tok, args, ctx) -> str:
    with ctx:
        ids = generate(model, tok.encode(args.sample_prompt), args.sample_tokens, temperature=0.8, top_k=50,
                       top_p=1.0, seed=args.seed, stop_id=tok.eot_id)
    return args.sample_prompt + tok.decode(ids)


# ----------------------------------------------------------------------------- the run
def train(args, typed: set[str], log=print) -> Path:
    device = pick_device(args.device)
    run: Run = prepare_run(args, typed, BACKEND, device.type, log)
    cfg, run_dir = run.model_config, run.run_dir
    dtype, dtype_why = pick_dtype(args.dtype, device)
    ctx = autocast(device, dtype)
    set_memory_limit(args.memory_limit, device, log)
    keep_freed_memory()  # reuse each step's big buffers instead of page-faulting them in again (Linux)
    if device.type == "cpu" and (notice := blas_notice()):
        log(notice)
    use_compile = bool(args.compile)
    if use_compile and device.type == "mps":
        log("notice: torch.compile is a prototype on MPS; running eagerly")
        use_compile = False

    torch.manual_seed(args.seed)
    model = GPT(cfg, attn_impl=pick_attn_impl(args.attn_impl, device, dtype)).to(device)
    model.init_weights(seed=args.seed)
    model.grad_checkpoint = args.grad_checkpoint
    optimizer = build_optimizer(model, args.lr, (args.beta1, args.beta2), args.eps, args.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if dtype == "fp16" else None
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
    loss_fn = torch.compile(model.loss) if use_compile else model.loss

    peak, peak_source = peak_flops(device.type, dtype)
    remeasure_peak = lambda: peak_flops.__wrapped__(device.type, dtype)[0]  # noqa: E731 (uncached probe)
    flops_per_token = cfg.estimate_flops()
    entropy = unigram_entropy(run.data_dir, max_tokens=50_000_000)
    val_bar = unigram_val_loss(run.data_dir)
    log(startup_line(BACKEND, str(device), f"{dtype} ({dtype_why})", cfg, sum(p.numel() for p in model.parameters()),
                     loader.tokens, entropy, val_bar, peak, peak_source, run.grad_accum, args.batch_size))
    log(f"run dir: {run_dir}")

    def save(at_step: int, last: dict) -> Path:
        meta = run_meta(run, BACKEND, at_step, loader.state_dict(), rng_state(device), last, str(device), dtype)
        return save_checkpoint(run_dir, at_step, model.to_numpy(), optimizer_state_numpy(optimizer, model), meta,
                               keep=args.keep, tokenizer_dir=run.data_dir / "tokenizer")

    def eval_and_sample(at_step: int, do_eval: bool, do_sample: bool, last: dict):
        if do_eval:
            last.update(evaluate(model, run.data_dir, args.batch_size, cfg.seq_len, args.eval_steps, device, ctx,
                                 token_bytes))
            logger.log({"step": at_step, "val_loss": last["val_loss"], "val_ppl": last["val_ppl"],
                        "val_bpb": last["val_bpb"], "lr": last.get("lr"), "tok_per_s": last.get("tok_per_s"),
                        "mfu": last.get("mfu")})
            tqdm.write(f"step {at_step}: val loss {last['val_loss']:.4f} | ppl {last['val_ppl']:.1f} | "
                       f"bpb {last['val_bpb']:.4f} | unigram on val {val_bar:.4f}")
        if do_sample:
            text = sample_text(model, tok, args, ctx)
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
        micro = to_device(loader.next_batch(), device, run.grad_accum)
        loss = train_step(loss_fn, model, optimizer, micro, ctx, args.grad_clip, scaler)
        step += 1
        tokens_since_log += run.tokens_per_step
        bar.update(1)
        if step % args.log_every == 0 or step == 1 or step == args.max_steps:
            loss_value = loss.item()  # the one sync per logging interval
            if not math.isfinite(loss_value):
                bar.close()
                raise ValueError(f"loss is {loss_value} at step {step}; lower --lr or raise --warmup-steps")
            SYNC[device.type]()
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
