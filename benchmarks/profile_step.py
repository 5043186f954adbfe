"""Where the training step's time goes: nano's real step, by op (PyTorch) and by part (MLX), at two models.

    python benchmarks/profile_step.py                                     # both backends, both cases
    python benchmarks/profile_step.py --backends torch --cases comparison --dtype fp32 --steps 5
    python benchmarks/profile_step.py --quick --out /tmp/profile          # seconds: a tiny model (a check)

The step is benchmarks/step_speed.py's, which is the training CLI's: nano_<backend>.backend.Backend(device, dtype,
attn_impl="auto", compile=None) and its make_train_step, on one seeded batch of random tokens. Cases:
  comparison  the comparison config (GPT-2 classic: 6 x 384, 6 heads, T=256, V=8192), B=8, AdamW with the CLI's
              defaults (nano_core.cli.TrainConfig)
  cpu-10min   the cpu-10min recipe's model (preset qwen3-3x192) at the recipe's batch (32) with the recipe's
              optimizer settings (Muon on the hidden matrices, AdamW on the rest: nano_core.recipes)
--dtype auto (the default) is what the training CLIs resolve it to: bf16 autocast for PyTorch on a CPU with fast
bf16, fp32 for MLX on a CPU. Each (backend, case) runs in a fresh process of its own (benchmarks/harness.py; OpenBLAS
preloaded for MLX only), which prints one JSON line.

PyTorch: --steps steps timed without the profiler (the reference), then the same number under torch.profiler
(CPU activities). key_averages() gives the top ops by self CPU time (per step). Every event is also put in a
category by its name -- matmul / linear (aten mm/addmm/bmm/linear, oneDNN's linear), attention (the sdpa kernels;
the eager attention path's matmuls count as matmul and its softmax as softmax), softmax / cross-entropy, norm,
elementwise (pointwise maths, reductions), copies / casts (autocast's included), optimizer (everything under
Optimizer.step / zero_grad -- Muon's Newton-Schulz matmuls included -- and the foreach ops of gradient clipping),
other (views, allocation, embedding lookups, the autograd engine's own frames); an op inside a composite op
(aten::rms_norm, aten::linear, aten::cross_entropy_loss, a backward node) counts in the outermost composite's
category -- and in a phase by its ancestors: backward (under the autograd engine), optimizer (and gradient
clipping), forward (the rest). Self CPU time is time on the calling thread inside the op itself, so the categories
add up to the profiled step, less Python between ops; the profiled step is slower than the plain one (both shown).
The top-ops table names ops alone, whatever they run inside (Muon's matmuls show there as matmul).

MLX: the installed mlx has no op-level profiler on the CPU (mx.metal.start_capture traces the Metal GPU only), and
a compiled step is one fused graph, so the step is taken apart and each part timed on its own, each ended by
mx.eval, uncompiled and compiled (mx.compile with the model's and optimizer's state as inputs and outputs, as the
backend compiles its step); --steps repetitions each, the median, after one untimed call (the compilation) -- the
backend's step after --warmup (at least 2: it traces again once the optimizer has its state):
  phases   forward (the loss), forward + backward (value_and_grad of the backend's loss function: backward is the
           difference), optimizer (clip + update on a gradient computed beforehand); beside them the backend's
           real compiled step
  parts    the model's own modules at the model's shapes, forward + backward w.r.t. their weights and input:
           attention (projections, QK-norm, RoPE and the attention kernel), MLP, one norm, and the output layer
           with the cross-entropy; times the number of each in the model
  matmul   the model's FLOPs per step (ModelConfig.estimate_flops x tokens: every matmul, attention's included,
           forward and backward) over the measured matmul peak (Backend.measure_peak_flops): the time the matmuls
           would take at peak -- a lower bound of their share, the rest of the step is everything else
Parts timed alone miss what fusion across them saves and what the step spends between them; "the rest" in the
table is the full step minus the parts, and may be negative.

Output in --out: profile.md (every table), profile_<backend>_<case>.json, logs/; --trace also writes PyTorch's
Chrome trace (trace_torch_<case>.json, large). Figures under load are not worth much (docs/benchmarks.md): the
machine and its load average are recorded.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from harness import ROOT, StepError, child_env, fmt_load, last_json, machine, run_child, save_json, save_text
from nano_core.cli import TrainConfig
from nano_core.config import ModelConfig
from nano_core.host import keep_freed_memory, loaded_blas
from nano_core.init import init_weights
from nano_core.recipes import RECIPES
from step_speed import COMPARE_CONFIG

BACKENDS = ("torch", "mlx")
QUICK = dict(n_layer=1, n_head=2, n_embd=32, seq_len=16, vocab_size=64)


def case_setup(name: str, quick: bool) -> tuple[ModelConfig, int, TrainConfig]:
    """(model config, batch size, training settings) of a case; --quick shrinks the model, not the layout."""
    if name == "comparison":
        cfg, batch, hp = ModelConfig.from_dict(COMPARE_CONFIG), 8, TrainConfig()
    elif name == "cpu-10min":
        recipe = RECIPES["cpu-10min"]
        hp = dataclasses.replace(TrainConfig(), **recipe.train)
        cfg, batch = ModelConfig.from_preset(recipe.preset), hp.batch_size
    else:
        raise ValueError(f"--cases takes comparison and/or cpu-10min, not {name!r}")
    if quick:
        cfg, batch = dataclasses.replace(cfg, **QUICK), 2
    return cfg.validate(), batch, hp


def build(backend_name: str, case: str, dtype: str, quick: bool):
    """The training CLI's backend, model, optimizer and step for a case; the batch; the settings."""
    cfg, batch_size, hp = case_setup(case, quick)
    keep_freed_memory()  # as the training loop does
    backend = importlib.import_module(f"nano_{backend_name}.backend").Backend(device="cpu", dtype=dtype,
                                                                             attn_impl="auto", compile=None)
    model = backend.build_model(cfg, init_weights(cfg, 0))
    opt = backend.build_optimizer(model, hp.lr, (hp.beta1, hp.beta2), hp.eps, hp.weight_decay, hp.optimizer,
                                  hp.muon_lr, hp.muon_momentum, embed_lr=hp.embed_lr, head_lr=hp.head_lr)
    train_step = backend.make_train_step(model, opt, 1, hp.grad_clip, seed=0)
    batch = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(batch_size, cfg.seq_len + 1), dtype=np.int32)
    return cfg, backend, model, opt, train_step, batch, hp


