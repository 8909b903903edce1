"""Gradients against independent references: central finite differences of the naive float64 loops,
and torch autograd or jax.grad through the dense array-API code (kernel="array_api", tile=None).

The analytic VJP of every path against autodiff on every backend, option row by option row, is
tests/test_paths.py; this file holds what that table does not: hardening functions, sampled draws,
views, and the gradient through the weights measured by differences.
"""

from __future__ import annotations

import numpy as np
import pytest

import hcl_array as hcl
from hcl_array import hardening as hd
from tests import cases

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

DENSE = {"kernel": "array_api", "tile": None}


def finite_difference(function, z: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(z)
    for index in np.ndindex(z.shape):
        step = np.zeros_like(z)
        step[index] = eps
        grad[index] = (float(function(z + step)) - float(function(z - step))) / (2 * eps)
    return grad


def torch_dense_grad(function, z: np.ndarray, ids: np.ndarray, **options) -> np.ndarray:
    """dL/dz by torch autograd through the dense array-API code (never the kernel's own gradient)."""
    return cases.value_and_gradient("torch", function, z, ids, **options, **DENSE)[1]


@pytest.mark.parametrize(
    "path, name",
    [
        (path, name)
        for path in ("dense", "tiled", "fused")
        for name in cases.NAMES
        if cases.LOSSES[name].fused or path != "fused"
    ],
)
def test_gradient_through_the_weights_equals_finite_differences_of_the_naive_loops(path, name):
    """Path: the one in the id, on NumPy (return_grad); undetached weights: the gradient of the loss as a
    function, which central differences of tests/reference.py measure independently of hcl_array."""
    z, ids = cases.batch(9, seed=3 + len(name), d=4, classes=3, scale=1.4)
    row = {"detach_weights": False, "temperature": 0.7}
    options = {**cases.loss_options(name, row), **cases.path_options(path, 4)}
    _, grad = cases.LOSSES[name].function(z, ids, return_grad=True, **options)
    measured = finite_difference(lambda x: cases.reference_value(name, x, ids, row), z)
    np.testing.assert_allclose(grad, measured, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("hardening", [hd.threshold(0.1), hd.top_k(2), hd.exponential(2.0)], ids=repr)
@pytest.mark.parametrize("path", ["dense", "tiled"])
def test_detached_hardening_gradients_equal_autograd_through_the_dense_code(hardening, path):
    """Path: dense or tiled on NumPy (return_grad) against torch autograd through the dense code."""
    z, ids = cases.batch(13, seed=7, d=4, classes=3, scale=1.4)
    _, grad = hcl.contrastive_loss(z, ids, hardening=hardening, return_grad=True, **cases.path_options(path, 4))
    np.testing.assert_allclose(
        grad, torch_dense_grad(hcl.contrastive_loss, z, ids, hardening=hardening), rtol=1e-10, atol=1e-13
    )


def test_sampled_negatives_gradient_equals_autograd_and_differences():
    """Path: dense (the only one with sampled negatives), NumPy's analytic VJP against torch autograd
    through the same code and against differences of the naive loops with the same draws."""
    z, ids = cases.batch(10, seed=8, d=4, classes=3, scale=1.4)
    draws = cases.uniforms(10, 6, seed=0)
    options = {**cases.loss_options("hscl", {}), "negatives": "sampled", "k": 6}
    _, grad = hcl.hscl(z, ids, return_grad=True, uniforms=draws, **options)
    np.testing.assert_allclose(
        grad, torch_dense_grad(hcl.hscl, z, ids, uniforms=draws, **options), rtol=1e-10, atol=1e-13
    )
    measured = finite_difference(lambda x: cases.reference_value("hscl", x, ids, {"k": 6}, draws), z)
    np.testing.assert_allclose(grad, measured, rtol=1e-6, atol=1e-8)


def test_views_gradient_keeps_the_view_layout():
    """Path: NumPy's default (the fused kernel) on (B, V, d) views, against differences."""
    z = np.random.default_rng(9).normal(size=(5, 2, 3))
    _, grad = hcl.ntxent(z, return_grad=True)
    assert grad.shape == z.shape
    np.testing.assert_allclose(grad, finite_difference(lambda x: hcl.ntxent(x), z), rtol=1e-6, atol=1e-8)


def test_jax_jit_with_sampled_negatives_from_jax_random():
    """Path: dense under jax.jit, the draws from jax.random; the value against NumPy with the same draws."""
    z, ids = cases.batch(13, seed=10, d=4, classes=3, scale=1.4)
    key = jax.random.PRNGKey(0)

    @jax.jit
    def loss(x, key):
        uniforms = jax.random.uniform(key, (x.shape[0], 8), dtype=x.dtype)
        return hcl.hscl(x, jnp.asarray(ids), beta=2.0, negatives="sampled", k=8, uniforms=uniforms)

    value = loss(jnp.asarray(z), key)
    uniforms = np.asarray(jax.random.uniform(key, (z.shape[0], 8), dtype=jnp.float64))
    assert float(value) == pytest.approx(
        float(hcl.hscl(z, ids, beta=2.0, negatives="sampled", k=8, uniforms=uniforms)), rel=1e-12
    )
