"""Sampling text from a model, once for both backends; the backend supplies the logits (nano_core/backend.py).

    python -m nano_mlx.generate --ckpt runs/mlx-tiny-.../ckpt_0000300 --prompt "The" --max-new-tokens 100
    python -m nano_torch.generate --ckpt runs/torch-tiny-... --device cpu

The command streams the text as it is sampled, says before it starts when the text will go past the model's
context (the window then slides, see below), and ends with the speed in tokens/s. `generate()` is also what the
training loop calls for its periodic samples. The model runs with its KV cache: the prompt is fed once (prefill),
then one token per step. When the cache reaches the model's context, the last half
of the text is fed again into a fresh cache, so any length can be sampled. The next token is chosen in numpy with
a seeded generator (nano_core/sampling.py): it draws from no framework RNG (a sample in the middle of training
leaves the run bit-identical) and the two backends pick alike from alike logits.

--num-samples N samples the prompt N times as one batch of rows through the cache (generate_batch), each row with
its own generator: sample i of --seed s is the sample --seed s+i gives alone (sample_seed). The rows' logits come
from batched matmuls, which may round differently from a single row's, so "the same sample" holds as long as no
draw lands within that rounding of a boundary between two tokens. With N > 1 each sample is printed whole once it
is done, numbered, with its seed.
"""
from __future__ import annotations

import codecs
import sys
import time

import numpy as np

from nano_core.checks import check_number
from nano_core.checkpoint import checkpoint_tokenizer_dir, load_checkpoint, resolve_checkpoint
from nano_core.cli import build_generate_parser
from nano_core.config import ModelConfig
from nano_core.lora import LoraConfig
from nano_core.pretrained import load_lora_base
from nano_core.sampling import MAX_NUM_SAMPLES, check_sampling, sample_next
from tokenizer import load_tokenizer


def generate(backend, model, prompt_ids, max_new_tokens: int, temperature: float = 0.8, top_k: int = 50,
             top_p: float = 1.0, seed: int = 0, stop_id: int | None = None, on_token=None) -> list[int]:
    """The `max_new_tokens` ids that follow `prompt_ids` (fewer if `stop_id` is drawn; it is not returned).
    `on_token(id)` is called with each id as soon as it is drawn (the generate command streams text with it)."""
    stream = None if on_token is None else (lambda row, token: on_token(token))
    return generate_batch(backend, model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_id,
                          num_samples=1, on_token=stream)[0]


def sample_seed(seed: int, i: int) -> int:
    """The seed of sample i (0-based) of a run with --seed `seed`: sample i of `--seed s --num-samples N` is the
    sample of `--seed s+i` alone. One generator per sample, so no sample's draws depend on how many others there
    are, or on when they stop."""
    return seed + i


