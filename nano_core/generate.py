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
from nano_core.sampling import check_sampling, sample_next
from tokenizer import load_tokenizer


def generate(backend, model, prompt_ids, max_new_tokens: int, temperature: float = 0.8, top_k: int = 50,
             top_p: float = 1.0, seed: int = 0, stop_id: int | None = None, on_token=None) -> list[int]:
    """The `max_new_tokens` ids that follow `prompt_ids` (fewer if `stop_id` is drawn; it is not returned).
    `on_token(id)` is called with each id as soon as it is drawn (the generate command streams text with it)."""
    rng = np.random.default_rng(seed)
    context = model.cfg.seq_len
    ids = list(prompt_ids)[-context:] or [stop_id if stop_id is not None else 0]
    out: list[int] = []
    with backend.inference(model):
        cache = backend.make_cache(model, 1, context)
        logits = backend.next_logits(model, ids, cache)  # prefill
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, rng)
            if nxt == stop_id:
                break
            out.append(nxt)
            ids.append(nxt)
            if on_token is not None:
                on_token(nxt)
            if i == max_new_tokens - 1:
                break
            if cache.pos < context:
                logits = backend.next_logits(model, [nxt], cache)
            else:  # context full: refill a fresh cache with the last half of the text
                cache = backend.make_cache(model, 1, context)
                logits = backend.next_logits(model, ids[-(context // 2):], cache)
    return out


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
    stream = TextStream(tok)
    stream.write(args.prompt)
    t0 = time.perf_counter()
    try:
        generate(backend, model, prompt_ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                 args.seed, stop_id=tok.eot_id, on_token=stream)
    except KeyboardInterrupt:  # Ctrl-C ends a long sample: the text so far stays on screen, one line says so
        stream.close()
        print(f"interrupted after {stream.count} tokens", file=sys.stderr, flush=True)
        sys.exit(130)
    stream.close()
    secs = time.perf_counter() - t0
    print(f"[{stream.count} tokens in {secs:.1f}s, {stream.count / max(secs, 1e-9):.1f} tokens/s]", file=sys.stderr)
