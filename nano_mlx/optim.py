"""AdamW and Muon for nano_mlx: AdamW bias-corrected (MLX defaults to bias_correction=False -- the parity trap),
decoupled weight decay only on weights with ndim >= 2; Muon (nano_core/muon.py: the spec, written once) on the hidden
matrices with AdamW on the rest; global-norm clipping; and optimizer state exported under canonical names so it
moves between backends. Mirrors nano_torch/optim.py.

State lives in `optimizer.state` (the mlx.optimizers way) and the learning rates and Muon's momentum are arrays in
that state, so a step compiled with mx.compile(inputs=outputs=[model.state, optimizer.state, mx.random.state]) picks
up set_lr() and set_momentum() without retracing (a Python float would be baked into the trace). For Muon + AdamW,
optimizer.state is one fixed dict {"muon": ..., "adamw": ...} holding the two parts' own state dicts, which they
(and load_optimizer_state_numpy) only ever change in place."""
from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_map_with_path, tree_merge, tree_unflatten

from nano_core.lr_groups import check_lr_groups, lr_ratios
from nano_core.muon import (MOMENTUM, MUON_LR, NORMUON_BETA2, NORMUON_EPS, NS_EPS, NS_STEPS, POLAR_EPS, POLAR_SAFETY,
                            check_muon_args, check_optimizer_name, check_state, check_variants, lr_scale,
                            normuon_shape, ns_coefficients, split_params)


class AdamW(optim.Adam):
    """torch.optim.AdamW semantics: p <- p * (1 - lr * wd) for ndim >= 2 params only, then the bias-corrected Adam
    update lr * m_hat / (sqrt(v_hat) + eps). A parameter named in `ratios` (nano_core.lr_groups) takes lr * ratio
    instead of lr, as its own param group does in torch."""

    def __init__(self, learning_rate: float, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1,
                 ratios: dict[str, float] | None = None):
        super().__init__(learning_rate=learning_rate, betas=list(betas), eps=eps, bias_correction=True)
        self.weight_decay = weight_decay
        self.ratios = ratios or {}

    def init_single(self, parameter: mx.array, state: dict):
        # Optimizer states are fp32 always, whatever the parameter dtype.
        state["m"] = mx.zeros(parameter.shape, dtype=mx.float32)
        state["v"] = mx.zeros(parameter.shape, dtype=mx.float32)

    def apply_gradients(self, gradients: dict, parameters: dict):
        if not self.ratios:
            return super().apply_gradients(gradients, parameters)
        # mlx's apply_gradients (no schedulers here), each parameter's ratio found by its path (= canonical name): a
        # Python float, constant for the run, so a compiled step bakes it in; the lr stays an array in the state
        if not self._initialized:
            self.init(gradients)
        self.state["step"] = self.step + 1
        return tree_map_with_path(lambda name, g, p, s: self.apply_single(g, p, s, self.ratios.get(name, 1.0)),
                                  gradients, parameters, self.state)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict, ratio: float = 1.0):
        lr = self.learning_rate.astype(mx.float32)
        if ratio != 1.0:
            lr = lr * ratio
        if parameter.ndim >= 2 and self.weight_decay:
            parameter = parameter * (1 - lr * self.weight_decay)
        return self._adam(gradient.astype(mx.float32), parameter, state, lr).astype(parameter.dtype)

    def _adam(self, gradient: mx.array, parameter: mx.array, state: dict, lr: mx.array) -> mx.array:
        """mlx.optimizers.Adam.apply_single with bias correction (the same operations in the same order, so a
        ratio-1 parameter steps exactly as before) at the given lr."""
        b1, b2 = self.betas
        m = b1 * state["m"] + (1 - b1) * gradient
        v = b2 * state["v"] + (1 - b2) * mx.square(gradient)
        state["m"], state["v"] = m, v
        c1 = (lr / (1 - b1 ** self.step)).astype(gradient.dtype)
        c2 = mx.rsqrt(1 - b2 ** self.step).astype(gradient.dtype)
        return parameter - (c1 * m) / (mx.sqrt(v) * c2 + self.eps)


NS_DTYPES = {"fp32": mx.float32, "bf16": mx.bfloat16}


