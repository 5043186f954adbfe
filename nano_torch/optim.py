"""AdamW and Muon for nano_torch: AdamW bias-corrected (always, in torch), decoupled weight decay only on weights with
ndim >= 2; Muon (nano_core/muon.py: the spec, written once) on the hidden matrices with AdamW on the rest; global-norm
clipping; and optimizer state exported under canonical names so it moves between backends.
nano_mlx/optim.py mirrors this file."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from nano_core.lr_groups import check_lr_groups, lr_ratios
from nano_core.muon import (MOMENTUM, MUON_LR, NORMUON_BETA2, NORMUON_EPS, NS_EPS, NS_STEPS, POLAR_EPS, POLAR_SAFETY,
                            check_muon_args, check_optimizer_name, check_state, check_variants, lr_scale,
                            normuon_shape, ns_coefficients, split_params)


NS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Muon(torch.optim.Optimizer):
    """Muon on 2-D parameters, as nano_core/muon.py specifies: EMA momentum with Nesterov, Newton-Schulz in
    `ns_dtype`, decoupled weight decay p <- p * (1 - lr * wd), then p <- p - lr * sqrt(max(1, rows/cols)) * NS(u).
    torch.optim.Muon (torch >= 2.9) computes the same update with NS in bf16; nano's runs NS in the training's compute
    dtype: fp32 runs match nano_mlx to 1e-5 (tests/test_muon.py holds it to torch.optim.Muon with NS swapped for ours,
    and loosely without), bf16 runs take the faster bf16 matmuls. Matrices of one shape are orthogonalised together
    (one batched matmul per NS operation instead of one per matrix: the same math, fewer, larger kernels).
    The opt-in variants of nano_core/muon.py: `ns` "polar" (Polar Express), `normuon`, `cautious_wd`; the momentum
    is the group's 'momentum', which set_momentum changes between steps (its warm-up).
    State per parameter: 'momentum_buffer' (fp32), and 'second_moment' (fp32, normuon_shape) with NorMuon."""

    def __init__(self, params, lr: float = MUON_LR, weight_decay: float = 0.0, momentum: float = MOMENTUM,
                 nesterov: bool = True, ns_dtype: str = "fp32", ns: str = "keller", normuon: bool = False,
                 cautious_wd: bool = False, beta2: float = NORMUON_BETA2):
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(NS_DTYPES)}, got {ns_dtype!r}")
        check_variants("muon", ns, normuon, cautious_wd)
        self.ns_dtype = NS_DTYPES[ns_dtype]
        self.ns, self.normuon, self.cautious_wd, self.beta2 = ns, normuon, cautious_wd, beta2
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            by_shape = defaultdict(list)  # shape -> [(parameter, its Nesterov momentum)]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                if self.normuon and "second_moment" not in state:
                    state["second_moment"] = torch.zeros(normuon_shape(p.shape), dtype=torch.float32,
                                                         device=p.device)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g, alpha=1 - mu)              # buf <- mu * buf + (1 - mu) * g
                by_shape[tuple(p.shape)].append((p, g * (1 - mu) + buf * mu if group["nesterov"] else buf))
            for shape, items in by_shape.items():
                updates = newton_schulz(torch.stack([u for _, u in items]), dtype=self.ns_dtype, ns=self.ns)
                if self.normuon:
                    v = torch.stack([self.state[p]["second_moment"] for p, _ in items])
                    updates, v = normuon(updates, v, self.beta2)
                    for (p, _), v_p in zip(items, v.unbind(0)):
                        self.state[p]["second_moment"].copy_(v_p)
                for (p, _), update in zip(items, updates.unbind(0)):
                    if self.cautious_wd:  # decay only where the update already moves p towards 0
                        p.copy_(torch.where(update * p >= 0, p * (1 - lr * wd), p))
                    else:
                        p.mul_(1 - lr * wd)  # decoupled (mlx.optimizers.Muon sends it through the momentum)
                    p.add_(update.to(p.dtype), alpha=-lr * lr_scale(shape))
        return loss


def newton_schulz(G: torch.Tensor, steps: int = NS_STEPS, eps: float = NS_EPS,
                  dtype: torch.dtype = torch.float32, ns: str = "keller") -> torch.Tensor:
    """The quintic Newton-Schulz orthogonalisation of nano_core.muon.newton_schulz (same operation order) of a matrix,
    or of each matrix of a stack (..., rows, cols), computed in `dtype`; returned in fp32. `ns`: Keller's iteration
    or Polar Express (its per-step coefficients and its normalisation)."""
    coeffs = ns_coefficients(ns, steps)
    X = G.to(dtype)
    tall = X.shape[-2] > X.shape[-1]
    if tall:  # iterate on the wide orientation: the Gram matrix X X^T is then the smaller one
        X = X.mT
    norm = torch.linalg.vector_norm(X.float(), dim=(-2, -1), keepdim=True)
    norm = norm * POLAR_SAFETY + POLAR_EPS if ns == "polar" else norm.clamp(min=eps)
    X = X / norm.to(dtype)  # every singular value now in [0, 1]
    for a, b, c in coeffs:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return (X.mT if tall else X).float()


def normuon(U: torch.Tensor, v: torch.Tensor, beta2: float = NORMUON_BETA2) -> tuple[torch.Tensor, torch.Tensor]:
    """NorMuon (nano_core.muon.normuon, same operation order) of an orthogonalised update U (..., rows, cols) fp32
    with its second moment v (..., normuon_shape): (the update, each row -- column when wide -- divided by the root
    of its EMA mean square and the whole rescaled to U's Frobenius norm, the new v)."""
    axis = -1 if U.shape[-2] >= U.shape[-1] else -2  # averaged over the shorter side
    n = U.shape[axis]
    mean_sq = U.square().mean(dim=axis, keepdim=True)
    v = beta2 * v + (1 - beta2) * mean_sq
    scale = v.clamp(min=NORMUON_EPS).rsqrt()
    norm = (mean_sq.sum(dim=(-2, -1), keepdim=True) * n).sqrt()
    new_norm = (mean_sq * n * scale.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return U * (scale * (norm / new_norm.clamp(min=NORMUON_EPS))), v


class MuonAdamW:
    """Muon on the hidden matrices and AdamW on the rest, as one optimizer to the train step: step(), zero_grad(),
    param_groups (AdamW's, then Muon's -- what GradScaler.unscale_ walks). set_lr(opt, lr) gives AdamW `lr` and Muon
    lr * lr_ratio (muon_lr / the peak lr), so one schedule drives both."""

    def __init__(self, muon: Muon, adamw: torch.optim.Optimizer, lr_ratio: float):
        self.muon, self.adamw, self.lr_ratio = muon, adamw, lr_ratio

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    def step(self, closure=None):
        loss = self.adamw.step(closure)
        self.muon.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)


def _adamw(params: list, lr: float, betas, eps: float, weight_decay: float,
           ratios: dict[str, float] | None = None) -> torch.optim.AdamW:
    """torch.optim.AdamW over (name, parameter) pairs: matrices/embeddings decay, biases and norm weights do not;
    a parameter with a ratio in `ratios` (nano_core.lr_groups) is in a group whose lr is lr * ratio (set_lr keeps
    it so)."""
    ratios = ratios or {}
    by_group: dict[tuple, list] = {}
    for name, p in params:  # one group per (decays, lr ratio), in the parameters' order
        by_group.setdefault((p.ndim >= 2, ratios.get(name, 1.0)), []).append(p)
    groups = [{"params": ps, "weight_decay": weight_decay if decays else 0.0, "lr": lr * ratio, "lr_ratio": ratio}
              for (decays, ratio), ps in by_group.items()]
    # fused=True: one kernel for the whole update instead of one per tensor, with the same fp32 state and math (the
    # parity tests vs MLX hold at 1e-5; benchmarks/step_speed.py measures the step). A device without a fused kernel
    # gets PyTorch's own choice (foreach=None): foreach=True would raise where the foreach API is missing.
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, foreach=None)


