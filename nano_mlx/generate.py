"""Sample text from a nano checkpoint with MLX (mirror of nano_torch/generate.py).

    python -m nano_mlx.generate --ckpt runs/mlx-tiny-.../ckpt_0000300 --prompt "The" --max-new-tokens 100

`generate()` is also what the training loop calls for its periodic samples. The model runs with its KV cache:
the prompt is fed once (prefill), then one token per step. When the cache reaches the model's context, the last
half of the text is fed again into a fresh cache, so any length can be sampled. The choice of the next token
(temperature, top-k, top-p) is done in numpy with a seeded generator: it draws from no global RNG (so a sample in
the middle of training leaves the training run bit-identical) and the two backends pick alike from alike logits.
"""
from __future__ import annotations

import sys

import mlx.core as mx
import numpy as np

from nano_core.checkpoint import checkpoint_tokenizer_dir, load_checkpoint, resolve_checkpoint
from nano_core.cli import build_generate_parser
from nano_core.config import ModelConfig
from nano_core.sampling import sample_next


def generate(model, prompt_ids, max_new_tokens: int, temperature: float = 0.8, top_k: int = 50,
             top_p: float = 1.0, seed: int = 0, stop_id: int | None = None) -> list[int]:
    """The `max_new_tokens` ids that follow `prompt_ids` (fewer if `stop_id` is drawn; it is not returned)."""
    rng = np.random.default_rng(seed)
    context = model.cfg.seq_len
    ids = list(prompt_ids)[-context:] or [stop_id if stop_id is not None else 0]
    was_training = model.training
    model.eval()
    out: list[int] = []
    try:
        cache = model.make_cache(1, context)
        logits = model(mx.array([ids], dtype=mx.int32), cache=cache)  # prefill
        for i in range(max_new_tokens):
            nxt = sample_next(np.array(logits[0, -1].astype(mx.float32)), temperature, top_k, top_p, rng)
            if nxt == stop_id:
                break
            out.append(nxt)
            ids.append(nxt)
            if i == max_new_tokens - 1:
                break
            if cache.pos < context:
                logits = model(mx.array([[nxt]], dtype=mx.int32), cache=cache)
            else:  # context full: refill a fresh cache with the last half of the text
                cache = model.make_cache(1, context)
                logits = model(mx.array([ids[-(context // 2):]], dtype=mx.int32), cache=cache)
    finally:
        model.train(was_training)
    return out


def pick_device(name: str):
    if name == "auto":
        name = "gpu" if mx.is_available(mx.gpu) else "cpu"
    device = {"gpu": mx.gpu, "cpu": mx.cpu}[name]
    if not mx.is_available(device):
        raise ValueError(f"--device {name} is not available on this machine; use --device auto")
    mx.set_default_device(device)
    return device


def load_model(ckpt):
    """(model, tokenizer, meta) from a checkpoint dir (or a run dir: its latest checkpoint)."""
    from nano_mlx.model import GPT
    from tokenizer import load_tokenizer

    path = resolve_checkpoint(ckpt)
    weights, _, meta = load_checkpoint(path)
    model = GPT(ModelConfig.from_dict(meta["model_config"]))
    model.load_numpy(weights)
    return model, load_tokenizer(checkpoint_tokenizer_dir(path)), meta


def main(argv=None):
    args = build_generate_parser("mlx").parse_args(argv)
    try:
        device = pick_device(args.device)
        model, tok, meta = load_model(args.ckpt)
        prompt = tok.encode(args.prompt)
        ids = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                       stop_id=tok.eot_id)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"[{meta['path']}: step {meta['step']}, trained with {meta.get('backend', '?')}; "
          f"mlx on {mx.default_device()}]", file=sys.stderr)
    print(args.prompt + tok.decode(ids))


if __name__ == "__main__":
    main()
