"""benchmarks/peers.py's workers: one peer implementation's training step, as its authors ship it, in this process.

    python benchmarks/peers_workers.py nanogpt PATH/TO/nanoGPT/model.py [--bf16] [--compile]
    python benchmarks/peers_workers.py transformer_lm PATH/TO/mlx-examples/transformer_lm
    (options: --config JSON (n_layer, n_head, n_embd, seq_len, vocab_size), --batch-size, --steps, --warmup)

The peers' code is the user's checkout, imported from the path given; nothing of it lives in this repository.
Each run builds the peer's model at the config given, feeds it one batch of random tokens -- the same seeded batch
benchmarks/step_speed.py feeds nano (numpy default_rng(0), B x (T + 1)) -- runs --warmup untimed steps, then
times each of --steps steps until its loss has been read on the host, and prints one JSON line: tok_s = B * T /
the median step time, the per-step times and losses, what ran (versions, BLAS, the source's path).

nanoGPT (karpathy/nanoGPT): `GPT`, `GPTConfig` and `GPT.configure_optimizers` imported from its model.py (as module
`model`, the name train.py imports it by); the loop is train.py's, with its defaults: GPTConfig(block_size=T,
vocab_size=V, n_layer, n_head, n_embd, dropout=0.0, bias=True), torch.manual_seed(1337),
configure_optimizers(weight_decay=0.1, learning_rate=6e-4, betas=(0.9, 0.95), device_type="cpu"), and per step:
the learning rate set in every param group, `with ctx: logits, loss = model(X, Y)` (one micro-step, so the
division by gradient_accumulation_steps is a division by 1), `loss.backward()`, clip_grad_norm_(params, 1.0),
`optimizer.step()`, `optimizer.zero_grad(set_to_none=True)`, `loss.item()`. train.py's GradScaler is enabled for
float16 only, so for fp32 and bf16 its scale/unscale_/step/update are plain backward/step: this worker calls those.
ctx: train.py uses `nullcontext()` on a CPU whatever its dtype; the bf16 row is `torch.autocast("cpu",
dtype=torch.bfloat16)` -- the autocast train.py's ctx applies on a GPU (torch.amp.autocast(device_type, dtype)),
here on the CPU. --compile wraps the model in torch.compile as train.py's compile=True does (a GPU default; off
here unless asked). Batches are int64 tensors, as train.py's get_batch makes them.

mlx-examples transformer_lm: `TransformerLM` is imported from its main.py (its directory first on sys.path, so
that main.py's `import datasets` finds the example's own datasets.py, which downloads only when called). The
training step lives inside main.py's `main(args)` (a closure over the model and optimizer), so it cannot be
imported: this worker repeats it from main.py's source, these lines of `main(args)`:
    model = TransformerLM(len(vocab), args.num_blocks, args.dim, args.num_heads, args.checkpoint)
    mx.eval(model.parameters())
    def loss_fn(model, x, y, reduce=True): logits = model(x); losses = nn.losses.cross_entropy(logits, y);
        return mx.mean(losses) if reduce else ...
    optimizer = optim.AdamW(learning_rate=args.learning_rate, weight_decay=args.weight_decay)
    state = [model.state, optimizer.state]
    @partial(mx.compile, inputs=state, outputs=state)
    def step(inputs, targets): loss_and_grad_fn = nn.value_and_grad(model, loss_fn);
        loss, grads = loss_and_grad_fn(model, inputs, targets); optimizer.update(model, grads); return loss
    loop: inputs, targets = map(mx.array, (inputs, targets));
        optimizer.learning_rate = min(1, it / args.lr_warmup) * args.learning_rate;
        loss = step(inputs, targets); mx.eval(state); losses.append(loss.item())
with main.py's argparse defaults (learning_rate 3e-4, weight_decay 1e-5, lr_warmup 200, checkpoint off) and its
`mx.set_default_device(mx.cpu)` without --gpu; tokens as numpy uint32, as its datasets.py loads them. Before it
runs, the worker looks for those statements in the main.py given (MAIN_MARKERS) and reports any it does not find
in "differs": a newer main.py may have changed its step, and then this row is not its authors' step any more.
The model is the example's own (sinusoidal positions, pre-norm ReLU MLP, untied output layer with bias), not
GPT-2's: the row measures what the example trains at these sizes.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

# what transformer_lm's step is, in main.py's own words: the worker reproduces these (see the docstring)
MAIN_MARKERS = ("class TransformerLM", "def loss_fn(model, x, y", "nn.losses.cross_entropy(logits, y)",
                "optim.AdamW(", "state = [model.state, optimizer.state]",
                "mx.compile, inputs=state, outputs=state", "nn.value_and_grad(model, loss_fn)",
                "optimizer.update(model, grads)", "mx.eval(state)",
                "optimizer.learning_rate = min(1, it / args.lr_warmup) * args.learning_rate")
NANOGPT = dict(weight_decay=0.1, learning_rate=6e-4, betas=(0.9, 0.95), grad_clip=1.0, seed=1337)  # train.py
TRANSFORMER_LM = dict(learning_rate=3e-4, weight_decay=1e-5, lr_warmup=200, checkpoint=False)  # main.py's argparse


class PeerError(Exception):
    """The path given is not the peer it should be: one line for the user."""


# ----------------------------------------------------------------------------- finding the peers (no imports)
def _classes(path: Path, flag: str) -> dict[str, set[str]]:
    """{class name: its method names} of a Python file, read without running it."""
    try:
        tree = ast.parse(path.read_text(errors="replace"), str(path))
    except (OSError, SyntaxError, ValueError) as e:
        raise PeerError(f"{flag} {path}: cannot be read as Python ({e.__class__.__name__})") from None
    return {n.name: {m.name for m in n.body if isinstance(m, ast.FunctionDef)}
            for n in tree.body if isinstance(n, ast.ClassDef)}


def nanogpt_source(path) -> Path:
    """nanoGPT's model.py: the file given, or model.py in the directory given; it must define GPTConfig and GPT
    with configure_optimizers. PeerError otherwise."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.py"
    if not p.is_file():
        raise PeerError(f"--nanogpt {path}: no such file (give nanoGPT's model.py or the clone's directory)")
    classes = _classes(p, "--nanogpt")
    if "GPTConfig" not in classes or "configure_optimizers" not in classes.get("GPT", ()):
        raise PeerError(f"--nanogpt {path}: no GPT class with configure_optimizers and GPTConfig in {p.name} "
                        "(give nanoGPT's model.py)")
    return p.resolve()


