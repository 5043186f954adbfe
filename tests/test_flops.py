"""ModelConfig.estimate_flops (the MFU numerator of the training loops and the benchmarks) against a FLOP count made
here, independently, from the shapes of the weights nano_core.init actually produces."""
import re

import numpy as np
import pytest

from nano_core.config import ModelConfig
from nano_core.init import init_weights


def count_flops(weights: dict, cfg: ModelConfig, seq_len: int | None = None) -> dict:
    """Training FLOPs per token counted from the weights' shapes, written without looking at estimate_flops:
      * every 2-D weight used as a matmul costs 2*out*in FLOPs per token forward (one multiply-add per entry);
        the token/position embeddings are lookups (free), except that a tied wte is also the output head;
      * attention costs 2 matmuls (Q K^T and P V) x 2 FLOPs x T_eff keys x (n_head*head_dim) per token per layer,
        where n_head*head_dim is read from the query projection's shape; T_eff = T for full attention and
        min(window, T) for a sliding layer; causal masking is NOT discounted (the PaLM / nanoGPT convention);
      * backward = 2 x forward, so training = 3 x forward.
    """
    T = cfg.seq_len if seq_len is None else seq_len
    shapes = {k: tuple(np.shape(v)) for k, v in weights.items()}
    tied = "lm_head.weight" not in shapes
    matmul = 0
    for name, shape in shapes.items():
        if len(shape) != 2 or name == "wpe.weight" or (name == "wte.weight" and not tied):
            continue
        matmul += 2 * shape[0] * shape[1]  # a tied wte: the lookup is free, the head is a matmul
    layers = sorted(int(m.group(1)) for k in shapes if (m := re.match(r"h\.(\d+)\.attn\.wq\.weight$", k)))
    windows = cfg.layer_windows() if layers else []
    attention = 0
    for i in layers:
        t_eff = T if windows[i] is None else min(windows[i], T)
        attention += 2 * 2 * t_eff * shapes[f"h.{i}.attn.wq.weight"][0]
    return {"matmul_fwd": matmul, "attention_fwd": attention, "total": 3 * (matmul + attention)}


CONFIGS = {
    "gpt classic (MHA, learned positions, tied)": dict(n_layer=6, n_head=6, n_embd=384, seq_len=256),
    "GQA + rope + untied": dict(n_layer=4, n_head=8, n_kv_head=2, n_embd=256, pos="rope", tie_embeddings=False,
                                bias=False, norm="rmsnorm"),
    "MQA": dict(n_layer=2, n_head=4, n_kv_head=1, n_embd=128),
    "swiglu": dict(n_layer=4, n_head=4, n_embd=256, mlp="swiglu", bias=False),
    "sliding window SSSL": dict(n_layer=8, n_head=4, n_embd=256, seq_len=512, window=64, window_pattern="SSSL"),
    "window wider than the context": dict(n_layer=2, n_head=4, n_embd=128, seq_len=64, window=256),
    "rnn": dict(arch="rnn", pos="none", n_layer=2, n_embd=128),
    "rnn untied": dict(arch="rnn", pos="none", n_layer=2, n_embd=128, tie_embeddings=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_estimate_flops_equals_the_independent_count(name):
    cfg = ModelConfig.from_dict({"vocab_size": 1024, **CONFIGS[name]})
    assert cfg.estimate_flops() == count_flops(init_weights(cfg, 0), cfg)["total"]


@pytest.mark.parametrize("seq_len", [16, 100, 512])
def test_estimate_flops_follows_a_shorter_or_longer_context(seq_len):
    cfg = ModelConfig.from_dict(dict(vocab_size=512, n_layer=4, n_head=4, n_embd=128, seq_len=256, window=64,
                                     window_pattern="SL"))
    assert cfg.estimate_flops(seq_len) == count_flops(init_weights(cfg, 0), cfg, seq_len)["total"]


def test_independent_count_matches_a_hand_count():
    cfg = ModelConfig.from_dict(dict(vocab_size=16, n_layer=1, n_head=2, n_embd=8, seq_len=4))
    # matmuls: q,k,v,o 4 x 8*8, fc 32*8, proj 8*32, tied head 16*8 = 896 MACs; attention 2*2*T*d = 2*2*4*8 = 128
    assert count_flops(init_weights(cfg, 0), cfg) == {"matmul_fwd": 1792, "attention_fwd": 128,
                                                      "total": 3 * (1792 + 128)}
    windowed = ModelConfig.from_dict(dict(vocab_size=16, n_layer=1, n_head=2, n_embd=8, seq_len=4, window=2))
    assert count_flops(init_weights(windowed, 0), windowed)["attention_fwd"] == 2 * 2 * 2 * 8
