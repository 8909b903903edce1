"""Encoders written once against the Python array API, each with its explicit VJP for NumPy and CuPy.

An encoder is a pure function of a flat dict of parameter arrays:

    params = init_params("mlp", input_dim=32, output_dim=9, num_samples=800, seed=0)   # NumPy float64
    z = forward("mlp", params, x, indices)              # (B, d), in the namespace of params
    grads = backward("mlp", params, x, indices, dz)     # dL/dparams from dL/dz (what autograd would give)

- "free": one trainable row per training sample, z_i = W[i] (the unconstrained-features model of the
  neural-collapse literature: the loss alone decides the geometry). Uses `indices`, ignores `x`.
- "linear": z = x W + b.
- "mlp": z = relu(x W1 + b1) W2 + b2.

Initialization is drawn with NumPy from the seed alone and then moved to a backend, so every backend
starts from the same numbers. x is flattened to (B, features).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _array_api as aa

Array = Any
Params = dict[str, Array]

__all__ = ["ENCODERS", "init_params", "forward", "backward", "flatten_inputs"]

ENCODERS = ("free", "linear", "mlp")
DEFAULT_HIDDEN = 128


def _check_kind(kind: str) -> None:
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder {kind!r}; choose one of {', '.join(ENCODERS)} (resnet18/50: torch only)")


def _uniform_layer(rng: np.random.Generator, fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
    # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, (fan_in, fan_out)), rng.uniform(-bound, bound, fan_out)


def init_params(
    kind: str,
    *,
    input_dim: int,
    output_dim: int,
    num_samples: int | None = None,
    hidden: int = DEFAULT_HIDDEN,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Initial parameters (NumPy float64) of an encoder, a function of (kind, sizes, seed) only.

    free: rows N(0, I/d), so their norms start near 1 (inside the unit ball, where its clip is active
    about half the time); linear, mlp: torch.nn.Linear's uniform initialization.
    """
    _check_kind(kind)
    if output_dim < 1:
        raise ValueError(f"output dimension must be >= 1, got {output_dim}")
    rng = np.random.default_rng([seed, 0x5EED])
    if kind == "free":
        if not num_samples:
            raise ValueError("the free encoder needs num_samples, the number of training rows")
        return {"embeddings": rng.standard_normal((num_samples, output_dim)) / math.sqrt(output_dim)}
    if kind == "linear":
        weight, bias = _uniform_layer(rng, input_dim, output_dim)
        return {"weight": weight, "bias": bias}
    weight1, bias1 = _uniform_layer(rng, input_dim, hidden)
    weight2, bias2 = _uniform_layer(rng, hidden, output_dim)
    return {"weight1": weight1, "bias1": bias1, "weight2": weight2, "bias2": bias2}


def flatten_inputs(x: Array) -> Array:
    """(B, ...) samples as (B, features) rows."""
    xp = aa.namespace(x)
    return xp.reshape(x, (x.shape[0], -1))


def forward(kind: str, params: Params, x: Array | None, indices: Array | None) -> Array:
    """z = f(x) of shape (B, d); `indices` (int, (B,)) select the rows of the free encoder."""
    _check_kind(kind)
    if kind == "free":
        xp = aa.namespace(params["embeddings"])
        return xp.take(params["embeddings"], indices, axis=0)
    rows = flatten_inputs(x)
    if kind == "linear":
        return rows @ params["weight"] + params["bias"]
    hidden = _relu(rows @ params["weight1"] + params["bias1"])
    return hidden @ params["weight2"] + params["bias2"]


def backward(kind: str, params: Params, x: Array | None, indices: Array | None, grad_z: Array) -> Params:
    """dL/dparams given dL/dz: the VJP of `forward`, for backends without autodiff (NumPy, CuPy)."""
    _check_kind(kind)
    xp = aa.namespace(grad_z)
    if kind == "free":
        table = params["embeddings"]
        # Scatter-add as a one-hot product: indices may repeat (views of one sample), and the array API
        # has no scatter-add; (N, B) @ (B, d) is cheap for the sample counts a free encoder is used with.
        selector = aa.one_hot(indices, table.shape[0], dtype=grad_z.dtype)
        return {"embeddings": selector.T @ grad_z}
    rows = flatten_inputs(x)
    if kind == "linear":
        return {"weight": rows.T @ grad_z, "bias": xp.sum(grad_z, axis=0)}
    pre_activation = rows @ params["weight1"] + params["bias1"]
    hidden = _relu(pre_activation)
    grad_hidden = xp.where(pre_activation > 0, grad_z @ params["weight2"].T, xp.zeros_like(pre_activation))
    return {
        "weight1": rows.T @ grad_hidden,
        "bias1": xp.sum(grad_hidden, axis=0),
        "weight2": hidden.T @ grad_z,
        "bias2": xp.sum(grad_z, axis=0),
    }


def _relu(x: Array) -> Array:
    xp = aa.namespace(x)
    return xp.maximum(x, xp.zeros_like(x))
