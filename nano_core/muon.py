"""Muon (Keller Jordan, 2024: "Muon: an optimizer for hidden layers in neural networks"), written once for both
backends: which parameters it takes, the Newton-Schulz iteration, the update, its hyperparameters, and a numpy
reference of all of it that the tests hold nano_torch/optim.py and nano_mlx/optim.py to. numpy only (no framework).

Muon takes the 2-D hidden matrices inside the blocks (`h.{i}.attn.{wq,wk,wv,wo}.weight`, `h.{i}.mlp.{fc,gate,proj}
.weight`, and `rnn.{i}.w_ih/w_hh.weight` for the RNN); everything else -- the token and position embeddings, an
untied head, norm weights, biases -- stays with AdamW (nano's AdamW, unchanged, at the schedule's lr). The reason is
Muon's: the orthogonalised update treats a matrix as a linear map between hidden spaces, which an embedding lookup
(rows are independent tokens) and the head (rows are output classes) are not, and a 1-D vector has no such map.

One Muon step for a matrix parameter p with gradient g (after global-norm clipping of the whole gradient), in fp32:

    buf <- mu * buf + (1 - mu) * g                    momentum, EMA form (torch.optim.Muon, mlx Muon, Keller's repo)
    u   <- (1 - mu) * g + mu * buf                    Nesterov (u <- buf without it)
    O   <- NS5(u)                                     ~ U V^T of u = U S V^T, singular values pushed into ~[0.68, 1.2]
    p   <- p * (1 - lr * wd)                          decoupled weight decay (torch's convention, AdamW's too)
    p   <- p - lr * sqrt(max(1, rows / cols)) * O     rows = out features (canonical weights are (out, in))

Conventions chosen, and why:
- Weight decay is DECOUPLED and multiplies by Muon's own (unscaled) lr, exactly as torch.optim.Muon does and as
  nano's AdamW decays its matrices. mlx.optimizers.Muon instead COUPLES it: g <- g + wd * p before the momentum, so
  the decay goes through the momentum and then through the orthogonalisation, which normalises it away in part --
  the two are not the same optimizer, and mixing them would break parity. We write the torch form once, here.
  One `weight_decay` serves both parts (as in Keller's MuonWithAuxAdam example); with nano's default 0.1 and
  muon_lr 0.02 a hidden matrix shrinks by 0.2 % per step at peak lr.
- LR scale sqrt(max(1, rows/cols)) is Keller Jordan's original (torch.optim.Muon's default, mlx Muon's only one):
  an orthogonal (rows, cols) matrix has entry RMS 1/sqrt(max(rows, cols)), and the factor gives a tall matrix (the
  MLP's fc, 4d x d) the per-entry update size of a square one. It goes with the well-tested muon_lr = 0.02. The
  alternative, Moonlight's 0.2 * sqrt(max(rows, cols)) ("match AdamW's update RMS", so Muon can reuse AdamW's lr
  and wd), would need a different muon_lr default; we keep the original so the numbers match the references.
- Newton-Schulz: the quintic X <- a X + (b A + c A^2) X, A = X X^T, with Keller's coefficients (3.4445, -4.7750,
  2.0315), 5 steps, on X = u / max(||u||_F, eps) (Frobenius normalisation puts every singular value in [0, 1]),
  transposed first when the matrix is tall so A is the smaller Gram matrix. It runs in the training's compute dtype
  on both backends: fp32 runs (the parity tests) agree to 1e-5; bf16 runs use bf16 matmuls as torch.optim.Muon and
  Keller's reference do (per Keller good enough; what it saves is measured in dev/LOG.md, on one AMD CPU
  only). The normalisation is always taken in fp32. The iteration acts on each singular value s / ||u||_F
  alone through the scalar quintic p(x) = a x + b x^3 + c x^5 applied 5 times (`ns_polynomial`), which maps every
  x >= 0.002 into [0.68, 1.21]; smaller ones (directions the gradient barely has) stay small.
- LoRA: Muon never applies under LoRA (build_optimizer with optimizer="muon" on a LoRA model is a one-line
  ValueError). Adapters are rank-r factors of an update, not hidden maps, and orthogonalising them is untested.
- State, under canonical names so a checkpoint moves between backends: AdamW params keep `{name}.exp_avg`,
  `{name}.exp_avg_sq`; Muon params have `{name}.momentum` (the EMA buffer); `step` counts optimizer steps. A state
  of one optimizer loaded into the other is a one-line ValueError (check_state).
"""
from __future__ import annotations

import math

import numpy as np

from nano_core.backend import check_optimizer_state

OPTIMIZERS = ("adamw", "muon")
NS_COEFFS = (3.4445, -4.7750, 2.0315)  # (a, b, c): Keller Jordan's quintic, the slope at 0 pushed to a = 3.4445
NS_STEPS = 5
NS_EPS = 1e-7                           # floor of the Frobenius norm: a zero gradient gives a zero update
MOMENTUM = 0.95
MUON_LR = 0.02
NS_BAND = (0.68, 1.21)                  # where 5 steps put every normalised singular value >= NS_BAND_FROM
NS_BAND_FROM = 0.002
BLOCK_PREFIXES = ("h.", "rnn.")         # the blocks: transformer layers h.{i}, RNN layers rnn.{i}


