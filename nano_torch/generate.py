"""Sample text from a nano checkpoint with PyTorch (mirror of nano_mlx/generate.py).

    python -m nano_torch.generate --ckpt runs/torch-tiny-.../ckpt_0000300 --prompt "The" --max-new-tokens 100

`generate()` is also what the training loop calls for its periodic samples. The model runs with its KV cache:
the prompt is fed once (prefill), then one token per step. When the cache reaches the model's context, the last
half of the text is fed again into a fresh cache, so any length can be sampled. The choice of the next token
(temperature, top-k, top-p) is done in numpy with a seeded generator: it draws from no global RNG (so a sample in
the middle of training leaves the training run bit-identical) and the two backends pick alike from alike logits.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from nano_core.checkpoint import checkpoint_tokenizer_dir, load_checkpoint, resolve_checkpoint
from nano_core.cli import build_generate_parser
from nano_core.config import ModelConfig
from nano_core.sampling import sample_next


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens: int, temperature: float = 0.8, top_k: int = 50,
             top_p: float = 1.0, seed: int = 0, stop_id: int | None = None) -> list[int]:
    """The `max_new_tokens` ids that follow `prompt_ids` (fewer if `stop_id` is drawn; it is not returned)."""
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    context = model.cfg.seq_len
    ids = list(prompt_ids)[-context:] or [stop_id if stop_id is not None else 0]
    was_training = model.training
    model.eval()
    out: list[int] = []
    try:
        cache = model.make_cache(1, context)
        logits = model(torch.tensor([ids], dtype=torch.long, device=device), cache=cache)  # prefill
        for i in range(max_new_tokens):
            nxt = sample_next(logits[0, -1].float().cpu().numpy(), temperature, top_k, top_p, rng)
            if nxt == stop_id:
                break
            out.append(nxt)
            ids.append(nxt)
            if i == max_new_tokens - 1:
                break
            if cache.pos < context:
                logits = model(torch.tensor([[nxt]], dtype=torch.long, device=device), cache=cache)
            else:  # context full: refill a fresh cache with the last half of the text
                cache = model.make_cache(1, context)
                logits = model(torch.tensor([ids[-(context // 2):]], dtype=torch.long, device=device), cache=cache)
    finally:
        model.train(was_training)
    return out


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise ValueError(f"--device {name} is not available on this machine; use --device auto")
    return torch.device(name)


def load_model(ckpt, device: torch.device):
    """(model, tokenizer, meta) from a checkpoint dir (or a run dir: its latest checkpoint)."""
    from nano_torch.model import GPT
    from tokenizer import load_tokenizer

    path = resolve_checkpoint(ckpt)
    weights, _, meta = load_checkpoint(path)
    model = GPT(ModelConfig.from_dict(meta["model_config"]))
    model.load_numpy(weights)
    return model.to(device), load_tokenizer(checkpoint_tokenizer_dir(path)), meta


def main(argv=None):
    args = build_generate_parser("torch").parse_args(argv)
    try:
        device = pick_device(args.device)
        model, tok, meta = load_model(args.ckpt, device)
        prompt = tok.encode(args.prompt)
        ids = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                       stop_id=tok.eot_id)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"[{meta['path']}: step {meta['step']}, trained with {meta.get('backend', '?')}; torch on {device}]",
          file=sys.stderr)
    print(args.prompt + tok.decode(ids))


if __name__ == "__main__":
    main()