def median_ms(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def note(text: str) -> None:
    """A progress line in the child's log (the parent shows the last one every minute)."""
    print(text, flush=True)


def describe(cfg: ModelConfig, batch_size: int, backend, hp) -> dict:
    return {"config": cfg.to_dict(), "batch_size": batch_size, "tokens_per_step": batch_size * cfg.seq_len,
            "flops_per_token": cfg.estimate_flops(), "dtype": backend.dtype, "attn_impl": backend.attn_impl,
            "compile": backend.compile, "optimizer": hp.optimizer, "lr": hp.lr, "muon_lr": hp.muon_lr}


# ----------------------------------------------------------------------------- PyTorch: torch.profiler
ELEMENTWISE = {"add", "sub", "rsub", "mul", "div", "gelu", "silu", "relu", "threshold", "tanh", "exp", "erf", "pow",
               "rsqrt", "sqrt", "sigmoid", "neg", "where", "masked_fill", "fill", "clamp", "sum", "mean", "cat",
               "square", "abs", "reciprocal", "cos", "sin", "max", "amax", "minimum", "maximum"}
COPIES = {"copy", "to_copy", "clone", "contiguous"}
COMPOSITES = ("attention (sdpa)", "softmax / cross-entropy", "norm", "matmul / linear")  # what an op inside counts as
MATMUL = re.compile(r"(^|::|_)(mm|addmm|bmm|baddbmm|matmul|linear|linear_pointwise|onednn_linear)$")


def torch_phase(event) -> str:
    """backward (under the autograd engine), optimizer (under Optimizer.step / zero_grad) or forward."""
    p = event
    while p is not None:
        if p.name.startswith("Optimizer."):
            return "optimizer"
        if p.name.startswith("autograd::engine::evaluate_function"):
            return "backward"
        p = p.cpu_parent
    return "forward"


def torch_category(name: str, phase: str) -> str:
    n = name.lower()
    if phase == "optimizer" or any(k in n for k in ("_foreach", "adam", "lerp", "addcdiv", "linalg_vector_norm")):
        return "optimizer"
    if any(k in n for k in ("scaled_dot_product", "scaleddotproduct", "flash_attention")):
        return "attention (sdpa)"
    if any(k in n for k in ("softmax", "nll_loss", "nllloss", "cross_entropy", "logsumexp")):
        return "softmax / cross-entropy"
    if "norm" in n:
        return "norm"
    base = n.split("::")[-1].removesuffix("_backward").removesuffix("_backward_data").strip("_")
    if MATMUL.search(base) or "onednn" in n or "mkldnn" in n:
        return "matmul / linear"
    if base in COPIES:
        return "copies / casts"
    if base in ELEMENTWISE:
        return "elementwise"
    return "other"


def torch_event_category(event, phase: str) -> str:
    """An event's category: that of the outermost composite op it runs inside (aten::rms_norm's pow and mean are
    the norm's, aten::linear's mm and copies the linear's, a backward node's ops its forward op's), else its own."""
    own = torch_category(event.name, phase)
    if own == "optimizer":
        return own
    found, p = None, event.cpu_parent
    while p is not None:
        c = torch_category(p.name, phase)
        found = c if c in COMPOSITES else found
        p = p.cpu_parent
    return found or own


def profile_torch(case: str, args) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    cfg, backend, model, opt, train_step, batch, hp = build("torch", case, args.dtype, args.quick)
    counter = iter(range(10**9))

    def step():
        backend.loss_value(train_step(batch, hp.lr, next(counter)))

    plain_ms = median_ms(step, args.steps, args.warmup)
    note(f"step {plain_ms:.0f} ms without the profiler; profiling {args.steps} steps")
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    profiled_ms = 1000 * (time.perf_counter() - t0) / args.steps
    if args.trace:
        prof.export_chrome_trace(str(Path(args.out) / f"trace_torch_{case}.json"))
    per_step = 1000.0 * args.steps  # profiler times are microseconds, totals over all steps: -> ms per step
    categories, phases = {}, {}
    for e in prof.events():
        phase = torch_phase(e)
        cat = torch_event_category(e, phase)
        phase = "optimizer" if cat == "optimizer" and phase == "forward" else phase  # gradient clipping
        categories[cat] = categories.get(cat, 0.0) + e.self_cpu_time_total / per_step
        phases[phase] = phases.get(phase, 0.0) + e.self_cpu_time_total / per_step
    averages = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    total = sum(categories.values())
    top = [{"op": a.key, "self_ms": a.self_cpu_time_total / per_step, "share": a.self_cpu_time_total / per_step / total,
            "calls": a.count / args.steps, "total_ms": a.cpu_time_total / per_step,
            "category": torch_category(a.key, "optimizer" if a.key.startswith("Optimizer.") else "")}
           for a in averages[:args.top]]
    return {"backend": "torch", "case": case, **describe(cfg, batch.shape[0], backend, hp),
            "runtime": f"torch {torch.__version__}, {torch.get_num_threads()} threads", "steps": args.steps,
            "step_ms": plain_ms, "profiled_step_ms": profiled_ms, "self_ms_total": total,
            "categories": dict(sorted(categories.items(), key=lambda kv: -kv[1])), "phases": phases, "top": top}


# ----------------------------------------------------------------------------- MLX: the step taken apart
def profile_mlx(case: str, args) -> dict:
    import mlx.core as mx
    from mlx.utils import tree_map

    from nano_mlx.backend import COMPUTE_DTYPES
    from nano_mlx.kernels import cross_entropy
    from nano_mlx.optim import clip_grad_norm

    cfg, backend, model, opt, train_step, batch, hp = build("mlx", case, args.dtype, args.quick)
    cast = COMPUTE_DTYPES[backend.dtype]
    counter = iter(range(10**9))
    reps, warmup = args.steps, args.warmup
    # at least 2 warm-up steps: the compiled step traces again once the optimizer's state exists (after step 1)
    step_ms = median_ms(lambda: backend.loss_value(train_step(batch, hp.lr, next(counter))), reps, max(warmup, 2))
    note(f"the backend's step: {step_ms:.0f} ms")

    # -- phases: the backend's loss function (make_train_step's), forward / forward + backward / optimizer
    x, y = mx.array(batch[:, :-1]), mx.array(batch[:, 1:])

    def loss_fn(params, x, y):
        model.update(params if cast == mx.float32 else tree_map(lambda p: p.astype(cast), params))
        return model.loss(x, y)

    grad_fn = mx.value_and_grad(loss_fn)

    def forward(x, y):
        masters = model.trainable_parameters()
        loss = loss_fn(masters, x, y)
        model.update(masters)
        return loss

    def forward_backward(x, y):
        masters = model.trainable_parameters()
        loss, grads = grad_fn(masters, x, y)
        model.update(masters)
        return loss, grads

    def optimizer_update(grads):
        grads, norm = clip_grad_norm(grads, hp.grad_clip)
        opt.update(model, grads)
        return norm

    state = [model.state, opt.state, mx.random.state]
    compiled = {f.__name__: mx.compile(f, inputs=state, outputs=state)
                for f in (forward, forward_backward, optimizer_update)}
    _, grads = forward_backward(x, y)
    mx.eval(grads)
    phases = {}
    for label, fns in (("uncompiled", {f.__name__: f for f in (forward, forward_backward, optimizer_update)}),
                       ("compiled", compiled)):
        fwd = median_ms(lambda: mx.eval(fns["forward"](x, y)), reps, 1)
        fwd_bwd = median_ms(lambda: mx.eval(fns["forward_backward"](x, y)), reps, 1)
        upd = median_ms(lambda: mx.eval(fns["optimizer_update"](grads), model.state, opt.state), reps, 1)
        phases[label] = {"forward": fwd, "backward": fwd_bwd - fwd, "optimizer": upd, "sum": fwd_bwd + upd}
        note(f"phases, {label}: forward {fwd:.0f} ms, forward + backward {fwd_bwd:.0f} ms, optimizer {upd:.0f} ms")

    # -- parts: the model's own modules at the model's shapes, forward + backward w.r.t. weights and input
    B, T, d = batch.shape[0], cfg.seq_len, cfg.n_embd
    h = mx.random.normal((B, T, d)).astype(cast)
    rope = (model._rope_cos[:T], model._rope_sin[:T]) if cfg.pos == "rope" else None
    block = model.h[0]
    head = "wte" if model.lm_head is None else "lm_head"  # the output layer's weight: tied or its own
    parts_spec = [("attention", cfg.n_layer, block.attn, None, lambda m, h: m(h, rope, None, 0)),
                  ("MLP", cfg.n_layer, block.mlp, None, lambda m, h: m(h)),
                  ("norm", 2 * cfg.n_layer + 1, block.ln_1, None, lambda m, h: m(h)),
                  ("output layer + cross-entropy", 1, model, {head: {"weight": getattr(model, head).weight}},
                   lambda m, h: cross_entropy(m.head(h).reshape(-1, cfg.vocab_size), y.reshape(-1), None))]
    parts = {}
    for name, count, module, only, call in parts_spec:
        masters = only if only is not None else module.trainable_parameters()  # `only`: just these weights
        if cast != mx.float32:
            module.update(tree_map(lambda p: p.astype(cast), masters))
        params = tree_map(lambda p: p.astype(cast), masters)

        def f(params, h, module=module, call=call, saved=params):
            module.update(params)
            out = call(module, h).astype(mx.float32).sum()
            module.update(saved)
            return out

        vg = mx.value_and_grad(f, argnums=(0, 1))
        cvg = mx.compile(vg)
        row = {"count": count}
        for label, fn in (("uncompiled", vg), ("compiled", cvg)):
            row[label] = median_ms(lambda fn=fn: mx.eval(fn(params, h)), reps, 1)
        module.update(masters)
        parts[name] = row
        note(f"{name}: {row['uncompiled']:.0f} ms uncompiled, {row['compiled']:.0f} ms compiled")

    peak, peak_how = backend.measure_peak_flops()
    tokens = batch.shape[0] * cfg.seq_len
    matmul_ms = 1000 * cfg.estimate_flops() * tokens / peak
    return {"backend": "mlx", "case": case, **describe(cfg, batch.shape[0], backend, hp),
            "runtime": f"mlx {mx.__version__}, {loaded_blas()}", "steps": reps, "step_ms": step_ms,
            "phases": phases, "parts": parts, "optimizer_ms": phases["compiled"]["optimizer"],
            "peak_flops": peak, "peak_how": peak_how, "matmul_at_peak_ms": matmul_ms}


# ----------------------------------------------------------------------------- the report
def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"


def torch_tables(r: dict) -> str:
    head = (f"**torch, {r['case']}** ({r['dtype']}, {r['attn_impl']} attention, {r['optimizer']}, "
            f"B={r['batch_size']}): step {r['step_ms']:.0f} ms unprofiled, {r['profiled_step_ms']:.0f} ms profiled; "
            f"{r['self_ms_total']:.0f} ms of self CPU time per step in ops; {r['runtime']}")
    lines = [head, "", "| category | ms / step | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {pct(v, r['self_ms_total'])} |" for k, v in r["categories"].items()]
    lines += ["", "| phase | ms / step | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {r['phases'].get(k, 0.0):.1f} | {pct(r['phases'].get(k, 0.0), r['self_ms_total'])} |"
              for k in ("forward", "backward", "optimizer")]
    lines += ["", "| op (top by self CPU time) | self ms / step | share | calls / step | category |",
              "|---|---:|---:|---:|---|"]
    lines += [f"| `{t['op']}` | {t['self_ms']:.1f} | {100 * t['share']:.1f}% | {t['calls']:g} | {t['category']} |"
              for t in r["top"]]
    return "\n".join(lines)


def mlx_tables(r: dict) -> str:
    step = r["step_ms"]
    head = (f"**mlx, {r['case']}** ({r['dtype']}, {r['attn_impl']} attention, {r['optimizer']}, "
            f"B={r['batch_size']}): the backend's compiled step {step:.0f} ms; {r['runtime']}")
    lines = [head, "", "| phase | uncompiled ms | compiled ms | compiled share of the step |", "|---|---:|---:|---:|"]
    for k in ("forward", "backward", "optimizer", "sum"):
        u, c = r["phases"]["uncompiled"][k], r["phases"]["compiled"][k]
        lines.append(f"| {k} | {u:.1f} | {c:.1f} | {pct(c, step)} |")
    lines.append(f"| the backend's step (compiled) | | {step:.1f} | 100% |")
    lines += ["", "| part (fwd + bwd, timed alone) | count | uncompiled ms / step | compiled ms / step | "
              "compiled share of the step |", "|---|---:|---:|---:|---:|"]
    total = r["optimizer_ms"]
    for name, p in r["parts"].items():
        u, c = p["uncompiled"] * p["count"], p["compiled"] * p["count"]
        total += c
        lines.append(f"| {name} | {p['count']} | {u:.1f} | {c:.1f} | {pct(c, step)} |")
    lines.append(f"| optimizer (clip + update) | 1 | {r['phases']['uncompiled']['optimizer']:.1f} | "
                 f"{r['optimizer_ms']:.1f} | {pct(r['optimizer_ms'], step)} |")
    lines.append(f"| the rest (step - parts) | | | {step - total:.1f} | {pct(step - total, step)} |")
    lines += ["", f"Matmuls at the measured peak ({r['peak_flops'] / 1e9:.0f} GFLOP/s, {r['peak_how']}): "
              f"{r['matmul_at_peak_ms']:.0f} ms of the {step:.0f} ms step ({pct(r['matmul_at_peak_ms'], step)}), "
              f"a lower bound of the matmul share."]
    return "\n".join(lines)


def child(args) -> None:
    backend, case = args.child
    fn = profile_torch if backend == "torch" else profile_mlx
    result = fn(case, args)
    result["loadavg"] = os.getloadavg()
    print(json.dumps(result), flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="torch,mlx", help="comma-separated: torch, mlx")
    p.add_argument("--cases", default="comparison,cpu-10min", help="comma-separated: comparison, cpu-10min")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="as the training CLI's --dtype (default: auto, what the CLI resolves it to)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (torch: also profiled); MLX: repetitions a part")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=15, help="torch: this many ops in the top table")
    p.add_argument("--trace", action="store_true", help="torch: write the Chrome trace too (large)")
    p.add_argument("--quick", action="store_true", help="a tiny model, 2 steps after 2 warm-up (a check)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per (backend, case)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile_step")
    p.add_argument("--child", nargs=2, metavar=("BACKEND", "CASE"), help=argparse.SUPPRESS)
    return p