def build_optimizer(model, lr: float, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1,
                    optimizer: str = "adamw", muon_lr: float = MUON_LR, muon_momentum: float = MOMENTUM,
                    ns_dtype: str = "fp32", muon_ns: str = "keller", normuon: bool = False, cautious_wd: bool = False,
                    embed_lr: float | None = None, head_lr: float | None = None):
    """"adamw": AdamW over the trainable parameters. "muon": Muon at muon_lr on the hidden matrices
    (nano_core.muon.is_muon_param), its Newton-Schulz in ns_dtype (the backend passes its compute dtype), AdamW at
    lr on the rest, both decaying with weight_decay; not under LoRA. muon_ns, normuon, cautious_wd: Muon's opt-in
    variants (nano_core/muon.py), refused with "adamw". embed_lr, head_lr: AdamW's peak lr for the embeddings and
    an untied head (nano_core/lr_groups.py; default lr)."""
    check_optimizer_name(optimizer)
    check_variants(optimizer, muon_ns, normuon, cautious_wd)
    params = trainable(model)
    check_lr_groups([name for name, _ in params], embed_lr, head_lr, getattr(model, "lora", None))
    ratios = lr_ratios([name for name, _ in params], lr, embed_lr, head_lr)
    if optimizer == "adamw":
        return _adamw(params, lr, betas, eps, weight_decay, ratios)
    check_muon_args(lr, muon_lr, muon_momentum, getattr(model, "lora", None))
    hidden, _ = split_params({name: tuple(p.shape) for name, p in params})
    if not hidden:
        raise ValueError("optimizer 'muon' found no hidden matrices in this model; use 'adamw'")
    muon = Muon([p for name, p in params if name in hidden], lr=muon_lr, weight_decay=weight_decay,
                momentum=muon_momentum, ns_dtype=ns_dtype, ns=muon_ns, normuon=normuon, cautious_wd=cautious_wd)
    adamw = _adamw([(name, p) for name, p in params if name not in hidden], lr, betas, eps, weight_decay, ratios)
    return MuonAdamW(muon, adamw, muon_lr / lr)