def transformer_lm_source(path) -> Path:
    """mlx-examples' transformer_lm directory (the directory holding its main.py, or main.py itself); its main.py
    must define TransformerLM. PeerError otherwise."""
    p = Path(path).expanduser()
    if p.is_file() and p.name == "main.py":
        p = p.parent
    main = p / "main.py"
    if not main.is_file() or "TransformerLM" not in _classes(main, "--transformer-lm"):
        raise PeerError(f"--transformer-lm {path}: not mlx-examples' transformer_lm directory (no main.py defining "
                        "TransformerLM)")
    return p.resolve()


def _import(path: Path, name: str):
    """The module in `path`, imported under `name` with its directory first on sys.path (its own imports resolve
    to its neighbours, as when its authors' script runs)."""
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the peers' steps
def nanogpt_stepper(path: Path, cfg: dict, batch: np.ndarray, bf16: bool, compile: bool):
    """(step(it) -> loss, runtime): nanoGPT's train.py iteration on its GPT (see the module docstring)."""
    import torch

    model_py = _import(nanogpt_source(path), "model")  # train.py: `from model import GPTConfig, GPT`
    torch.manual_seed(NANOGPT["seed"])
    conf = model_py.GPTConfig(block_size=cfg["seq_len"], vocab_size=cfg["vocab_size"], n_layer=cfg["n_layer"],
                              n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0, bias=True)
    model = model_py.GPT(conf)
    model.to("cpu")
    optimizer = model.configure_optimizers(NANOGPT["weight_decay"], NANOGPT["learning_rate"], NANOGPT["betas"], "cpu")
    if compile:
        model = torch.compile(model)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    t = torch.from_numpy(batch.astype(np.int64))
    X, Y = t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def step(it: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = NANOGPT["learning_rate"]
        with ctx:
            logits, loss = model(X, Y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), NANOGPT["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    runtime = {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
               "autocast": "bf16 (cpu)" if bf16 else None, "compile": compile, "source": str(nanogpt_source(path))}
    return step, runtime


def transformer_lm_stepper(path: Path, cfg: dict, batch: np.ndarray):
    """(step(it) -> loss, runtime): transformer_lm main.py's compiled step, repeated from its source (docstring)."""
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from nano_core.host import loaded_blas

    directory = transformer_lm_source(path)
    text = (directory / "main.py").read_text(errors="replace")
    differs = [m for m in MAIN_MARKERS if m not in " ".join(text.split())]
    main_py = _import(directory / "main.py", "transformer_lm_main")
    mx.set_default_device(mx.cpu)  # main.py without --gpu
    hp = TRANSFORMER_LM
    model = main_py.TransformerLM(cfg["vocab_size"], cfg["n_layer"], cfg["n_embd"], cfg["n_head"], hp["checkpoint"])
    mx.eval(model.parameters())

    def loss_fn(model, x, y, reduce=True):
        logits = model(x)
        losses = nn.losses.cross_entropy(logits, y)
        return mx.mean(losses) if reduce else mx.mean(losses, axis=(-1, -2))

    optimizer = optim.AdamW(learning_rate=hp["learning_rate"], weight_decay=hp["weight_decay"])
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def compiled_step(inputs, targets):
        loss_and_grad_fn = nn.value_and_grad(model, loss_fn)
        loss, grads = loss_and_grad_fn(model, inputs, targets)
        optimizer.update(model, grads)
        return loss

    tokens = batch.astype(np.uint32)
    x_np, y_np = tokens[:, :-1], tokens[:, 1:]

    def step(it: int) -> float:
        inputs, targets = map(mx.array, (x_np, y_np))
        optimizer.learning_rate = min(1, it / hp["lr_warmup"]) * hp["learning_rate"]
        loss = compiled_step(inputs, targets)
        mx.eval(state)
        return loss.item()

    runtime = {"framework": f"mlx {mx.__version__}", "blas": loaded_blas(), "compile": True,
               "source": str(directory / "main.py"), "differs": differs}
    return step, runtime


# ----------------------------------------------------------------------------- timing
def timed(step, batch_size: int, seq_len: int, steps: int, warmup: int) -> dict:
    """Warm-up steps, then each step timed on its own until its loss is on the host."""
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for it in range(warmup):
        step(it)
    warmup_s = time.perf_counter() - t0
    times, losses = [], []
    for it in range(warmup, warmup + steps):
        t = time.perf_counter()
        losses.append(step(it))
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"tok_s": batch_size * seq_len / med, "ms_median": 1000 * med, "step_ms": [1000 * s for s in times],
            "ms_min": 1000 * min(times), "ms_max": 1000 * max(times), "losses": losses, "warmup_steps": warmup,
            "warmup_s": warmup_s, "tokens_per_step": batch_size * seq_len, "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("impl", choices=("nanogpt", "transformer_lm"))
    p.add_argument("path", help="nanoGPT's model.py, or mlx-examples' transformer_lm directory")
    p.add_argument("--config", required=True, help="JSON: n_layer, n_head, n_embd, seq_len, vocab_size")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="nanogpt: torch.autocast('cpu', bfloat16) around the forward")
    p.add_argument("--compile", action="store_true", help="nanogpt: torch.compile(model), as train.py's compile=True")
    args = p.parse_args(argv)
    cfg = json.loads(args.config)
    batch = np.random.default_rng(0).integers(0, cfg["vocab_size"], size=(args.batch_size, cfg["seq_len"] + 1),
                                              dtype=np.int32)  # benchmarks/step_speed.py's batch
    try:
        if args.impl == "nanogpt":
            step, runtime = nanogpt_stepper(args.path, cfg, batch, args.bf16, args.compile)
        else:
            if args.bf16 or args.compile:
                raise PeerError("--bf16 and --compile are nanogpt options (transformer_lm's step is compiled)")
            step, runtime = transformer_lm_stepper(args.path, cfg, batch)
    except PeerError as e:
        sys.exit(f"error: {e}")
    result = timed(step, args.batch_size, cfg["seq_len"], args.steps, args.warmup)
    print(json.dumps({"impl": args.impl, "bf16": args.bf16, "config": cfg, "batch_size": args.batch_size,
                      "runtime": runtime, **result}), flush=True)


if __name__ == "__main__":
    main()
