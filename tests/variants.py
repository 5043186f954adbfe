"""The model variants the per-backend model tests run (both backends run exactly this table, so a variant added
here is checked in MLX and in PyTorch alike). A plain module, not a test file: imported by test_model_*.py."""

SMALL = dict(vocab_size=97, n_layer=2, n_head=4, n_embd=32, seq_len=24)
VARIANTS = {
    "learned-gelu": {},
    "learned-gelu-tanh": dict(mlp="gelu_tanh"),
    "sinusoidal-relu-mqa": dict(pos="sinusoidal", mlp="relu", n_kv_head=1),
    "rope-swiglu-gqa": dict(pos="rope", mlp="swiglu", norm="rmsnorm", n_kv_head=2, bias=False,
                            tie_embeddings=False, qk_norm=True),
    "rope-partial-yarn": dict(pos="rope", rope_pct=0.5, rope_scaling={"type": "yarn", "factor": 4.0,
                                                                     "original_max_len": 12}),
    "rope-ntk": dict(pos="rope", rope_scaling={"type": "ntk", "factor": 2.0}),
    "nopos-relu2-softcap": dict(pos="none", mlp="relu2", logit_softcap=5.0),
    "sliding-SL-rope-gqa": dict(pos="rope", window=5, window_pattern="SL", n_kv_head=2),
    "nanochat-block": dict(pos="rope", mlp="relu2", norm="rmsnorm", qk_norm=True, norm_params=False, emb_norm=True,
                           bias=False, tie_embeddings=False, logit_softcap=15.0),
    "layernorm-paramfree-embnorm": dict(norm_params=False, emb_norm=True),
    "rnn-tanh": dict(arch="rnn", pos="none"),
    "rnn-slide": dict(arch="rnn", pos="none", rnn_act="slide"),
}
GPT_VARIANTS = [k for k in VARIANTS if not k.startswith("rnn")]