def generate_batch(backend, model, prompt_ids, max_new_tokens: int, temperature: float = 0.8, top_k: int = 50,
                   top_p: float = 1.0, seed: int = 0, stop_id: int | None = None, num_samples: int = 1,
                   on_token=None, on_done=None) -> list[list[int]]:
    """`num_samples` continuations of `prompt_ids`, sampled together: one batch of rows through the KV cache, row i
    drawing from its own generator seeded sample_seed(seed, i). `on_token(row, id)` is called with each id as it
    is drawn, `on_done(row, ids)` once a row has its last token. A row that draws `stop_id` is finished; it keeps
    its place in the batch (fed its own last token, its logits unused) so that the rows stay aligned, until every
    row is finished."""
    rngs = [np.random.default_rng(sample_seed(seed, i)) for i in range(num_samples)]
    context = model.cfg.seq_len
    prompt = list(prompt_ids)[-context:] or [stop_id if stop_id is not None else 0]
    texts = [list(prompt) for _ in range(num_samples)]  # what each row has been fed: a refill's source
    outs: list[list[int]] = [[] for _ in range(num_samples)]
    live = set(range(num_samples))

    def finish(row: int) -> None:
        live.discard(row)
        if on_done is not None:
            on_done(row, outs[row])

    with backend.inference(model):
        cache = backend.make_cache(model, num_samples, context)
        logits = backend.next_logits(model, texts, cache)  # prefill: (num_samples, V)
        for i in range(max_new_tokens):
            for row in sorted(live):
                nxt = sample_next(logits[row], temperature, top_k, top_p, rngs[row])
                if nxt == stop_id:
                    finish(row)
                    continue
                outs[row].append(nxt)
                texts[row].append(nxt)
                if on_token is not None:
                    on_token(row, nxt)
            if not live or i == max_new_tokens - 1:
                break
            for row in set(range(num_samples)) - live:  # finished rows: any token keeps them in step
                texts[row].append(texts[row][-1])
            if cache.pos < context:
                logits = backend.next_logits(model, [t[-1:] for t in texts], cache)
            else:  # context full: refill a fresh cache with the last half of each row's text
                cache = backend.make_cache(model, num_samples, context)
                logits = backend.next_logits(model, [t[-(context // 2):] for t in texts], cache)
    for row in sorted(live):
        finish(row)
    return outs


def slide_notice(prompt_tokens: int, max_new_tokens: int, context: int) -> str | None:
    """What happens past the context, said before the text starts (a notice in mid-stream would cut a line of it),
    or None when everything fits."""
    if prompt_tokens + max_new_tokens <= context:
        return None
    cut = f"the prompt's first {prompt_tokens - context} tokens are dropped, and " if prompt_tokens > context else ""
    return (f"notice: prompt ({prompt_tokens} tokens) + --max-new-tokens {max_new_tokens} exceed the model's context "
            f"of {context} tokens: {cut}past the context the window slides (the last {context // 2} tokens are fed "
            f"again and generation goes on; each new token sees at most the last {context})")


class TextStream:
    """Writes each token's text as it comes. Token bytes go through an incremental UTF-8 decoder, so a character
    split across tokens is written once whole, and the text is the same as tok.decode of all the ids."""

    def __init__(self, tok, out=None):
        self.tok, self.out = tok, out if out is not None else sys.stdout
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.count = 0

    def write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()

    def __call__(self, token_id: int) -> None:
        self.count += 1
        self.write(self.decoder.decode(self.tok.token_bytes(token_id)))

    def close(self) -> None:
        self.write(self.decoder.decode(b"", final=True) + "\n")


def load_model(backend, ckpt, log=print):
    """(model, tokenizer, meta) from a checkpoint dir (or a run dir: its newest good checkpoint). A LoRA checkpoint
    holds adapters only: its base model is loaded from where the run started and the adapters go on top."""
    path = resolve_checkpoint(ckpt)
    weights, _, meta = load_checkpoint(path)
    cfg = ModelConfig.from_dict(meta["model_config"])
    if meta.get("lora"):
        base = load_lora_base(meta["base"], cfg.seq_len, log)
        model = backend.build_model(cfg, base, lora=LoraConfig.from_dict(meta["lora"]), adapters=weights)
    else:
        model = backend.build_model(cfg, weights)
    return model, load_tokenizer(checkpoint_tokenizer_dir(path)), meta


def main(backend_class, argv=None):
    """`python -m nano_{backend}.generate`: the same flags on both backends (only --device choices differ). The text
    is streamed to stdout as it is sampled; the checkpoint, notices and the speed go to stderr."""
    args = build_generate_parser(backend_class.name).parse_args(argv)
    try:
        check_sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
        check_number("--seed", args.seed, low=0, integer=True, hint="any integer from 0 up picks a sample")
        check_number("--num-samples", args.num_samples, low=1, high=MAX_NUM_SAMPLES, integer=True,
                     hint="the samples are one batch through the model")
        backend = backend_class(device=args.device, dtype="fp32")
        model, tok, meta = load_model(backend, args.ckpt, log=lambda m: print(m, file=sys.stderr))
        prompt_ids = tok.encode(args.prompt)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"[{meta['path']}: step {meta['step']}, trained with {meta.get('backend', '?')}; "
          f"{backend.name} on {backend.device}]", file=sys.stderr)
    notice = slide_notice(len(prompt_ids), args.max_new_tokens, model.cfg.seq_len)
    if notice:
        print(notice, file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    if args.num_samples == 1:
        count = _stream_one(backend, model, tok, prompt_ids, args)
    else:
        count = _print_each(backend, model, tok, prompt_ids, args)
    secs = time.perf_counter() - t0
    print(f"[{count} tokens in {secs:.1f}s, {count / max(secs, 1e-9):.1f} tokens/s]", file=sys.stderr)


def _stream_one(backend, model, tok, prompt_ids, args) -> int:
    """One sample, written as it is drawn; the number of tokens."""
    stream = TextStream(tok)
    stream.write(args.prompt)
    try:
        generate(backend, model, prompt_ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                 args.seed, stop_id=tok.eot_id, on_token=stream)
    except KeyboardInterrupt:  # Ctrl-C ends a long sample: the text so far stays on screen, one line says so
        stream.close()
        print(f"interrupted after {stream.count} tokens", file=sys.stderr, flush=True)
        sys.exit(130)
    stream.close()
    return stream.count


def _print_each(backend, model, tok, prompt_ids, args) -> int:
    """--num-samples N > 1: each sample printed whole once it is done, under a line with its number and seed
    (the seed that gives it alone); the number of tokens."""
    done = []

    def show(row: int, ids: list[int]) -> None:
        done.append(len(ids))
        print(f"=== sample {row + 1} of {args.num_samples} (--seed {sample_seed(args.seed, row)}) ===", flush=True)
        print(args.prompt + tok.decode(ids), flush=True)

    try:
        generate_batch(backend, model, prompt_ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                       args.seed, stop_id=tok.eot_id, num_samples=args.num_samples, on_done=show)
    except KeyboardInterrupt:
        print(f"interrupted with {len(done)} of {args.num_samples} samples done", file=sys.stderr, flush=True)
        sys.exit(130)
    return sum(done)