class Muon(optim.Optimizer):
    """Muon on 2-D parameters, as nano_core/muon.py specifies: EMA momentum with Nesterov, Newton-Schulz in
    `ns_dtype` (the training's compute dtype, as nano_torch), decoupled weight decay p <- p * (1 - lr * wd), then
    p <- p - lr * sqrt(max(1, rows/cols)) * NS(u). Not mlx.optimizers.Muon: that one couples the decay (g <- g + wd * p
    before the momentum, so it is normalised by NS along with the gradient) and keeps its buffer in the parameter
    dtype. (No batching by shape as in nano_torch: mx.compile schedules the whole step's graph at once.)
    The opt-in variants of nano_core/muon.py: `ns` "polar" (Polar Express), `normuon`, `cautious_wd`; the momentum
    lives in the state as two arrays, mu and 1 - mu (each rounded from the float, as a Python float would be), which
    set_momentum changes between steps (its warm-up).
    State per parameter: 'momentum' (fp32), and 'second_moment' (fp32, normuon_shape) with NorMuon."""

    def __init__(self, learning_rate: float = MUON_LR, weight_decay: float = 0.0, momentum: float = MOMENTUM,
                 nesterov: bool = True, ns_dtype: str = "fp32", ns: str = "keller", normuon: bool = False,
                 cautious_wd: bool = False, beta2: float = NORMUON_BETA2):
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(NS_DTYPES)}, got {ns_dtype!r}")
        check_variants("muon", ns, normuon, cautious_wd)
        self.ns_dtype = NS_DTYPES[ns_dtype]
        self.ns, self.normuon, self.cautious_wd, self.beta2 = ns, normuon, cautious_wd, beta2
        super().__init__()
        self._maybe_schedule("learning_rate", learning_rate)  # an array in self.state: set_lr needs no retrace
        self.momentum = momentum
        self.weight_decay, self.nesterov = weight_decay, nesterov

    @property
    def momentum(self) -> mx.array:
        return self.state["mu"]

    @momentum.setter
    def momentum(self, momentum: float):
        self.state["mu"] = mx.array(momentum, dtype=mx.float32)
        self.state["one_minus_mu"] = mx.array(1 - momentum, dtype=mx.float32)

    def init_single(self, parameter: mx.array, state: dict):
        if parameter.ndim != 2:
            raise ValueError(f"Muon takes 2-D matrices only, got a parameter of shape {tuple(parameter.shape)}")
        state["momentum"] = mx.zeros(parameter.shape, dtype=mx.float32)
        if self.normuon:
            state["second_moment"] = mx.zeros(normuon_shape(parameter.shape), dtype=mx.float32)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        mu, one_minus_mu = self.state["mu"], self.state["one_minus_mu"]
        g = gradient.astype(mx.float32)
        buf = mu * state["momentum"] + one_minus_mu * g
        state["momentum"] = buf
        u = g * one_minus_mu + buf * mu if self.nesterov else buf
        update = newton_schulz(u, dtype=self.ns_dtype, ns=self.ns)
        if self.normuon:
            update, state["second_moment"] = normuon(update, state["second_moment"], self.beta2)
        lr = self.learning_rate.astype(mx.float32)
        decayed = parameter * (1 - lr * self.weight_decay)  # decoupled: not through the momentum
        if self.cautious_wd:  # decay only where the update already moves p towards 0
            decayed = mx.where(update * parameter >= 0, decayed, parameter)
        return (decayed - (lr * lr_scale(parameter.shape)) * update).astype(parameter.dtype)


def newton_schulz(G: mx.array, steps: int = NS_STEPS, eps: float = NS_EPS, dtype=mx.float32,
                  ns: str = "keller") -> mx.array:
    """The quintic Newton-Schulz orthogonalisation of nano_core.muon.newton_schulz (same operation order) of a matrix,
    or of each matrix of a stack (..., rows, cols), computed in `dtype`; returned in fp32. `ns`: Keller's iteration
    or Polar Express (its per-step coefficients and its normalisation)."""
    coeffs = ns_coefficients(ns, steps)
    X = G.astype(dtype)
    tall = X.shape[-2] > X.shape[-1]
    if tall:  # iterate on the wide orientation: the Gram matrix X X^T is then the smaller one
        X = mx.swapaxes(X, -1, -2)
    norm = mx.sqrt(mx.sum(mx.square(X.astype(mx.float32)), axis=(-2, -1), keepdims=True))
    norm = norm * POLAR_SAFETY + POLAR_EPS if ns == "polar" else mx.maximum(norm, eps)
    X = X / norm.astype(dtype)  # every singular value now in [0, 1]
    for a, b, c in coeffs:
        A = X @ mx.swapaxes(X, -1, -2)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return (mx.swapaxes(X, -1, -2) if tall else X).astype(mx.float32)


