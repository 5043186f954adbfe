"""LoRA (Hu et al. 2021, "Low-Rank Adaptation"): the adapter spec, its canonical names, the numpy initializer and
the merge, written once for both backends (numpy only, like nano_core.init).

A LoRA model keeps every base weight frozen and learns, beside each adapted Linear W (out, in), two small matrices

    h.{i}.attn.wq.lora_a     (r, in)     A: drawn from a seeded numpy generator (below)
    h.{i}.attn.wq.lora_b     (out, r)    B: zeros, so step 0 computes exactly the base model

(the same for attn.wk, attn.wv, attn.wo, mlp.fc, mlp.gate, mlp.proj), and the layer computes

    y = x W^T + b + scale * (dropout(x) A^T) B^T,        scale = alpha / rank.

`fuse` folds the adapters back in, W' = W + scale * B A, giving a plain model of the base ModelConfig.

Initialisation of A (PEFT's default, init_lora_weights=True): Kaiming-uniform with a = sqrt(5), which for a
(r, in) matrix is U(-1/sqrt(in), 1/sqrt(in)) -- torch.nn.Linear's default init. Drawn in adapter_shapes() order from
one np.random.default_rng(seed), float32, so both backends start from the same bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from nano_core.config import ModelConfig

ATTN_TARGETS = ("wq", "wk", "wv", "wo")
MLP_TARGETS = ("fc", "gate", "proj")
TARGETS = ATTN_TARGETS + MLP_TARGETS
DEFAULT_TARGETS = TARGETS
ADAPTER_SUFFIXES = (".lora_a", ".lora_b")


def is_adapter_name(name: str) -> bool:
    """True for a canonical adapter name (`....lora_a` / `....lora_b`), False for a base weight."""
    return name.endswith(ADAPTER_SUFFIXES)


def module_path(layer: int, target: str) -> str:
    """`h.{layer}.attn.wq` / `h.{layer}.mlp.fc`: the canonical prefix of the Linear a target names."""
    return f"h.{layer}.{'attn' if target in ATTN_TARGETS else 'mlp'}.{target}"


@dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    layers: int | None = None          # adapt the last `layers` blocks only; None = all of them

    def __post_init__(self):
        # JSON gives lists, a command line a comma-separated string: keep targets a tuple (hashable, comparable)
        t = self.targets
        t = tuple(s.strip() for s in t.split(",") if s.strip()) if isinstance(t, str) else tuple(t)
        object.__setattr__(self, "targets", t)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets),
                "layers": self.layers}

    @classmethod
    def from_dict(cls, d: dict) -> "LoraConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LoraConfig keys {unknown}; known keys: {', '.join(sorted(known))}")
        if "rank" not in d:
            raise ValueError("LoraConfig needs a rank")
        return cls(**d)

    # ---------------------------------------------------------------- validation
    def check(self, cfg: ModelConfig) -> "LoraConfig":
        """Raise ValueError with a one-line message for the first problem with this LoRA on `cfg`; return self."""
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(msg)

        need(isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1,
             f"lora rank={self.rank!r} must be an integer >= 1")
        need(isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool) and self.alpha > 0,
             f"lora alpha={self.alpha!r} must be a number > 0")
        need(isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
             f"lora dropout={self.dropout!r} must be in [0, 1)")
        need(cfg.arch == "gpt", f"LoRA adapts the transformer's Linear layers; arch={cfg.arch!r} has none "
                                f"(fine-tune it fully instead)")
        need(len(self.targets) > 0, f"lora targets is empty; choose from {', '.join(TARGETS)}")
        for t in self.targets:
            need(t in TARGETS, f"lora target {t!r} is not one of {', '.join(TARGETS)}")
        need(len(set(self.targets)) == len(self.targets), f"lora targets {list(self.targets)} name one twice")
        if self.targets != DEFAULT_TARGETS:  # asked for by name: each must exist (the default skips what is absent)
            need("gate" not in self.targets or cfg.mlp == "swiglu",
                 f"lora target 'gate' needs mlp='swiglu' (this model has mlp={cfg.mlp!r}); drop it from the targets")
        need(self.layers is None or (isinstance(self.layers, int) and not isinstance(self.layers, bool)
                                     and 1 <= self.layers <= cfg.n_layer),
             f"lora layers={self.layers!r} must be between 1 and n_layer={cfg.n_layer} (the last N blocks), or None "
             f"for all")
        need(bool(self.present_targets(cfg)), f"lora targets {list(self.targets)} name no layer of this model")
        return self

    # ---------------------------------------------------------------- what is adapted
    def present_targets(self, cfg: ModelConfig) -> tuple[str, ...]:
        """The targets this model has, in canonical order (gate only with swiglu)."""
        return tuple(t for t in TARGETS if t in self.targets and (t != "gate" or cfg.mlp == "swiglu"))

    def adapted_layers(self, cfg: ModelConfig) -> range:
        n = cfg.n_layer if self.layers is None else self.layers
        return range(cfg.n_layer - n, cfg.n_layer)

    def layer_targets(self, cfg: ModelConfig, layer: int) -> frozenset[str]:
        """The targets adapted in block `layer` (empty for a block outside `layers`)."""
        return frozenset(self.present_targets(cfg)) if layer in self.adapted_layers(cfg) else frozenset()

    def modules(self, cfg: ModelConfig) -> list[str]:
        """Canonical prefixes of the adapted Linears (`h.3.attn.wq`, ...), in parameter order."""
        return [module_path(i, t) for i in self.adapted_layers(cfg) for t in self.present_targets(cfg)]


def layer_targets(cfg: ModelConfig, lora: LoraConfig | None, layer: int) -> frozenset[str]:
    """What the models ask when building block `layer`: the adapted targets there (none without LoRA)."""
    return frozenset() if lora is None else lora.layer_targets(cfg, layer)


def adapter_shapes(cfg: ModelConfig, lora: LoraConfig) -> dict[str, tuple[int, ...]]:
    """Canonical adapter name -> shape, in the fixed order init_adapters draws them: per adapted Linear (out, in),
    `{prefix}.lora_a` (rank, in) then `{prefix}.lora_b` (out, rank)."""
    lora.check(cfg)
    base = cfg.param_shapes()
    out: dict[str, tuple[int, ...]] = {}
    for prefix in lora.modules(cfg):
        o, i = base[f"{prefix}.weight"]
        out[f"{prefix}.lora_a"] = (lora.rank, i)
        out[f"{prefix}.lora_b"] = (o, lora.rank)
    return out


def init_adapters(cfg: ModelConfig, lora: LoraConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical name -> float32 array: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's Kaiming-uniform, a = sqrt(5)), B = 0,
    so the model at step 0 computes exactly the base model. Draws in adapter_shapes() order from one
    np.random.default_rng(seed), in float32 (deterministic)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in adapter_shapes(cfg, lora).items():
        if name.endswith(".lora_a"):
            bound = np.float32(1.0 / math.sqrt(shape[1]))
            w = (rng.random(shape, dtype=np.float32) * np.float32(2.0) - np.float32(1.0)) * bound
        else:
            w = np.zeros(shape, np.float32)
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def check_adapters(cfg: ModelConfig, lora: LoraConfig, adapters: dict) -> None:
    """One-line ValueError when `adapters` are not exactly the adapters of (cfg, lora), by name and shape."""
    shapes = adapter_shapes(cfg, lora)
    missing, unexpected = sorted(set(shapes) - set(adapters)), sorted(set(adapters) - set(shapes))
    if missing or unexpected:
        raise ValueError(f"adapters do not match the LoRA config (rank {lora.rank}, targets {','.join(lora.targets)}, "
                         f"layers {lora.layers}): missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, shape in shapes.items():
        got = tuple(np.shape(adapters[name]))
        if got != shape:
            raise ValueError(f"adapter {name} has shape {got}, the LoRA config says {shape}")


def fuse(weights: dict[str, np.ndarray], adapters: dict[str, np.ndarray], lora: LoraConfig) -> dict[str, np.ndarray]:
    """The base weights with the adapters folded in: W + scale * B @ A for every adapted Linear (float64
    accumulation, float32 out); every other weight is copied unchanged. The result is a plain model of the base
    config: it computes what the adapter model computes (without dropout), to float32 rounding."""
    pairs = sorted({n[: -len(".lora_a")] for n in adapters if is_adapter_name(n)})
    stray = sorted(n for n in adapters if not is_adapter_name(n))
    if stray:
        raise ValueError(f"adapters hold non-adapter entries {stray[:3]}; pass the base weights separately")
    out = {k: np.array(v, dtype=np.float32, copy=True) for k, v in weights.items()}
    for prefix in pairs:
        a, b = adapters.get(f"{prefix}.lora_a"), adapters.get(f"{prefix}.lora_b")
        if a is None or b is None:
            raise ValueError(f"adapter {prefix} has only one of lora_a / lora_b")
        w = out.get(f"{prefix}.weight")
        if w is None:
            raise ValueError(f"adapter {prefix} adapts no weight of the model ({prefix}.weight is missing)")
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != (lora.rank, w.shape[1]) or b.shape != (w.shape[0], lora.rank):
            raise ValueError(f"adapter {prefix}: lora_a {a.shape} and lora_b {b.shape} do not fit the weight "
                             f"{w.shape} at rank {lora.rank}")
        out[f"{prefix}.weight"] = (w.astype(np.float64) + lora.scale * (b @ a)).astype(np.float32)
    return out


def fuse_checkpoint(base_weights: dict[str, np.ndarray], adapters: dict[str, np.ndarray],
                    lora_config: LoraConfig | dict, cfg: ModelConfig | dict | None = None) -> dict[str, np.ndarray]:
    """The merge behind `python -m nano_core.fuse`: base weights + adapters (+ the LoRA config, as a LoraConfig or
    its to_dict()) -> the fused weights of a plain model. With `cfg` (the base ModelConfig) the adapters are first
    checked to be exactly those of (cfg, lora) and the base weights those of cfg."""
    lora = lora_config if isinstance(lora_config, LoraConfig) else LoraConfig.from_dict(lora_config)
    if cfg is not None:
        cfg = cfg if isinstance(cfg, ModelConfig) else ModelConfig.from_dict(cfg)
        check_adapters(cfg, lora, adapters)
        shapes = cfg.param_shapes()
        missing, unexpected = sorted(set(shapes) - set(base_weights)), sorted(set(base_weights) - set(shapes))
        if missing or unexpected:
            raise ValueError(f"base weights do not match the model config: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
    return fuse(base_weights, adapters, lora)


# ----------------------------------------------------------------------------- masked loss (instruction data)
def mask_weights(mask: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """The per-target loss weights of one optimizer step with a loss mask: mask / mask.sum() over the whole step
    (all micro-batches), float32 (rows, T), so the step's loss sum(nats * weights) is the mean over counted targets
    and gradient accumulation gives what one big batch gives. `mask` is (rows, T) with 1 where the target (the next
    token, batch[:, 1:]) counts and 0 where it does not; a step with no counted target has loss 0 and no gradient."""
    mask = np.asarray(mask)
    want = (batch.shape[0], batch.shape[1] - 1)
    if mask.shape != want:
        raise ValueError(f"loss mask has shape {mask.shape}, the batch needs {want} (one entry per target)")
    total = float(mask.sum(dtype=np.float64))
    return np.ascontiguousarray(mask.astype(np.float32) / np.float32(max(total, 1.0)), dtype=np.float32)
