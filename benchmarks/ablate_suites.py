"""The named suites of benchmarks/ablate.py: the studies nano's seed projects ran, each a list of variants (a
ModelConfig dict + train flags), and the figures some of them need besides the training runs (attention time and
KV-cache size for `heads`). Every model is small on purpose: a suite is a comparison at an equal budget on a CPU,
not a result about large models.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


from nano_core.config import ModelConfig


@dataclass
class Variant:
    name: str
    model: dict                                    # ModelConfig fields (written to OUT/configs/NAME.json)
    flags: list[str] = field(default_factory=list)  # train flags; "--max-time S" replaces the suite's step budget
    what: str = ""
    group: str = ""                                # variants compared with each other (a plot/table section)
    seq_len: int | None = None                     # the window suite's context sweep: one variant per T


@dataclass
class Suite:
    what: str
    variants: list[Variant]
    steps: int = 150            # optimizer steps (the equal token budget: steps x batch x seq_len)
    batch_size: int = 4
    seeds: tuple = (0, 1)
    sweep: bool = False         # rows are (variant, T): step time and memory against T, not loss


# Tiny shapes: a quick mode divides nothing, it swaps these for micro ones.
def base(quick: bool, vocab: int, **kw) -> dict:
    shape = dict(n_layer=1, n_head=2, n_embd=32, seq_len=32) if quick else \
        dict(n_layer=2, n_head=4, n_embd=64, seq_len=128)
    return {"vocab_size": vocab, **shape, "mlp": "gelu", "norm": "layernorm", "bias": True, "pos": "rope", **kw}


def positions(quick: bool, vocab: int) -> Suite:
    sinusoidal = base(quick, vocab, pos="sinusoidal")
    sinusoidal["emb_scale"] = 50.0  # 1 / the init's std 0.02: the embeddings at RMS 1 beside the table's 0.71
    v = [Variant("rope", base(quick, vocab), what="RoPE on every head dim"),
         Variant("rope-0.5", base(quick, vocab, rope_pct=0.5), what="partial RoPE: half the head dims rotated"),
         Variant("rope-0.25", base(quick, vocab, rope_pct=0.25), what="partial RoPE: a quarter (GPT-NeoX's default)"),
         Variant("learned", base(quick, vocab, pos="learned"), what="a learned position table (GPT-2)"),
         # a new name, not "sinusoidal": an older OUT/results/sinusoidal-s*.json (unscaled) is not reused
         Variant("sinusoidal-x50", sinusoidal,
                 what="fixed sinusoids added to the token embeddings x 50 (at RMS 1, as Vaswani et al.'s)"),
         Variant("sinusoidal-unscaled", {**sinusoidal, "emb_scale": 1.0},
                 what="fixed sinusoids added to the unscaled token embeddings (std 0.02: drowned by the table)"),
         Variant("none", base(quick, vocab, pos="none"), what="no positions (the causal mask alone)")]
    return Suite("RoPE vs learned vs sinusoidal (embeddings x 50, and unscaled) vs none, and partial RoPE", v)


def heads(quick: bool, vocab: int) -> Suite:
    n = base(quick, vocab, n_head=4) if quick else base(quick, vocab, n_head=8)
    v = [Variant("mha", n, what=f"{n['n_head']} query heads, {n['n_head']} kv heads"),
         Variant("gqa", {**n, "n_kv_head": 2}, what=f"{n['n_head']} query heads share 2 kv heads"),
         Variant("mqa", {**n, "n_kv_head": 1}, what=f"{n['n_head']} query heads share 1 kv head")]
    return Suite("MHA vs GQA vs MQA: loss at equal steps, attention time, KV-cache size", v, seeds=(0,))


def window(quick: bool, vocab: int) -> Suite:
    lengths = (32, 64, 128) if quick else (256, 512, 1024, 2048, 4096)
    w = 16 if quick else 128
    v = []
    for t in lengths:
        m = base(quick, vocab, seq_len=t)
        v += [Variant(f"full-sdpa-T{t}", m, ["--attn-impl", "sdpa"], "full attention, fused kernel", "full-sdpa", t),
              Variant(f"full-eager-T{t}", m, ["--attn-impl", "eager"], "full attention, T x T scores",
                      "full-eager", t),
              Variant(f"window{w}-T{t}", {**m, "window": w}, ["--attn-impl", "sdpa"],
                      f"sliding window {w}, banded (O(T*w))", f"window{w}", t)]
    return Suite(f"sliding window ({w}) vs full attention as the context grows", v, steps=4 if quick else 16,
                 batch_size=1, seeds=(0,), sweep=True)


def rnn_width(target: int, model: dict) -> int:
    """The Elman RNN width (a multiple of 8) whose parameter count is nearest `target`."""
    def count(d):
        return ModelConfig(**{**model, "arch": "rnn", "pos": "none", "n_embd": d, "n_head": 1}).num_params()
    return min(range(8, 1025, 8), key=lambda d: abs(count(d) - target))


def rnn(quick: bool, vocab: int) -> Suite:
    gpt = base(quick, vocab)
    d = rnn_width(ModelConfig(**gpt).num_params(), gpt)
    r = {**gpt, "arch": "rnn", "pos": "none", "n_embd": d, "n_head": 1}
    seconds = "6" if quick else "30"
    v = [Variant("transformer", gpt, what="the transformer", group="equal tokens"),
         Variant("rnn-tanh", r, what=f"Elman RNN, tanh, width {d}: the transformer's parameters",
                 group="equal tokens"),
         Variant("rnn-slide", {**r, "rnn_act": "slide"}, what=f"Elman RNN, slide = clip(a, 0, 1), width {d}",
                 group="equal tokens"),
         Variant(f"transformer-{seconds}s", gpt, ["--max-time", seconds], what=f"{seconds} s of training",
                 group="equal time"),
         Variant(f"rnn-tanh-{seconds}s", r, ["--max-time", seconds], what=f"{seconds} s of training",
                 group="equal time")]
    return Suite("Elman RNN (tanh, slide) vs a transformer at equal parameters and at equal time", v, seeds=(0,))


def schedules(quick: bool, vocab: int) -> Suite:
    m = base(quick, vocab)
    warm = ["--warmup-steps", "3" if quick else "30", "--lr", "3e-3"]
    v = [Variant("cosine", m, warm + ["--schedule", "cosine"], "cosine to 10% (nano's default)", "schedule"),
         Variant("wsd", m, warm + ["--schedule", "wsd", "--decay-frac", "0.2"], "warm-up, stable, last 20% decay",
                 "schedule"),
         Variant("linear", m, warm + ["--schedule", "linear"], "warm-up then linear decay to 10% (Transformers' "
                 "default shape)", "schedule"),
         Variant("constant", m, warm + ["--schedule", "constant"], "warm-up then constant", "schedule"),
         Variant("muon", m, warm + ["--optimizer", "muon"], "Muon on the hidden matrices, AdamW elsewhere; "
                 "cosine (`cosine` is its AdamW twin)", "optimizer")]
    return Suite("cosine vs WSD vs linear vs constant; AdamW vs Muon", v,
                 seeds=(0,))


SUITES = {"positions": positions, "heads": heads, "window": window, "rnn": rnn, "schedules": schedules}


# ----------------------------------------------------------------------------- figures besides training
def kv_cache_bytes(model: dict, bytes_per: int = 4) -> int:
    """KV cache of one sequence at the full context: k and v per layer, kv_heads x head_dim per position."""
    cfg = ModelConfig(**model)
    return 2 * cfg.n_layer * cfg.kv_heads * cfg.head_dim * cfg.seq_len * bytes_per


def attention_ms(model: dict, batch_size: int, reps: int = 30) -> float:
    """Fastest of `reps` timings, in ms, of nano_torch's Attention module (block 0, fp32, CPU, one thread) forward +
    backward on a random batch. The minimum and one thread, because the machine is shared: another process on a
    core stalls a two-thread op and inflates a median, while the fastest run is the kernel's own cost."""
    import torch

    from nano_core.init import init_weights
    from nano_torch.backend import Backend

    cfg = ModelConfig(**model)
    net = Backend(device="cpu", dtype="fp32").build_model(cfg, init_weights(cfg, 0))
    attn = net.h[0].attn
    x = torch.randn(batch_size, cfg.seq_len, cfg.n_embd, requires_grad=True)
    rope = (net.rope_cos[:cfg.seq_len], net.rope_sin[:cfg.seq_len]) if cfg.pos == "rope" else None
    # Warm up for a second, not a few calls: the first variant a process times otherwise pays for the thread
    # pool and allocator settling, and the order of the variants would show in their figures.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    while time.perf_counter() - start < 1.0:
        attn(x, rope, None, 0).sum().backward()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        attn(x, rope, None, 0).sum().backward()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.set_num_threads(threads)
    return float(min(times))


def extras(suite: str, variant: Variant, batch_size: int) -> dict:
    """The figures a suite reports besides its training runs (none for most)."""
    if suite != "heads":
        return {}
    return {"kv_cache_kib": kv_cache_bytes(variant.model) / 1024,
            "attn_ms": attention_ms(variant.model, batch_size)}
