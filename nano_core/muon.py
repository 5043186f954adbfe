"""Muon (Keller Jordan, 2024: "Muon: an optimizer for hidden layers in neural networks"), written once for both
backends: which parameters it takes, the Newton-Schulz iteration, the update, its hyperparameters, its opt-in
variants, and a numpy reference of all of it that the tests hold nano_torch/optim.py and nano_mlx/optim.py to.
numpy only (no framework).

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
  `{name}.exp_avg_sq`; Muon params have `{name}.momentum` (the EMA buffer), and `{name}.second_moment` with NorMuon
  (below); `step` counts optimizer steps. A state of one optimizer loaded into the other, or a NorMuon state into a
  run without it and the reverse, is a one-line ValueError (check_state).

Opt-in variants (the public speedruns' and nanochat's Muon; every default is off, so the plain Muon above is what a
run gets unless it asks). Each combines with the others; in the order of the step:
- Momentum warm-up (--muon-momentum-warmup N, modded-nanogpt and nanochat, which use N = 300): mu goes linearly from
  0.85 at step 0 to --muon-momentum at step N and stays there: mu_k = (1 - f) * 0.85 + f * mu, f = min(k / N, 1)
  (`momentum_at`). It is a pure function of the step, pushed to the optimizer before each step as the lr is
  (set_momentum), so a resumed run is bit-exact without storing it.
- Polar Express (--muon-ns polar; Amsel, Persson, Musco, Gower 2025, "The Polar Express"; nanochat's and
  modded-nanogpt's Muon): the same quintic form, but a different (a, b, c) at each of the 5 steps (POLAR_COEFFS,
  computed by the paper's method for 5 iterations with a 2e-2 safety factor and cushion 2), and the input
  normalised as X = u / (||u||_F * 1.02 + 1e-6): the 2 % keeps the top singular value safely below 1, where the
  first, steep polynomial is tuned. Each normalised singular value x ends at the composition of the five
  polynomials at x / 1.02: every x >= 1e-3 lands in [0.84, 1.15] (POLAR_BAND), where Keller's steps give [0.68,
  1.21] and only from 2e-3 up.
- NorMuon (--normuon; Li et al. 2025, "NorMuon", as nanochat computes it): after the orthogonalisation, an EMA of
  the mean square of O along its shorter side, v <- beta2 * v + (1 - beta2) * mean(O^2), beta2 = 0.95, no bias
  correction; O' = O / sqrt(max(v, 1e-10)), rescaled so that ||O'||_F = ||O||_F (the normalisation changes how the
  update is spread over neurons, not its size). Orientation (nanochat's): v has one entry per row -- per output
  neuron, the paper's choice -- when rows >= cols, shape (rows, 1), and one per column, shape (1, cols), for a wide
  matrix (the MLP's proj, d x 4d): the statistics live along the longer side. At the first step (v from zero) every
  row (column) of O' has the same RMS, ||O||_F / sqrt(rows * cols). State: `{name}.second_moment`, fp32, that
  shape. The paper instead sets the step size by 0.2 sqrt(rows * cols) / ||O'||_F (AdamW's RMS); nanochat keeps
  Muon's lr and lr scale, and so do we.
- Cautious weight decay (--cautious-wd; Chen et al. 2025, "Cautious Weight Decay", nanochat): the decoupled decay
  only where the update and the parameter have the same sign, i.e. where the step already moves p towards 0:
  p <- p * (1 - lr * wd) on the coordinates with O * p >= 0 (nanochat's mask, ties included), p unchanged by the
  decay elsewhere; then the update as above. Muon's matrices only: AdamW's parameters keep plain decoupled decay.
  nanochat multiplies the decay by the shape-scaled lr; nano keeps its unscaled lr * wd, as for the plain decay.
Not taken from nanochat's latest Muon: its row equilibration before the iteration (MuonEq) and its snap of ||O||_F
to sqrt(min(rows, cols)) (Muon+); nanochat's recent normalisation factor is 1.01 and its NorMuon beta2 0.9 (1.02 and
0.95 when it introduced the variants above, and in modded-nanogpt: the values used here).
"""
from __future__ import annotations

