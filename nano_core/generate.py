"""Sampling text from a model, once for both backends; the backend supplies the logits (nano_core/backend.py).

    python -m nano_mlx.generate --ckpt runs/mlx-tiny-.../ckpt_0000300 --prompt "The" --max-new-tokens 100
    python -m nano_torch.generate --ckpt runs/torch-tiny-... --device cpu

`generate()` is also what the training loop calls for its periodic samples. The model runs with its KV cache: the
prompt is fed once (prefill), then one token per step. When the cache reaches the model's context, the last half
of the text is fed again into a fresh cache, so any length can be sampled. The next token is chosen in numpy with
a seeded generator (nano_core/sampling.py): it draws from no framework RNG (a sample in the middle of training
leaves the run bit-identical) and the two backends pick alike from alike logits.
"""
from __future__ import annotations

import sys

import numpy as np

from nano_core.checkpoint import checkpoint_tokenizer_dir, load_checkpoint, resolve_checkpoint
from nano_core.cli import build_generate_parser
from nano_core.config import ModelConfig
from nano_core.lora import LoraConfig
from nano_core.pretrained import load_lora_base
from nano_core.sampling import check_sampling, sample_next
from tokenizer import load_tokenizer


def generate(backend, model, prompt_ids, max_new_tokens: int, temperature: float = 0.8, top_k: int = 50,
             top_p: float = 1.0, seed: int = 0, stop_id: int | None = None) -> list[int]:
    """The `max_new_tokens` ids that follow `prompt_ids` (fewer if `stop_id` is drawn; it is not returned)."""
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
            if i == max_new_tokens - 1:
                break
            if cache.pos < context:
                logits = backend.next_logits(model, [nxt], cache)
            else:  # context full: refill a fresh cache with the last half of the text
                cache = backend.make_cache(model, 1, context)
                logits = backend.next_logits(model, ids[-(context // 2):], cache)
    return out


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
    """`python -m nano_{backend}.generate`: the same flags on both backends (only --device choices differ)."""
    args = build_generate_parser(backend_class.name).parse_args(argv)
    try:
        check_sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
        backend = backend_class(device=args.device, dtype="fp32")
        model, tok, meta = load_model(backend, args.ckpt, log=lambda m: print(m, file=sys.stderr))
        ids = generate(backend, model, tok.encode(args.prompt), args.max_new_tokens, args.temperature, args.top_k,
                       args.top_p, args.seed, stop_id=tok.eot_id)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"[{meta['path']}: step {meta['step']}, trained with {meta.get('backend', '?')}; "
          f"{backend.name} on {backend.device}]", file=sys.stderr)
    print(args.prompt + tok.decode(ids))