def set_lr(opt, lr: float):
    if isinstance(opt, MuonAdamW):
        for g in opt.muon.param_groups:
            g["lr"] = lr * opt.lr_ratio
        opt = opt.adamw
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_ratio", 1.0)  # (a group nano did not build has none)


def set_momentum(opt, momentum: float):
    """Muon's momentum for the next step (nano_core.muon.momentum_at: its warm-up), as set_lr sets the lr."""
    muon = opt.muon if isinstance(opt, MuonAdamW) else opt
    if not isinstance(muon, Muon):
        raise ValueError("set_momentum sets Muon's momentum; this optimizer is not optimizer 'muon'")
    for g in muon.param_groups:
        g["momentum"] = momentum


def clip_grad_norm_(model, max_norm: float):
    """Scale the model's .grad tensors in place so their global L2 norm is at most max_norm; return the norm before
    clipping (a 0-d tensor: .item() only when logging). Coefficient max_norm / (norm + 1e-6), capped at 1, as
    nano_mlx.optim.clip_grad_norm, which returns a clipped copy of the gradient tree instead (MLX arrays are
    immutable): hence the two names.

    foreach=None, never True: PyTorch then uses its foreach kernels where the device has them (cuda, cpu) and a
    per-tensor loop elsewhere; foreach=True raises on mps, where the foreach API is not supported."""
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=None)


def trainable(model) -> list:
    """(canonical name, parameter) of the parameters the optimizer updates (the adapters only under LoRA)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def optimizer_state_numpy(opt, model) -> dict[str, np.ndarray]:
    """{name}.exp_avg / {name}.exp_avg_sq (float32, canonical parameter names) of every parameter AdamW updates,
    {name}.momentum (and {name}.second_moment with NorMuon) of every one Muon updates, and 'step' (0-d int64)."""
    adamw, muon = (opt.adamw, opt.muon) if isinstance(opt, MuonAdamW) else (opt, None)
    hidden = {p for group in muon.param_groups for p in group["params"]} if muon is not None else set()
    out: dict[str, np.ndarray] = {}
    step = 0
    for name, p in trainable(model):
        if p in hidden:
            st = muon.state.get(p) or {}  # before the first step: zeros, as in MLX
            keys = {"momentum": ("momentum_buffer", tuple(p.shape))}
            if muon.normuon:
                keys["second_moment"] = ("second_moment", normuon_shape(p.shape))
            for key, (theirs, shape) in keys.items():
                out[f"{name}.{key}"] = st[theirs].detach().float().cpu().numpy().copy() if theirs in st else \
                    np.zeros(shape, dtype=np.float32)
            continue
        st = adamw.state.get(p)
        if not st:  # torch creates the state at the first step; before it, the moments are zeros (as in MLX)
            out[f"{name}.exp_avg"] = out[f"{name}.exp_avg_sq"] = np.zeros(tuple(p.shape), dtype=np.float32)
            continue
        out[f"{name}.exp_avg"] = st["exp_avg"].detach().float().cpu().numpy().copy()
        out[f"{name}.exp_avg_sq"] = st["exp_avg_sq"].detach().float().cpu().numpy().copy()
        step = int(st["step"])
    out["step"] = np.asarray(step, dtype=np.int64)
    return out


def load_optimizer_state_numpy(opt, model, state: dict[str, np.ndarray]):
    """The inverse of optimizer_state_numpy, in place; one-line errors for a state of another model, of the other
    optimizer or of the other NorMuon setting (nano_core.muon.check_state)."""
    params = trainable(model)
    kind = "muon" if isinstance(opt, MuonAdamW) else "adamw"
    step = check_state(state, kind, {name: tuple(p.shape) for name, p in params},
                       normuon=kind == "muon" and opt.muon.normuon)
    adamw = opt.adamw if kind == "muon" else opt
    fused = any(g.get("fused") for g in adamw.param_groups)

    def tensor(key: str, p):
        return torch.from_numpy(np.array(state[key], dtype=np.float32)).to(p.device)

    for name, p in params:
        if f"{name}.momentum" in state:  # (only a Muon state has these: check_state refused them for AdamW)
            opt.muon.state[p] = {"momentum_buffer": tensor(f"{name}.momentum", p)}
            if f"{name}.second_moment" in state:  # (only with NorMuon: check_state saw to it; absent at step 0)
                opt.muon.state[p]["second_moment"] = tensor(f"{name}.second_moment", p)
        elif f"{name}.exp_avg" in state:  # absent: step 0, the fresh state stays
            adamw.state[p] = {
                # torch keeps 'step' as a float32 tensor: on the parameter's device when fused, on the CPU otherwise
                "step": torch.tensor(float(step), dtype=torch.float32, device=p.device if fused else "cpu"),
                "exp_avg": tensor(f"{name}.exp_avg", p),
                "exp_avg_sq": tensor(f"{name}.exp_avg_sq", p),
            }
    return opt
