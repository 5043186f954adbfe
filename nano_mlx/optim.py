"""AdamW for nano_mlx: bias-corrected (MLX defaults to bias_correction=False -- the parity trap), decoupled weight
decay only on weights with ndim >= 2, global-norm clipping, and optimizer state exported under canonical names so it
moves between backends. Mirrors nano_torch/optim.py.

State lives in `optimizer.state` (the mlx.optimizers way) and the learning rate is an array in that state, so a
step compiled with mx.compile(inputs=outputs=[model.state, optimizer.state, mx.random.state]) picks up set_lr()
without retracing."""
from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map

from nano_core.backend import check_optimizer_state


class AdamW(optim.Adam):
    """torch.optim.AdamW semantics: p <- p * (1 - lr * wd) for ndim >= 2 params only, then the bias-corrected Adam
    update lr * m_hat / (sqrt(v_hat) + eps)."""

    def __init__(self, learning_rate: float, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1):
        super().__init__(learning_rate=learning_rate, betas=list(betas), eps=eps, bias_correction=True)
        self.weight_decay = weight_decay

    def init_single(self, parameter: mx.array, state: dict):
        # Optimizer states are fp32 always, whatever the parameter dtype.
        state["m"] = mx.zeros(parameter.shape, dtype=mx.float32)
        state["v"] = mx.zeros(parameter.shape, dtype=mx.float32)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        if parameter.ndim >= 2 and self.weight_decay:
            lr = self.learning_rate.astype(mx.float32)
            parameter = parameter * (1 - lr * self.weight_decay)
        return super().apply_single(gradient.astype(mx.float32), parameter, state).astype(parameter.dtype)


def build_optimizer(model, lr: float, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1) -> AdamW:
    opt = AdamW(learning_rate=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    opt.init(model.trainable_parameters())
    return opt


def set_lr(opt, lr: float):
    # Assigning keeps learning_rate an mx.array inside opt.state: a compiled step sees the new value, no retrace.
    opt.learning_rate = mx.array(lr, dtype=mx.float32)


def clip_grad_norm(grads, max_norm: float):
    """Scale the gradient tree so its global L2 norm is at most max_norm; return (clipped_grads, norm) where norm is
    the 0-d array before clipping. Coefficient max_norm / (norm + 1e-6), capped at 1 -- as torch.nn.utils."""
    norm = mx.sqrt(sum(mx.sum(mx.square(g.astype(mx.float32))) for _, g in tree_flatten(grads)))
    coef = mx.minimum(max_norm / (norm + 1e-6), 1.0)
    return tree_map(lambda g: (g * coef).astype(g.dtype), grads), norm


def optimizer_state_numpy(opt, model) -> dict[str, np.ndarray]:
    """{name}.exp_avg / {name}.exp_avg_sq (float32, canonical parameter names) of every trainable parameter and
    'step' (0-d int64)."""
    out: dict[str, np.ndarray] = {}
    flat = dict(tree_flatten(opt.state))
    for name, _ in tree_flatten(model.trainable_parameters()):
        if f"{name}.m" in flat:
            out[f"{name}.exp_avg"] = np.array(flat[f"{name}.m"].astype(mx.float32))
            out[f"{name}.exp_avg_sq"] = np.array(flat[f"{name}.v"].astype(mx.float32))
    out["step"] = np.asarray(int(opt.step.item()), dtype=np.int64)
    return out


def load_optimizer_state_numpy(opt, model, state: dict[str, np.ndarray]):
    """The inverse of optimizer_state_numpy, in place; one-line errors for a state of another model
    (nano_core.backend.check_optimizer_state)."""
    params = tree_flatten(model.trainable_parameters())
    step = check_optimizer_state(state, {name: tuple(p.shape) for name, p in params})
    if not opt._initialized:
        opt.init(model.trainable_parameters())
    for name, _ in params:
        if f"{name}.exp_avg" not in state:
            continue  # step 0: the fresh state stays
        # Write into the existing nested state in place: a step compiled with inputs=[optimizer.state] holds it.
        node = opt.state
        for part in name.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        node["m"] = mx.array(np.asarray(state[f"{name}.exp_avg"], dtype=np.float32))
        node["v"] = mx.array(np.asarray(state[f"{name}.exp_avg_sq"], dtype=np.float32))
    opt.state["step"] = mx.array(step, dtype=mx.uint64)
    return opt