def normuon(U: mx.array, v: mx.array, beta2: float = NORMUON_BETA2) -> tuple[mx.array, mx.array]:
    """NorMuon (nano_core.muon.normuon, same operation order) of an orthogonalised update U (..., rows, cols) fp32
    with its second moment v (..., normuon_shape): (the update, each row -- column when wide -- divided by the root
    of its EMA mean square and the whole rescaled to U's Frobenius norm, the new v)."""
    axis = -1 if U.shape[-2] >= U.shape[-1] else -2  # averaged over the shorter side
    n = U.shape[axis]
    mean_sq = mx.mean(mx.square(U), axis=axis, keepdims=True)
    v = beta2 * v + (1 - beta2) * mean_sq
    scale = mx.rsqrt(mx.maximum(v, NORMUON_EPS))
    norm = mx.sqrt(mx.sum(mean_sq, axis=(-2, -1), keepdims=True) * n)
    new_norm = mx.sqrt(mx.sum(mean_sq * n * mx.square(scale), axis=(-2, -1), keepdims=True))
    return U * (scale * (norm / mx.maximum(new_norm, NORMUON_EPS))), v


class MuonAdamW(optim.Optimizer):
    """Muon on the hidden matrices and AdamW on the rest, as one optimizer to the train step (update, state).
    set_lr(opt, lr) gives AdamW `lr` and Muon lr * lr_ratio (muon_lr / the peak lr), so one schedule drives both.
    `state` is one dict made here, {"muon": muon.state, "adamw": adamw.state}: a compiled step captures it once."""

    def __init__(self, muon: Muon, adamw: AdamW, hidden: list[str], lr_ratio: float):
        super().__init__()
        self.muon, self.adamw, self.hidden, self.lr_ratio = muon, adamw, set(hidden), lr_ratio
        self._pair = {"muon": muon.state, "adamw": adamw.state}

    @property
    def state(self):
        return self._pair

    @property
    def step(self):
        return self.adamw.step

    @property
    def learning_rate(self):
        return self.adamw.learning_rate

    def _split(self, tree) -> tuple[dict, dict]:
        """(the hidden matrices, the rest) of a parameter or gradient tree, by canonical name."""
        flat = tree_flatten(tree)
        hidden = [(n, x) for n, x in flat if n in self.hidden]
        rest = [(n, x) for n, x in flat if n not in self.hidden]
        # tree_unflatten([]) gives a list; an empty part must stay a dict
        return tuple(tree_unflatten(part) if part else {} for part in (hidden, rest))

    def init(self, parameters: dict):
        hidden, rest = self._split(parameters)
        self.muon.init(hidden)
        self.adamw.init(rest)
        self._initialized = True

    def apply_gradients(self, gradients: dict, parameters: dict):
        hidden, rest = self._split(gradients)
        return tree_merge(self.adamw.apply_gradients(rest, parameters), self.muon.apply_gradients(hidden, parameters))


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
    names = [name for name, _ in tree_flatten(model.trainable_parameters())]
    check_lr_groups(names, embed_lr, head_lr, getattr(model, "lora", None))
    ratios = lr_ratios(names, lr, embed_lr, head_lr)
    if optimizer == "adamw":
        opt = AdamW(learning_rate=lr, betas=betas, eps=eps, weight_decay=weight_decay, ratios=ratios)
    else:
        check_muon_args(lr, muon_lr, muon_momentum, getattr(model, "lora", None))
        hidden, _ = split_params({n: tuple(p.shape) for n, p in tree_flatten(model.trainable_parameters())})
        if not hidden:
            raise ValueError("optimizer 'muon' found no hidden matrices in this model; use 'adamw'")
        opt = MuonAdamW(Muon(learning_rate=muon_lr, weight_decay=weight_decay, momentum=muon_momentum,
                             ns_dtype=ns_dtype, ns=muon_ns, normuon=normuon, cautious_wd=cautious_wd),
                        AdamW(learning_rate=lr, betas=betas, eps=eps, weight_decay=weight_decay, ratios=ratios), hidden,
                        muon_lr / lr)
    opt.init(model.trainable_parameters())
    return opt


