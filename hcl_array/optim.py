"""Optimizers as pairs of pure functions (optax style), written once against the Python array API.

    opt = adam(1e-3)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = apply_updates(params, updates)

Parameters, gradients, updates and state are flat dicts of arrays (`state` keys "count", "mu/<name>",
"nu/<name>"), so a checkpoint stores them as they are. No object hides state, and the same
arithmetic runs on NumPy, CuPy, PyTorch (outside autograd) and JAX (under jax.jit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from . import _array_api as aa

Array = Any
Params = Mapping[str, Array]
State = dict[str, Array]

__all__ = ["Optimizer", "adam", "sgd", "apply_updates", "get", "OPTIMIZERS"]


class Optimizer(NamedTuple):
    """init(params) -> state; update(grads, state, params) -> (updates, state). Add updates to params."""

    init: Callable[[Params], State]
    update: Callable[[Params, State, Params], tuple[dict[str, Array], State]]


def _namespace(params: Params) -> Any:
    return aa.namespace(*params.values())


def _count(params: Params) -> Array:
    """A 0-d step counter in the parameters' namespace and float dtype (an array, so jax.jit can carry it)."""
    first = next(iter(params.values()))
    xp = aa.namespace(first)
    return xp.zeros((), dtype=first.dtype, device=aa.device(first))


def adam(
    learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0
) -> Optimizer:
    """Adam (Kingma & Ba), as torch.optim.Adam and optax.adam: the paper trains with lr = 1e-3.

    g <- g + weight_decay * p (L2, as torch.optim.Adam's weight_decay; the released UCL run uses 1e-6);
    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  update = -lr m_hat / (sqrt(v_hat) + eps),
    with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t).
    """
    _check_positive(learning_rate=learning_rate, eps=eps)
    _check_unit(b1=b1, b2=b2)
    _check_nonnegative(weight_decay=weight_decay)

    def init(params: Params) -> State:
        state = {"count": _count(params)}
        for name, value in params.items():
            xp = aa.namespace(value)
            state[f"mu/{name}"] = xp.zeros_like(value)
            state[f"nu/{name}"] = xp.zeros_like(value)
        return state

    def update(grads: Params, state: State, params: Params | None = None) -> tuple[dict[str, Array], State]:
        count = state["count"] + 1
        new_state: State = {"count": count}
        updates = {}
        for name, grad in _decayed(grads, params, weight_decay).items():
            xp = aa.namespace(grad)
            mu = b1 * state[f"mu/{name}"] + (1.0 - b1) * grad
            nu = b2 * state[f"nu/{name}"] + (1.0 - b2) * (grad * grad)
            mu_hat = mu / (1.0 - b1**count)
            nu_hat = nu / (1.0 - b2**count)
            updates[name] = -learning_rate * mu_hat / (xp.sqrt(nu_hat) + eps)
            new_state[f"mu/{name}"], new_state[f"nu/{name}"] = mu, nu
        return updates, new_state

    return Optimizer(init, update)


def sgd(
    learning_rate: float = 1e-2, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0
) -> Optimizer:
    """SGD with heavy-ball momentum, as torch.optim.SGD (dampening 0): b <- momentum b + g, update = -lr b.

    With nesterov the update is -lr (g + momentum b). momentum = 0 gives plain SGD. weight_decay adds
    weight_decay * p to g first, as torch.optim.SGD.
    """
    _check_positive(learning_rate=learning_rate)
    _check_nonnegative(weight_decay=weight_decay)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")

    def init(params: Params) -> State:
        state = {"count": _count(params)}
        for name, value in params.items():
            state[f"momentum/{name}"] = aa.namespace(value).zeros_like(value)
        return state

    def update(grads: Params, state: State, params: Params | None = None) -> tuple[dict[str, Array], State]:
        new_state: State = {"count": state["count"] + 1}
        updates = {}
        for name, grad in _decayed(grads, params, weight_decay).items():
            buffer = momentum * state[f"momentum/{name}"] + grad
            direction = grad + momentum * buffer if nesterov else buffer
            updates[name] = -learning_rate * direction
            new_state[f"momentum/{name}"] = buffer
        return updates, new_state

    return Optimizer(init, update)


def _decayed(grads: Params, params: Params | None, weight_decay: float) -> Params:
    """g + weight_decay * p (the gradient of the L2 term (weight_decay / 2) ||p||^2); g itself when it is 0."""
    if weight_decay == 0.0:
        return grads
    if params is None:
        raise ValueError("weight_decay needs the parameters: call update(grads, state, params)")
    return {name: grad + weight_decay * params[name] for name, grad in grads.items()}


def apply_updates(params: Params, updates: Params) -> dict[str, Array]:
    """params + updates, name by name."""
    return {name: value + updates[name] for name, value in params.items()}


OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {"adam": adam, "sgd": sgd}


def get(name: str, **hyper: Any) -> Optimizer:
    """An optimizer by name ("adam" or "sgd"); `lr` is accepted for learning_rate."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if "lr" in hyper:
        hyper["learning_rate"] = hyper.pop("lr")
    return OPTIMIZERS[name](**hyper)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def _check_nonnegative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _check_unit(**values: float) -> None:
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