def main(argv=None) -> dict | None:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 2, 2
    if args.child:
        return child(args)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not backends or set(backends) - set(BACKENDS) or not cases or set(cases) - {"comparison", "cpu-10min"}:
        sys.exit("error: --backends takes torch and/or mlx, --cases comparison and/or cpu-10min")
    if args.steps < 1 or args.warmup < 0:
        sys.exit("error: --steps takes at least 1, --warmup at least 0")
    args.out.mkdir(parents=True, exist_ok=True)
    load_start, results, failures = os.getloadavg(), [], []
    for case in cases:
        for backend in backends:
            label = f"{backend}-{case}"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", backend, case, "--dtype", args.dtype,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--top", str(args.top),
                   "--out", str(args.out), *(["--quick"] if args.quick else []), *(["--trace"] if args.trace else [])]
            log = args.out / "logs" / f"{label}.log"
            try:
                record = run_child(label, cmd, log, child_env(backend), timeout=args.timeout)
                result = last_json(log.read_text(errors="replace"))
                if result is None:
                    raise StepError(f"{label}: no result line in its output -- see {log}")
            except StepError as e:
                print(f"error: {e}", flush=True)
                failures.append(str(e))
                continue
            result["run"] = record
            save_json(args.out / f"profile_{backend}_{case}.json", result)
            results.append(result)
            print((torch_tables if backend == "torch" else mlx_tables)(result), "\n", flush=True)
    m = machine()
    md = [f"# Where the step's time goes ({time.strftime('%Y-%m-%d')})", "",
          f"machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['platform']}; {m['date']}; load average "
          f"{fmt_load(load_start)} at the start, {fmt_load(os.getloadavg())} at the end", ""]
    for r in results:
        md += [(torch_tables if r["backend"] == "torch" else mlx_tables)(r), ""]
    md += [f"error: {f}" for f in failures]
    save_text(args.out / "profile.md", "\n".join(md))
    print(f"wrote {args.out}/profile.md and {len(results)} JSON file(s)")
    if failures:
        sys.exit(1)
    return {"results": results}


if __name__ == "__main__":
    main()