def set_lr(opt, lr: float):
    # Assigning keeps each learning_rate an mx.array inside opt.state: a compiled step sees the new value, no retrace.
    if isinstance(opt, MuonAdamW):
        opt.muon.learning_rate = mx.array(lr * opt.lr_ratio, dtype=mx.float32)
        opt = opt.adamw
    opt.learning_rate = mx.array(lr, dtype=mx.float32)


def set_momentum(opt, momentum: float):
    """Muon's momentum for the next step (nano_core.muon.momentum_at: its warm-up), as set_lr sets the lr: arrays
    in opt.state, which a compiled step reads."""
    muon = opt.muon if isinstance(opt, MuonAdamW) else opt
    if not isinstance(muon, Muon):
        raise ValueError("set_momentum sets Muon's momentum; this optimizer is not optimizer 'muon'")
    muon.momentum = momentum


def clip_grad_norm(grads, max_norm: float):
    """Scale the gradient tree so its global L2 norm is at most max_norm; return (clipped_grads, norm) where norm is
    the 0-d array before clipping. Coefficient max_norm / (norm + 1e-6), capped at 1 -- as torch.nn.utils."""
    norm = mx.sqrt(sum(mx.sum(mx.square(g.astype(mx.float32))) for _, g in tree_flatten(grads)))
    coef = mx.minimum(max_norm / (norm + 1e-6), 1.0)
    return tree_map(lambda g: (g * coef).astype(g.dtype), grads), norm


def optimizer_state_numpy(opt, model) -> dict[str, np.ndarray]:
    """{name}.exp_avg / {name}.exp_avg_sq (float32, canonical parameter names) of every parameter AdamW updates,
    {name}.momentum (and {name}.second_moment with NorMuon) of every one Muon updates, and 'step' (0-d int64)."""
    adamw, muon = (opt.adamw, opt.muon) if isinstance(opt, MuonAdamW) else (opt, None)
    flat = dict(tree_flatten(adamw.state))
    hidden = dict(tree_flatten(muon.state)) if muon is not None else {}
    out: dict[str, np.ndarray] = {}
    for name, _ in tree_flatten(model.trainable_parameters()):
        if f"{name}.momentum" in hidden:
            for key in ("momentum", "second_moment") if muon.normuon else ("momentum",):
                out[f"{name}.{key}"] = np.array(hidden[f"{name}.{key}"].astype(mx.float32))
        elif f"{name}.m" in flat:
            out[f"{name}.exp_avg"] = np.array(flat[f"{name}.m"].astype(mx.float32))
            out[f"{name}.exp_avg_sq"] = np.array(flat[f"{name}.v"].astype(mx.float32))
    out["step"] = np.asarray(int(opt.step.item()), dtype=np.int64)
    return out


def _node(state: dict, name: str) -> dict:
    """The per-parameter dict of `name` inside a nested optimizer state."""
    for part in name.split("."):
        state = state[int(part)] if isinstance(state, list) else state[part]
    return state


def load_optimizer_state_numpy(opt, model, state: dict[str, np.ndarray]):
    """The inverse of optimizer_state_numpy, in place; one-line errors for a state of another model, of the other
    optimizer or of the other NorMuon setting (nano_core.muon.check_state)."""
    params = tree_flatten(model.trainable_parameters())
    pair = isinstance(opt, MuonAdamW)
    step = check_state(state, "muon" if pair else "adamw", {name: tuple(p.shape) for name, p in params},
                       normuon=pair and opt.muon.normuon)
    if not opt._initialized:
        opt.init(model.trainable_parameters())
    adamw = opt.adamw if pair else opt
    # Write into the existing nested state in place: a step compiled with inputs=[optimizer.state] holds it.
    for name, _ in params:
        if f"{name}.momentum" in state:  # (only a Muon state has these: check_state refused them for AdamW)
            node = _node(opt.muon.state, name)
            for key in ("momentum", "second_moment"):  # (a second moment only with NorMuon: check_state saw to it)
                if f"{name}.{key}" in state:
                    node[key] = mx.array(np.asarray(state[f"{name}.{key}"], dtype=np.float32))
        elif f"{name}.exp_avg" in state:  # absent: step 0, the fresh state stays
            node = _node(adamw.state, name)
            node["m"] = mx.array(np.asarray(state[f"{name}.exp_avg"], dtype=np.float32))
            node["v"] = mx.array(np.asarray(state[f"{name}.exp_avg_sq"], dtype=np.float32))
    for part in (opt.muon, opt.adamw) if pair else (opt,):
        part.state["step"] = mx.array(step, dtype=mx.uint64)
    return opt
