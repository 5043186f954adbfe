"""Data pipeline throughput: prepare (text -> shards, MB/s) and ShardLoader (tokens/s delivered).

    python benchmarks/data.py [--vocab-size 8192] [--novels 8] [--workers 2] [--step-tok-s N] [--json PATH]

Corpus: the FineWeb-Edu sample (jsonl) + the first --novels Gutenberg novels from ../shared/data. The tokenizer is
trained once (timed separately); prepare is then timed with that tokenizer, so the figure is encoding + sharding.
The loader must outrun training by a wide margin (the target: >= 100x what a `tiny` model step consumes): the
ratio is computed against a measured PyTorch tiny-model step when nano_torch is importable, else --step-tok-s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from nano_core.data import ShardLoader
from nano_core.prepare import prepare
from harness import ROOT, machine, save_json
from tokenizer import BPETokenizer

SHARED = ROOT.parent / "shared" / "data"


def corpus(novels: int) -> list[Path]:
    files = [SHARED / "fineweb_edu" / "sample-10BT-281docs.jsonl"]
    files += sorted((SHARED / "gutenberg").glob("*.txt"))[:novels]
    missing = [f for f in files if not f.is_file()]
    if missing:
        sys.exit(f"error: {missing[0]} not found; the shared data must sit at {SHARED}")
    return files


def bench_prepare(files, tok_dir: Path, work: Path, workers: int) -> dict:
    out = work / f"shards-w{workers}"
    t0 = time.perf_counter()
    m = prepare(files, out, tokenizer=tok_dir, shard_tokens=2_000_000, val_tokens=100_000, num_workers=workers,
                progress=False)
    secs = time.perf_counter() - t0
    return {"workers": workers, "seconds": secs, "text_mb": m["text_bytes"] / 1e6,
            "mb_per_s": m["text_bytes"] / 1e6 / secs, "tokens": m["total_tokens"], "shards": len(m["shards"]),
            "out": out}


def bench_loader(data_dir: Path, batch_size: int, seq_len: int, shuffle: bool, seconds: float) -> dict:
    loader = ShardLoader(data_dir, batch_size, seq_len, shuffle=shuffle)
    loader.next_batch()  # open the memmaps and run the vocabulary check outside the clock
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        loader.next_batch()
        n += 1
    secs = time.perf_counter() - t0
    return {"batch_size": batch_size, "seq_len": seq_len, "shuffle": shuffle, "batches": n,
            "tok_per_s": n * batch_size * seq_len / secs, "batches_per_s": n / secs}


def tiny_step_tok_s(vocab_size: int, steps: int = 6) -> float | None:
    """Tokens/s of a PyTorch `tiny` training step (forward, loss, backward, AdamW) at B=8, T=256, fp32 CPU."""
    try:
        import torch
        from nano_core.config import ModelConfig
        from nano_torch.model import GPT
    except ImportError:
        return None
    cfg = ModelConfig.from_preset("tiny", vocab_size=vocab_size)
    model = GPT(cfg)
    model.init_weights(seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B, T = 8, cfg.seq_len
    x = torch.randint(0, vocab_size, (B, T + 1))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = model.loss(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return B * T / min(times[1:])  # the first step pays allocation; the best of the rest is the fair figure


def print_report(files, vocab_size, train_secs, preps, loads, step, step_source, ratio) -> None:
    print(f"corpus: {len(files)} files, {preps[0]['text_mb']:.1f} MB text; tokenizer vocab {vocab_size} "
          f"trained in {train_secs:.1f}s")
    print(f"{'prepare':<28}{'MB/s':>10}{'seconds':>10}{'tokens':>14}")
    for r in preps:
        print(f"{'workers=' + str(r['workers']):<28}{r['mb_per_s']:>10.1f}{r['seconds']:>10.2f}{r['tokens']:>14,}")
    print(f"{'loader':<28}{'Mtok/s':>10}{'batch/s':>10}")
    for r in loads:
        name = f"B={r['batch_size']} T={r['seq_len']} {'shuffled' if r['shuffle'] else 'sequential'}"
        print(f"{name:<28}{r['tok_per_s'] / 1e6:>10.2f}{r['batches_per_s']:>10.0f}")
    if ratio is not None:
        verdict = "OK" if ratio >= 100 else "BELOW the 100x target"
        print(f"tiny step consumes {step:,.0f} tok/s ({step_source}); loader B=8 T=256 delivers {ratio:,.0f}x "
              f"that: {verdict}")
    else:
        print("no training-step figure: install torch (nano_torch) or pass --step-tok-s")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--novels", type=int, default=24, help="Gutenberg novels added to the FineWeb-Edu sample")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=2.0, help="time per loader measurement")
    p.add_argument("--step-tok-s", type=float, help="training tokens/s to compare against when nano_torch is absent")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    args = p.parse_args()

    files = corpus(args.novels)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        tok = BPETokenizer.train(files, vocab_size=args.vocab_size, progress=False)
        train_secs = time.perf_counter() - t0
        tok.save(work / "tok")
        preps = [bench_prepare(files, work / "tok", work, w) for w in sorted({1, args.workers})]
        data_dir = preps[-1].pop("out")
        for r in preps:
            r.pop("out", None)
        loads = [bench_loader(data_dir, b, t, s, args.seconds)
                 for b, t in [(8, 256), (32, 1024)] for s in (True, False)]

    step = tiny_step_tok_s(args.vocab_size)
    step_source = "measured: nano_torch tiny, B=8 T=256, fp32 CPU" if step else None
    if step is None and args.step_tok_s:
        step, step_source = args.step_tok_s, "--step-tok-s"
    ratio = loads[0]["tok_per_s"] / step if step else None

    print_report(files, args.vocab_size, train_secs, preps, loads, step, step_source, ratio)
    result = {"machine": machine(), "files": [str(f) for f in files],
              "vocab_size": args.vocab_size, "tokenizer_train_seconds": train_secs, "prepare": preps,
              "loader": loads, "tiny_step_tok_s": step, "step_source": step_source, "loader_over_step": ratio}
    out = save_json(Path(args.json), result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