import math
import numbers

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
# -- the opt-in variants (all off by default)
NS_KINDS = ("keller", "polar")          # --muon-ns: Keller's fixed quintic, or Polar Express's per-step ones
POLAR_COEFFS = (                        # (a, b, c) of each of the 5 steps (Amsel et al. 2025; safety 2e-2, cushion 2)
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_SAFETY = 1.02                     # Polar Express's input: u / (||u||_F * POLAR_SAFETY + POLAR_EPS)
POLAR_EPS = 1e-6
POLAR_BAND = (0.84, 1.15)               # where its 5 steps put every normalised singular value >= POLAR_BAND_FROM
POLAR_BAND_FROM = 1e-3
NORMUON_BETA2 = 0.95                    # NorMuon: EMA of the mean square of the orthogonalised update
NORMUON_EPS = 1e-10                     # floor of that second moment and of the rescaled norm (clamps, as nanochat)
MOMENTUM_WARMUP_FROM = 0.85             # --muon-momentum-warmup: mu rises from this to --muon-momentum
VARIANT_FLAGS = {"muon_ns": "--muon-ns", "normuon": "--normuon", "cautious_wd": "--cautious-wd",
                 "muon_momentum_warmup": "--muon-momentum-warmup"}


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


def check_variants(optimizer: str, muon_ns: str = "keller", normuon: bool = False, cautious_wd: bool = False,
                   muon_momentum_warmup: int = 0) -> None:
    """One-line refusals of the Muon variants (the train command's and build_optimizer's): a known --muon-ns, a
    warm-up of >= 0 steps, and none of them without --optimizer muon (AdamW would silently ignore them)."""
    if muon_ns not in NS_KINDS:
        raise ValueError(f"--muon-ns must be one of {', '.join(NS_KINDS)}, got {muon_ns!r}")
    warmup = muon_momentum_warmup
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
        raise ValueError(f"--muon-momentum-warmup must be an integer >= 0 (steps; 0: off), got {warmup!r}")
    asked = {"muon_ns": muon_ns != "keller", "normuon": normuon, "cautious_wd": cautious_wd,
             "muon_momentum_warmup": warmup > 0}
    on = [VARIANT_FLAGS[k] for k, v in asked.items() if v]
    if on and optimizer != "muon":
        raise ValueError(f"{' '.join(on)} {'is a Muon setting' if len(on) == 1 else 'are Muon settings'} but this run "
                         f"uses --optimizer {optimizer}; add --optimizer muon or drop {on[0]}")


def momentum_at(step: int, momentum: float, warmup: int) -> float:
    """Muon's momentum for optimizer step `step` (0-based): MOMENTUM_WARMUP_FROM at step 0, linearly up to
    `momentum` at step `warmup`, `momentum` from then on (and always when warmup is 0). A pure function of the step,
    like the lr: a resumed run recomputes it."""
    if warmup <= 0 or step >= warmup:
        return momentum
    frac = step / warmup
    return (1 - frac) * MOMENTUM_WARMUP_FROM + frac * momentum


def ns_coefficients(ns: str = "keller", steps: int = NS_STEPS) -> tuple[tuple[float, float, float], ...]:
    """The (a, b, c) of each Newton-Schulz step: Keller's one quintic `steps` times, or Polar Express's own ones."""
    if ns not in NS_KINDS:
        raise ValueError(f"unknown Newton-Schulz kind {ns!r}; choose one of {', '.join(NS_KINDS)}")
    if ns == "keller":
        return (NS_COEFFS,) * steps
    if steps > len(POLAR_COEFFS):
        raise ValueError(f"Polar Express has coefficients for {len(POLAR_COEFFS)} steps, not {steps}")
    return POLAR_COEFFS[:steps]


def normuon_shape(shape) -> tuple[int, int]:
    """The NorMuon second moment's shape for a (rows, cols) matrix: (rows, 1) when rows >= cols, else (1, cols)."""
    rows, cols = tuple(shape)
    return (rows, 1) if rows >= cols else (1, cols)


def lr_scale(shape) -> float:
    """Keller Jordan's per-shape factor: sqrt(max(1, rows / cols)) for a (rows = out, cols = in) weight."""
    rows, cols = tuple(shape)
    return math.sqrt(max(1.0, rows / cols))


def ns_polynomial(x, steps: int = NS_STEPS, ns: str = "keller"):
    """What NS does to one normalised singular value x = s / ||G||_F: each step's quintic in turn (Polar Express
    first divides x by its safety factor, as its normalisation does)."""
    if ns == "polar":
        x = x / POLAR_SAFETY
    for a, b, c in ns_coefficients(ns, steps):
        x = a * x + b * x ** 3 + c * x ** 5
    return x


# ----------------------------------------------------------------------------- numpy reference
def newton_schulz(G: np.ndarray, steps: int = NS_STEPS, eps: float = NS_EPS, dtype=np.float64,
                  ns: str = "keller") -> np.ndarray:
    """The orthogonalisation, as the backends run it (same operation order), in `dtype` (float64: the reference);
    `ns`: Keller's iteration or Polar Express (its coefficients and its normalisation)."""
    if G.ndim != 2:
        raise ValueError(f"Newton-Schulz takes a 2-D matrix, got shape {G.shape}")
    coeffs = ns_coefficients(ns, steps)
    X = np.asarray(G, dtype=dtype)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    norm = np.linalg.norm(X)
    X = X / (norm * dtype(POLAR_SAFETY) + dtype(POLAR_EPS)) if ns == "polar" else X / max(norm, dtype(eps))
    for a, b, c in coeffs:
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.T if tall else X


def normuon(U: np.ndarray, v: np.ndarray, beta2: float = NORMUON_BETA2) -> tuple[np.ndarray, np.ndarray]:
    """NorMuon's step on one orthogonalised update U (rows, cols) with second moment v (normuon_shape): (the
    normalised update, the new v), in float64, in the backends' operation order."""
    U, v = np.asarray(U, dtype=np.float64), np.asarray(v, dtype=np.float64)
    axis = 1 if U.shape[0] >= U.shape[1] else 0  # averaged over the shorter side: one entry per row of the longer
    n = U.shape[axis]
    mean_sq = np.mean(np.square(U), axis=axis, keepdims=True)
    v = beta2 * v + (1 - beta2) * mean_sq
    scale = 1 / np.sqrt(np.maximum(v, NORMUON_EPS))
    norm = np.sqrt(np.sum(mean_sq) * n)                               # ||U||_F
    new_norm = np.sqrt(np.sum(mean_sq * n * np.square(scale)))        # ||U * scale||_F
    return U * (scale * (norm / max(new_norm, NORMUON_EPS))), v


def decay_mask(update: np.ndarray, param: np.ndarray) -> np.ndarray:
    """Cautious weight decay's mask: the coordinates where the update and the parameter have the same sign (or one
    is 0), i.e. where p - lr * update moves p towards 0 as the decay does."""
    return update * param >= 0


def muon_step(param: np.ndarray, grad: np.ndarray, buf: np.ndarray, lr: float, weight_decay: float,
              momentum: float = MOMENTUM, nesterov: bool = True, ns: str = "keller", second_moment=None,
              cautious_wd: bool = False) -> tuple[np.ndarray, ...]:
    """One Muon update of one matrix, in float64: (new param, new momentum buffer), and the new second moment as a
    third item when `second_moment` (NorMuon's, normuon_shape) is given."""
    p, g, buf = (np.asarray(x, dtype=np.float64) for x in (param, grad, buf))
    buf = momentum * buf + (1 - momentum) * g
    u = (1 - momentum) * g + momentum * buf if nesterov else buf
    update = newton_schulz(u, ns=ns)
    if second_moment is not None:
        update, second_moment = normuon(update, second_moment)
    decayed = p * (1 - lr * weight_decay)
    p = np.where(decay_mask(update, p), decayed, p) if cautious_wd else decayed
    p = p - lr * lr_scale(p.shape) * update
    return (p, buf) if second_moment is None else (p, buf, second_moment)


# ----------------------------------------------------------------------------- state checks
def check_state(state: dict[str, np.ndarray], optimizer: str, shapes: dict[str, tuple[int, ...]],
                normuon: bool = False) -> int:
    """The checks both backends' load_optimizer_state make before loading `state` into an `optimizer` ("adamw" |
    "muon", with or without `normuon`) over the trainable parameters `shapes`: the state was saved by the same
    optimizer and the same NorMuon setting (one-line ValueError saying which it was), every entry has its
    parameter's shape (a missing one is allowed only at step 0, where it is zeros anyway). Returns the step."""
    muon, adamw = split_params(shapes) if optimizer == "muon" else ([], list(shapes))
    saved_muon = next((k for k in state if k.endswith(".momentum")), None)
    if optimizer == "adamw" and saved_muon:
        raise ValueError(f"optimizer state was saved by Muon (it has {saved_muon}) but this run uses AdamW; "
                         f"resume with optimizer 'muon' or start without the optimizer state")
    saved_adam = next((f"{n}.exp_avg" for n in muon if f"{n}.exp_avg" in state), None)
    if saved_adam:
        raise ValueError(f"optimizer state was saved by AdamW (it has {saved_adam}) but this run uses Muon; "
                         f"resume with optimizer 'adamw' or start without the optimizer state")
    saved_normuon = next((k for k in state if k.endswith(".second_moment")), None)
    if saved_normuon and not normuon:
        raise ValueError(f"optimizer state was saved with NorMuon (it has {saved_normuon}) but this run does not use "
                         f"--normuon; resume with --normuon or start without the optimizer state")
    step = check_optimizer_state(state, {n: shapes[n] for n in adamw})
    if normuon and step > 0 and muon and not saved_normuon:
        raise ValueError(f"optimizer state was saved without NorMuon (it has no {muon[0]}.second_moment) but this run "
                         f"uses --normuon; resume without --normuon or start without the optimizer state")
    for name in muon:
        wanted = {"momentum": tuple(shapes[name])}
        if normuon:
            wanted["second_moment"] = normuon_shape(shapes[name])
        for key, shape in wanted.items():
            if f"{name}.{key}" not in state:
                if step > 0:
                    raise ValueError(f"optimizer state has no entry for {name}.{key}; was it saved from a different "
                                     f"model?")
                continue
            got = tuple(np.shape(state[f"{name}.{key}"]))
            if got != shape:
                raise ValueError(f"optimizer state {name}.{key} has shape {got}, parameter {tuple(shapes[name])} "
                                 f"needs {shape}; was it saved from a different model?")
    return step
