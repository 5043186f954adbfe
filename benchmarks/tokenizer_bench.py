"""Tokenizer trainers side by side on the same corpus and vocab size.

  python benchmarks/tokenizer_bench.py [--vocab-size 32768] [--target-mb 44.5] [--out runs/bench_tokenizer.json]

Trainers: ours (pure Python), HF `tokenizers` BPE with the same regex split, SentencePiece BPE, and rustbpe
(nanochat's Rust trainer, the merge reference). Each trains in its own subprocess; peak memory is the peak RSS
of that process tree (polled with psutil). All read the same UTF-8 copy of the corpus (our sources decode the
Latin-1 Gutenberg files once, up front). Held-out bytes/token on WikiText-2 test; encoding MB/s on it too.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, StepError, last_json, machine, run_child, save_json
from tokenizer import BPETokenizer, load_tokenizer
from tokenizer.patterns import GPT4
from nano_io.text import read_text

DATA = ROOT.parent / "shared" / "data"


def build_corpus(target_mb: float, out_dir: Path) -> list[Path]:
    """FineWeb-edu + WikiText-2 valid + Gutenberg novels (in name order) until target_mb, as clean UTF-8 files."""
    files = [DATA / "fineweb_edu" / "sample-10BT-281docs.txt", DATA / "wikitext2" / "wiki.valid.raw"]
    files += sorted((DATA / "gutenberg").glob("*.txt"))
    out, total = [], 0
    for f in files:
        if total >= target_mb * 1e6:
            break
        text = read_text(f)
        dst = out_dir / (f.stem + ".txt")
        dst.write_text(text, encoding="utf-8")
        out.append(dst)
        total += len(text.encode("utf-8"))
    return out


# ------------------------------------------------------------------------------------------------ trainers
# Each runs inside its own subprocess: (files, vocab_size, workdir) -> an object with .encode(str) -> ids.

def train_ours(files, vocab, work):
    stats = {}
    tok = BPETokenizer.train([str(f) for f in files], vocab_size=vocab, num_workers=2, progress=False, stats=stats)
    tok.save(work / "ours")
    return tok.encode, stats


def _line_pieces(files, lines_per_piece: int = 1000):
    for f in files:
        lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
        for i in range(0, len(lines), lines_per_piece):
            yield "".join(lines[i:i + lines_per_piece])


def train_hf(files, vocab, work):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(GPT4), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # HF parallelises over the texts it is given: whole novels as single texts leave a core idle (8.6 s vs 6.4 s
    # here), and tok.train(files) cuts at every newline (changing the chunks). Pieces of 1000 lines are its best
    # case with the same chunks (a whitespace run is cut only at a piece boundary: negligible).
    tok.train_from_iterator(_line_pieces(files), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=0, show_progress=False))
    tok.save(str(work / "hf.json"))
    return (lambda s: tok.encode(s).ids), {}


def train_spm(files, vocab, work):
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(
        input=",".join(map(str, files)), model_prefix=str(work / "spm"), model_type="bpe", vocab_size=vocab,
        byte_fallback=True, character_coverage=0.9999, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, num_threads=2, max_sentence_length=1 << 16, minloglevel=2,
        train_extremely_large_corpus=False)
    sp = spm.SentencePieceProcessor(model_file=str(work / "spm.model"))
    return sp.encode, {}


def train_rustbpe(files, vocab, work):
    import rustbpe
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator((f.read_text(encoding="utf-8") for f in files), vocab - 1, pattern=GPT4)
    ranks = sorted(dict(tok.get_mergeable_ranks()).items(), key=lambda kv: kv[1])
    (work / "rustbpe.json").write_text(json.dumps([b.hex() for b, _ in ranks]))
    return tok.encode, {}


TRAINERS = {"ours": train_ours, "hf": train_hf, "sentencepiece": train_spm, "rustbpe": train_rustbpe}


def run_worker(name, files, vocab, work, heldout):
    """One trainer, in this process; its figures go out as the last line of output (harness.last_json)."""
    t0 = time.perf_counter()
    encode, stats = TRAINERS[name](files, vocab, work)
    seconds = time.perf_counter() - t0
    text = Path(heldout).read_text(encoding="utf-8")
    n_tokens = len(encode(text))
    print(json.dumps({"seconds": seconds, "bytes_per_token": len(text.encode()) / n_tokens, **stats}), flush=True)


def measure(name, files, vocab, work, heldout) -> dict:
    """Run one trainer in a child process; poll the RSS of its whole process tree for the peak."""
    import psutil

    cmd = [sys.executable, __file__, "--worker", name, "--vocab-size", str(vocab), "--work", str(work),
           "--heldout", str(heldout), "--files", *map(str, files)]
    peak = 0

    def tree_rss(pid: int) -> None:
        nonlocal peak
        try:
            ps = psutil.Process(pid)
            peak = max(peak, sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]))
        except psutil.Error:
            pass  # a process of the tree ended between the listing and the reading

    log = work / f"{name}.log"
    run_child(f"trainer {name}", cmd, log, None, watch=tree_rss, poll_s=0.02)
    result = last_json(log.read_text(errors="replace"))
    if result is None:
        raise StepError(f"trainer {name} printed no result -- see {log}")
    return {**result, "peak_rss_mb": peak / 1e6}


def encoding_speed(work, heldout) -> dict:
    """MB/s encoding the held-out text: ours (fresh cache, 1 process), ours encode_batch (2 processes),
    our tiktoken export (1 thread), HF tokenizers (1 call)."""
    from tokenizers import Tokenizer
    text = Path(heldout).read_text(encoding="utf-8")
    mb = len(text.encode()) / 1e6
    docs = text.split("\n \n")
    out = {}

    def timed(fn):
        t = time.perf_counter()
        ids = fn()
        return mb / (time.perf_counter() - t), ids

    ours = load_tokenizer(work / "ours")
    out["ours"], ref = timed(lambda: ours.encode(text))
    ours = load_tokenizer(work / "ours")
    out["ours encode_batch x2"], batch = timed(lambda: [i for ids in ours.encode_batch(docs, 2) for i in ids])
    enc = ours.to_tiktoken()
    out["ours -> tiktoken"], tt = timed(lambda: enc.encode_ordinary(text))
    hf = Tokenizer.from_file(str(work / "hf.json"))
    out["hf tokenizers"], _ = timed(lambda: hf.encode(text).ids)
    assert tt == ref, "tiktoken export disagrees with our encoder"
    return out


def print_tables(rows: dict, same: bool | None, speed: dict) -> None:
    """The results as markdown tables (what docs/data.md quotes)."""
    print("\n| trainer | train s | peak RSS MB | held-out bytes/token |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['bytes_per_token']:.3f} |")
    if "ours" in rows:
        o = rows["ours"]
        print(f"\nours: split {o['split_seconds']:.2f} s + merges {o['merge_seconds']:.2f} s; "
              f"{o['unique_chunks']:,} unique chunks; merges identical to rustbpe: {same}")
        if "hf" in rows:
            print(f"ours / HF: time {o['seconds'] / rows['hf']['seconds']:.2f}x, "
                  f"peak memory {o['peak_rss_mb'] / rows['hf']['peak_rss_mb']:.2f}x")
    if speed:
        print("\n| encoder (held-out text) | MB/s |\n|---|---:|")
        for k, v in speed.items():
            print(f"| {k} | {v:.2f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--target-mb", type=float, default=44.5)
    p.add_argument("--heldout", default=str(DATA / "wikitext2" / "wiki.test.raw"))
    p.add_argument("--trainers", default="ours,hf,sentencepiece,rustbpe")
    p.add_argument("--out", default="runs/bench_tokenizer.json")
    # internal: one trainer in this process
    p.add_argument("--worker"), p.add_argument("--work"), p.add_argument("--files", nargs="*")
    args = p.parse_args()
    if args.worker:
        return run_worker(args.worker, [Path(f) for f in args.files], args.vocab_size, Path(args.work), args.heldout)

    with tempfile.TemporaryDirectory(prefix="bench_tok_") as tmp:
        work = Path(tmp)
        (work / "corpus").mkdir()
        files = build_corpus(args.target_mb, work / "corpus")
        mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"corpus: {len(files)} files, {mb:.1f} MB UTF-8; vocab {args.vocab_size}; held-out {args.heldout}")
        rows = {}
        for name in args.trainers.split(","):
            rows[name] = measure(name, files, args.vocab_size, work, args.heldout)
            print(f"  {name:14s} {rows[name]['seconds']:6.2f} s  {rows[name]['peak_rss_mb']:7.0f} MB", flush=True)
        same = None
        if "rustbpe" in rows and "ours" in rows:
            ours = load_tokenizer(work / "ours")
            rust = [bytes.fromhex(h) for h in json.loads((work / "rustbpe.json").read_text())]
            same = [ours.token_bytes(i) for i in range(256 + len(ours.merges))] == rust
        speed = encoding_speed(work, args.heldout) if {"ours", "hf"} <= rows.keys() else {}

    print_tables(rows, same, speed)
    result = {"corpus_mb": mb, "files": len(files), "vocab_size": args.vocab_size, "heldout": args.heldout,
              "trainers": rows, "merges_identical_to_rustbpe": same, "encode_mb_per_s": speed,
              "machine": machine()}
    out = save_json(Path(args.out), result)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