def check_optimizer_name(optimizer: str) -> str:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    return optimizer


def is_muon_param(name: str, shape) -> bool:
    """True for a hidden matrix Muon takes: 2-D and inside a block (never wte/wpe/lm_head, a norm, a bias, an
    adapter)."""
    return len(tuple(shape)) == 2 and name.startswith(BLOCK_PREFIXES) and not name.endswith((".lora_a", ".lora_b"))


def split_params(shapes: dict[str, tuple[int, ...]]) -> tuple[list[str], list[str]]:
    """(Muon names, AdamW names) of the trainable parameters `shapes` (canonical name -> shape), in their order."""
    muon = [n for n, s in shapes.items() if is_muon_param(n, s)]
    return muon, [n for n in shapes if n not in set(muon)]


def check_muon_args(lr: float, muon_lr: float, muon_momentum: float, lora) -> None:
    """The one-line refusals build_optimizer(optimizer="muon") makes on both backends."""
    if lora is not None:
        raise ValueError("optimizer 'muon' is for full training; a LoRA model trains its adapters with 'adamw'")
    if not lr > 0:
        raise ValueError(f"optimizer 'muon' needs a peak lr > 0 (the Muon lr follows lr * muon_lr / peak), got {lr}")
    if not muon_lr > 0:
        raise ValueError(f"--muon-lr (muon_lr) must be > 0, got {muon_lr}")
    if not 0 <= muon_momentum < 1:
        raise ValueError(f"--muon-momentum (muon_momentum) must be in [0, 1), got {muon_momentum}")


def lr_scale(shape) -> float:
    """Keller Jordan's per-shape factor: sqrt(max(1, rows / cols)) for a (rows = out, cols = in) weight."""
    rows, cols = tuple(shape)
    return math.sqrt(max(1.0, rows / cols))


def ns_polynomial(x, steps: int = NS_STEPS):
    """What NS does to one normalised singular value x = s / ||G||_F: the quintic applied `steps` times."""
    a, b, c = NS_COEFFS
    for _ in range(steps):
        x = a * x + b * x ** 3 + c * x ** 5
    return x


# ----------------------------------------------------------------------------- numpy reference
def newton_schulz(G: np.ndarray, steps: int = NS_STEPS, eps: float = NS_EPS, dtype=np.float64) -> np.ndarray:
    """The orthogonalisation, as the backends run it (same operation order), in `dtype` (float64: the reference)."""
    if G.ndim != 2:
        raise ValueError(f"Newton-Schulz takes a 2-D matrix, got shape {G.shape}")
    a, b, c = NS_COEFFS
    X = np.asarray(G, dtype=dtype)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / max(np.linalg.norm(X), dtype(eps))
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.T if tall else X


def muon_step(param: np.ndarray, grad: np.ndarray, buf: np.ndarray, lr: float, weight_decay: float,
              momentum: float = MOMENTUM, nesterov: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One Muon update of one matrix, in float64: (new param, new momentum buffer)."""
    p, g, buf = (np.asarray(x, dtype=np.float64) for x in (param, grad, buf))
    buf = momentum * buf + (1 - momentum) * g
    u = (1 - momentum) * g + momentum * buf if nesterov else buf
    p = p * (1 - lr * weight_decay) - lr * lr_scale(p.shape) * newton_schulz(u)
    return p, buf


# ----------------------------------------------------------------------------- state checks
def check_state(state: dict[str, np.ndarray], optimizer: str, shapes: dict[str, tuple[int, ...]]) -> int:
    """The checks both backends' load_optimizer_state make before loading `state` into an `optimizer` ("adamw" |
    "muon") over the trainable parameters `shapes`: the state was saved by the same optimizer (one-line ValueError
    saying which it was), every entry has its parameter's shape (a missing one is allowed only at step 0). Returns
    the step."""
    muon, adamw = split_params(shapes) if optimizer == "muon" else ([], list(shapes))
    saved_muon = next((k for k in state if k.endswith(".momentum")), None)
    if optimizer == "adamw" and saved_muon:
        raise ValueError(f"optimizer state was saved by Muon (it has {saved_muon}) but this run uses AdamW; "
                         f"resume with optimizer 'muon' or start without the optimizer state")
    saved_adam = next((f"{n}.exp_avg" for n in muon if f"{n}.exp_avg" in state), None)
    if saved_adam:
        raise ValueError(f"optimizer state was saved by AdamW (it has {saved_adam}) but this run uses Muon; "
                         f"resume with optimizer 'adamw' or start without the optimizer state")
    step = check_optimizer_state(state, {n: shapes[n] for n in adamw})
    for name in muon:
        if f"{name}.momentum" not in state:
            if step > 0:
                raise ValueError(f"optimizer state has no entry for {name}; was it saved from a different model?")
            continue
        got = tuple(np.shape(state[f"{name}.momentum"]))
        if got != tuple(shapes[name]):
            raise ValueError(f"optimizer state {name}.momentum has shape {got}, parameter {tuple(shapes[name])}; "
                             f"was it saved from a different model?")
    return step
