"""ModelConfig: THE model spec shared by the MLX and PyTorch backends.

Backend-free on purpose (imports neither mlx nor torch): the training loops, the checkpoint code and the tests all
read shapes, names and FLOPs from here, so both implementations are built against one description.

Canonical parameter names (`param_shapes()` is the single source of truth; Linear weights are (out, in)):

    wte.weight                      (V, d)        token embedding (also the head when tie_embeddings)
    wpe.weight                      (T, d)        only for pos="learned"
    ln_emb.weight / .bias           (d,)          only with emb_norm (a norm of the embedded input, before block 0)
    h.{i}.ln_1.weight / .bias       (d,)          bias only for layernorm with bias=True
    h.{i}.attn.wq.weight / .bias    (H*hd, d)
    h.{i}.attn.wk.weight / .bias    (Hkv*hd, d)
    h.{i}.attn.wv.weight / .bias    (Hkv*hd, d)
    h.{i}.attn.q_norm.weight        (hd,)         only with qk_norm (an RMSNorm over each head)
    h.{i}.attn.k_norm.weight        (hd,)
    h.{i}.attn.wo.weight / .bias    (d, H*hd)     residual projection (scaled init)
    h.{i}.ln_2.weight / .bias       (d,)
    h.{i}.mlp.fc.weight / .bias     (F, d)        up projection
    h.{i}.mlp.gate.weight / .bias   (F, d)        only for swiglu: silu(gate(x)) * fc(x)
    h.{i}.mlp.proj.weight / .bias   (d, F)        residual projection (scaled init)
    ln_f.weight / .bias             (d,)
    lm_head.weight                  (V, d)        only when tie_embeddings=False

With norm_params=False every norm (ln_emb, ln_1, ln_2, ln_f, q_norm, k_norm) is parameter-free: x / rms(x) (or
LayerNorm's (x - mean) / std) with no weight or bias tensors at all, as in nanochat's block.

arch="rnn" (Elman RNN baseline) replaces the blocks with `rnn.{i}.w_ih.weight (d, d)`, `rnn.{i}.w_hh.weight (d, d)`,
`rnn.{i}.bias (d,)`:  h_t = act(W_ih x_t + W_hh h_{t-1} + b), act = tanh or slide(a) = min(1, max(0, a)).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

MLPS = ("gelu", "gelu_tanh", "relu", "swiglu", "relu2")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "sinusoidal", "rope", "none")
ROPE_SCALINGS = ("linear", "ntk", "yarn")
ARCHS = ("gpt", "rnn")
RNN_ACTS = ("tanh", "slide")


@dataclass
class ModelConfig:
    arch: str = "gpt"                 # gpt | rnn (Elman RNN language-model baseline)
    vocab_size: int = 8192
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None      # None -> n_head (MHA); 1 -> MQA; in between -> GQA
    n_embd: int = 256
    seq_len: int = 256                # training context (and the size of learned position tables)
    mlp: str = "gelu"                 # gelu (exact erf) | gelu_tanh (GPT-2's tanh form) | relu | swiglu | relu2
    mlp_hidden: int | None = None     # None -> 4*d (gelu/gelu_tanh/relu/relu2) or 8/3*d rounded up to 64 (swiglu)
    norm: str = "layernorm"           # layernorm | rmsnorm
    norm_eps: float = 1e-5
    norm_params: bool = True          # False: every norm is parameter-free (no weight/bias tensors), as nanochat's
    emb_norm: bool = False            # a norm right after the embedding (and positions), before the first block
    emb_scale: float = 1.0            # token embeddings x this before positions are added (50 = 1 / init std)
    pos: str = "learned"              # learned | sinusoidal | rope | none
    rope_theta: float = 10000.0
    rope_pct: float = 1.0             # partial rotary: rotate the first rope_pct of each head dim
    rope_scaling: dict | None = None  # {"type": linear|ntk|yarn, "factor": s, "original_max_len": L, ...}
    window: int | None = None         # sliding-window size w: token i sees tokens i-w+1 .. i
    window_pattern: str = "S"         # per-layer pattern repeated over layers, S = sliding, L = full ("SSSL")
    qk_norm: bool = False
    bias: bool = True
    dropout_emb: float = 0.0
    dropout_attn: float = 0.0
    dropout_resid: float = 0.0
    tie_embeddings: bool = True
    logit_softcap: float | None = None  # logits = c * tanh(logits / c)
    rnn_act: str = "tanh"             # tanh | slide (arch="rnn" only)

    # ---------------------------------------------------------------- derived sizes
    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":  # keep the parameter count of a 4x MLP: 3 matrices of 8/3 d
            return 64 * math.ceil(8 * self.n_embd / 3 / 64)
        return 4 * self.n_embd

    @property
    def rope_dim(self) -> int:
        """Number of rotated dims per head (even; the first rope_dim dims of each head)."""
        return 2 * int(self.head_dim * self.rope_pct / 2)

    def layer_windows(self) -> list[int | None]:
        """Per layer: the sliding-window size, or None for full attention."""
        if self.window is None:
            return [None] * self.n_layer
        pat = self.window_pattern
        return [self.window if pat[i % len(pat)] == "S" else None for i in range(self.n_layer)]

    # ---------------------------------------------------------------- validation
    def validate(self) -> "ModelConfig":
        """Raise ValueError with a one-line message for the first problem found; return self when valid."""
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(msg)

        choices = {"arch": ARCHS, "mlp": MLPS, "norm": NORMS, "pos": POSITIONS, "rnn_act": RNN_ACTS}
        for name, allowed in choices.items():
            v = getattr(self, name)
            need(v in allowed, f"{name}={v!r} is not one of {', '.join(allowed)}")
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "seq_len"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{name}={v!r} must be a positive integer")
        need(self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        kv = self.kv_heads
        need(isinstance(kv, int) and kv > 0, f"n_kv_head={self.n_kv_head!r} must be a positive integer or None")
        need(self.n_head % kv == 0,
             f"n_head={self.n_head} is not divisible by n_kv_head={kv} (GQA groups must be equal)")
        need(self.mlp_hidden is None or (isinstance(self.mlp_hidden, int) and self.mlp_hidden > 0),
             f"mlp_hidden={self.mlp_hidden!r} must be a positive integer or None")
        for name in ("norm_params", "emb_norm", "qk_norm", "bias", "tie_embeddings"):
            v = getattr(self, name)
            need(isinstance(v, bool), f"{name}={v!r} must be true or false")
        need(self.norm_eps > 0, f"norm_eps={self.norm_eps} must be > 0")
        es = self.emb_scale
        need(isinstance(es, (int, float)) and not isinstance(es, bool) and math.isfinite(es) and es > 0,
             f"emb_scale={es!r} must be a finite number > 0 (1.0: unscaled; 50: embeddings at RMS 1)")
        for name in ("dropout_emb", "dropout_attn", "dropout_resid"):
            v = getattr(self, name)
            need(0.0 <= v < 1.0, f"{name}={v} must be in [0, 1)")
        need(self.logit_softcap is None or self.logit_softcap > 0,
             f"logit_softcap={self.logit_softcap} must be > 0 (or None to turn it off)")
        need(self.rope_theta > 0, f"rope_theta={self.rope_theta} must be > 0")
        need(0.0 < self.rope_pct <= 1.0, f"rope_pct={self.rope_pct} must be in (0, 1]")
        if self.pos == "rope":
            need(self.rope_dim >= 2, f"rope_pct={self.rope_pct} rotates no dims of head_dim={self.head_dim}; raise it")
        if self.pos == "sinusoidal":
            need(self.n_embd % 2 == 0, f"pos='sinusoidal' needs an even n_embd, got {self.n_embd}")
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            need(isinstance(rs, dict), f"rope_scaling={rs!r} must be a dict like {{'type': 'yarn', 'factor': 4.0}}")
            need(self.pos == "rope", f"rope_scaling is set but pos={self.pos!r}; use pos='rope' or drop rope_scaling")
            need(rs.get("type") in ROPE_SCALINGS,
                 f"rope_scaling type={rs.get('type')!r} is not one of {', '.join(ROPE_SCALINGS)}")
            need(isinstance(rs.get("factor"), (int, float)) and rs.get("factor", 0) >= 1,
                 f"rope_scaling factor={rs.get('factor')!r} must be a number >= 1")
            unknown = set(rs) - {"type", "factor", "original_max_len", "beta_fast", "beta_slow"}
            need(not unknown, f"rope_scaling has unknown keys {sorted(unknown)}; allowed: type, factor, "
                              f"original_max_len, beta_fast, beta_slow")
            if rs["type"] == "yarn":
                need(isinstance(rs.get("original_max_len"), int) and rs["original_max_len"] > 0,
                     "rope_scaling type='yarn' needs original_max_len (the context the model was trained on)")
        if self.window is not None:
            need(isinstance(self.window, int) and self.window > 0,
                 f"window={self.window!r} must be a positive integer or None")
            need(self.arch == "gpt", "window is set but arch='rnn' has no attention; drop window")
            need(len(self.window_pattern) > 0 and set(self.window_pattern) <= {"S", "L"},
                 f"window_pattern={self.window_pattern!r} must be a non-empty string of S (sliding) and L (full)")
        if self.arch == "rnn":
            need(self.pos == "none", f"arch='rnn' has no position encoding, got pos={self.pos!r}; set pos='none'")
        return self

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; known keys: {', '.join(sorted(known))}")
        return cls(**d).validate()

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "ModelConfig":
        s = str(text_or_path)
        if not s.lstrip().startswith("{"):
            p = Path(s)
            if not p.is_file():
                raise FileNotFoundError(f"model config {p} not found")
            s = p.read_text()
        return cls.from_dict(json.loads(s))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        d = {**PRESETS[name], **overrides}
        return cls.from_dict(d)

    # ---------------------------------------------------------------- shapes, counts, FLOPs
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical name -> shape, in the one fixed order the initializer draws them."""
        d, V, hd, F = self.n_embd, self.vocab_size, self.head_dim, self.hidden
        s: dict[str, tuple[int, ...]] = {"wte.weight": (V, d)}
        if self.pos == "learned":
            s["wpe.weight"] = (self.seq_len, d)

        def norm(prefix: str, dim: int, bias: bool = True):
            if not self.norm_params:
                return
            s[f"{prefix}.weight"] = (dim,)
            if bias and self.norm == "layernorm" and self.bias:
                s[f"{prefix}.bias"] = (dim,)

        def linear(prefix: str, out: int, inp: int):
            s[f"{prefix}.weight"] = (out, inp)
            if self.bias:
                s[f"{prefix}.bias"] = (out,)

        if self.emb_norm:
            norm("ln_emb", d)
        for i in range(self.n_layer):
            p = f"rnn.{i}" if self.arch == "rnn" else f"h.{i}"
            if self.arch == "rnn":
                s[f"{p}.w_ih.weight"] = (d, d)
                s[f"{p}.w_hh.weight"] = (d, d)
                s[f"{p}.bias"] = (d,)
                continue
            norm(f"{p}.ln_1", d)
            linear(f"{p}.attn.wq", self.n_head * hd, d)
            linear(f"{p}.attn.wk", self.kv_heads * hd, d)
            linear(f"{p}.attn.wv", self.kv_heads * hd, d)
            if self.qk_norm:
                norm(f"{p}.attn.q_norm", hd, bias=False)
                norm(f"{p}.attn.k_norm", hd, bias=False)
            linear(f"{p}.attn.wo", d, self.n_head * hd)
            norm(f"{p}.ln_2", d)
            linear(f"{p}.mlp.fc", F, d)
            if self.mlp == "swiglu":
                linear(f"{p}.mlp.gate", F, d)
            linear(f"{p}.mlp.proj", d, F)
        norm("ln_f", d)
        if not self.tie_embeddings:
            s["lm_head.weight"] = (V, d)
        return s

    def num_params(self, embeddings: bool = True) -> int:
        """All parameters (tied head counted once). embeddings=False drops wte/wpe (keeps a tied head)."""
        shapes = self.param_shapes()
        dropped = () if embeddings else ("wpe.weight",) + (() if self.tie_embeddings else ("wte.weight",))
        return sum(math.prod(shape) for name, shape in shapes.items() if name not in dropped)

    def matmul_params(self) -> int:
        """Weights used in a matmul per token: every 2-D weight except the embedding lookups, plus the head (V*d)."""
        shapes = self.param_shapes()
        tables = ("wte.weight", "wpe.weight", "lm_head.weight")
        n = sum(math.prod(v) for k, v in shapes.items() if len(v) == 2 and k not in tables)
        return n + self.vocab_size * self.n_embd

    def estimate_flops(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), PaLM-appendix style:

            6 * N_matmul  +  sum over attention layers of  12 * n_head * head_dim * T_eff

        N_matmul = every weight used in a matmul (attention, MLP, RNN matrices, and the V*d head; embedding lookups
        are free). The attention term counts Q@K^T and P@V (2 matmuls, 2 FLOPs per MAC, x3 for fwd+bwd) against
        T_eff keys per query, where T_eff = seq_len for full attention and min(window, seq_len) for a sliding layer
        (the compute a banded kernel does; causal masking is not discounted, as in PaLM/nanoGPT MFU accounting).
        """
        T = self.seq_len if seq_len is None else seq_len
        flops = 6 * self.matmul_params()
        if self.arch == "gpt":
            for w in self.layer_windows():
                t_eff = T if w is None else min(w, T)
                flops += 12 * self.n_head * self.head_dim * t_eff
        return int(flops)

    def __post_init__(self):
        # JSON turns tuples into lists; keep rope_scaling a plain dict copy so configs never share it.
        if self.rope_scaling is not None and isinstance(self.rope_scaling, dict):
            self.rope_scaling = dict(self.rope_scaling)


PRESETS: dict[str, dict] = {
    # ~5M params at vocab 8192 (2.1M of them the tied embedding): runs on a laptop CPU.
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, seq_len=256, mlp="gelu", norm="layernorm", pos="learned"),
    # ~30M at vocab 8192: the default on Apple Metal.
    "small": dict(n_layer=8, n_head=8, n_embd=512, seq_len=512, mlp="gelu", norm="layernorm", pos="learned"),
    # 12 x 512, ReLU MLP, sinusoidal positions, LayerNorm, 1024 context: 37.8M in the blocks + V*512 (42M at 8192).
    # The token embeddings are multiplied by 50 = 1 / the init's std 0.02 before the fixed table (RMS 0.71) is added:
    # unscaled, they are drowned by it and the model stalls at the unigram loss. Vaswani et al. (2017, 3.4) multiply
    # by sqrt(d) embeddings initialised at std d^-1/2, i.e. bring them to RMS 1; 50 does that for nano's init (sqrt(d)
    # alone leaves them at 0.02 sqrt(d): measured behind learned positions, docs/studies.md "The 44M reproduction").
    "nano44m": dict(n_layer=12, n_head=8, n_embd=512, seq_len=1024, mlp="relu", norm="layernorm", pos="sinusoidal",
                    emb_scale=50.0),
    # Classic GPT-2 small.
    "gpt2-124m": dict(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, seq_len=1024, mlp="gelu",
                      norm="layernorm", pos="learned", bias=True, tie_embeddings=True),
    # The recipes' models (nano_core/recipes.py): RoPE, RMSNorm, QK-norm, ReLU^2 MLP, no biases, untied head.
    "modern-3x192": dict(n_layer=3, n_head=3, n_embd=192, seq_len=256, mlp="relu2", norm="rmsnorm", pos="rope",
                         bias=False, tie_embeddings=False, qk_norm=True),
    "modern-4x256": dict(n_layer=4, n_head=4, n_embd=256, seq_len=256, mlp="relu2", norm="rmsnorm", pos="rope",
                         bias=False, tie_embeddings=False, qk_norm=True),
    "modern-6x384": dict(n_layer=6, n_head=6, n_embd=384, seq_len=512, mlp="relu2", norm="rmsnorm", pos="rope",
                         bias=False, tie_embeddings=False, qk_norm=True),
    # nanochat's block (what the `nanochat` export layout holds): the modern-* shapes with parameter-free RMSNorm,
    # a norm after the embedding, parameter-free QK-norm, ReLU^2, no biases, untied head, logits soft-capped at 15.
    "nanochat-3x192": dict(n_layer=3, n_head=3, n_embd=192, seq_len=256, mlp="relu2", norm="rmsnorm", pos="rope",
                           bias=False, tie_embeddings=False, qk_norm=True, norm_params=False, emb_norm=True,
                           logit_softcap=15.0),
    "nanochat-6x384": dict(n_layer=6, n_head=6, n_embd=384, seq_len=512, mlp="relu2", norm="rmsnorm", pos="rope",
                           bias=False, tie_embeddings=False, qk_norm=True, norm_params=False, emb_norm=True,
                           logit_softcap=15.0),
    # The recipes' models (nano_core/recipes.py; docs/training.md#recipes): the modern-* shapes with a SwiGLU MLP (the
    # same parameter count: 3 matrices of 8/3 d), which the `qwen3` export layout holds (weighted RMSNorm, weighted
    # per-head QK-norm, no biases, untied head): transformers and mlx-lm run them as they are.
    "qwen3-3x192": dict(n_layer=3, n_head=3, n_embd=192, seq_len=256, mlp="swiglu", norm="rmsnorm", pos="rope",
                        bias=False, tie_embeddings=False, qk_norm=True),
    "qwen3-6x384": dict(n_layer=6, n_head=6, n_embd=384, seq_len=512, mlp="swiglu", norm="rmsnorm", pos="rope",
                        bias=False, tie_embeddings=False, qk_norm=True),
    # Llama-style: RoPE, RMSNorm, SwiGLU, GQA, no biases, untied head.
    "modern": dict(n_layer=8, n_head=8, n_kv_head=2, n_embd=512, seq_len=1024, mlp="swiglu", norm="rmsnorm",
                   pos="rope", bias=False, tie_embeddings=False, qk_norm=False),
}
