"""The analytic VJP against torch autograd, jax.grad (also under jit) and central finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import hcl_array as hcl
from hcl_array import hardening as hd

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

LOSSES = {
    "scl": (hcl.scl, {}),
    "hscl": (hcl.hscl, {"beta": 3.0}),
    "ucl": (hcl.ucl, {}),
    "hucl": (hcl.hucl, {"beta": 3.0}),
    "supcon": (hcl.supcon, {}),
    "ntxent": (hcl.ntxent, {}),
    "debiased_hcl": (hcl.debiased_hcl, {"beta": 1.0, "tau_plus": 0.1}),
}
OPTIONS = [
    {},
    {"normalize": "sphere", "temperature": 0.4},
    {"normalize": "none", "temperature": 2.0},
    {"include_self": True, "negative_reduction": "mean"},
    {"reduction": "anchor_mean", "k": 5},
]


def batch(seed: int, n: int = 13, d: int = 4, classes: int = 3):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)) * 1.4  # norms on both sides of 1: both branches of the ball clip
    ids = rng.integers(0, classes, size=n)
    ids[0] = classes + 1  # an anchor without positives
    return z, ids


def finite_difference(function, z: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(z)
    for index in np.ndindex(z.shape):
        step = np.zeros_like(z)
        step[index] = eps
        grad[index] = (float(function(z + step)) - float(function(z - step))) / (2 * eps)
    return grad


def torch_grad(function, z: np.ndarray, ids: np.ndarray, **options) -> np.ndarray:
    tensor = torch.tensor(z, requires_grad=True)
    function(tensor, torch.tensor(ids), **options).backward()
    return tensor.grad.numpy()


def jax_grad(function, z: np.ndarray, ids: np.ndarray, **options) -> np.ndarray:
    step = jax.jit(jax.grad(lambda x: function(x, jnp.asarray(ids), **options)))
    return np.asarray(step(jnp.asarray(z)))


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_analytic_gradient_equals_autodiff(name, overrides):
    function, extra = LOSSES[name]
    z, ids = batch(seed=len(name))
    options = {**extra, **overrides}
    value, grad = hcl.value_and_grad(function)(z, ids, **options)
    assert value == pytest.approx(float(function(z, ids, **options)), rel=1e-14)
    np.testing.assert_allclose(grad, torch_grad(function, z, ids, **options), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grad, jax_grad(function, z, ids, **options), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_through_the_weights_equals_finite_differences(name):
    """Undetached exponential weights: the gradient of the loss as a function, which differences measure."""
    function, extra = LOSSES[name]
    z, ids = batch(seed=3 + len(name), n=9)
    options = {**extra, "detach_weights": False, "temperature": 0.7}
    _, grad = function(z, ids, return_grad=True, **options)
    np.testing.assert_allclose(grad, finite_difference(lambda x: function(x, ids, **options), z), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad, torch_grad(function, z, ids, **options), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("hardening", [hd.threshold(0.1), hd.top_k(2), hd.exponential(2.0)], ids=repr)
def test_detached_hardening_gradients_equal_autodiff(hardening):
    z, ids = batch(seed=7)
    _, grad = hcl.contrastive_loss(z, ids, hardening=hardening, return_grad=True)
    np.testing.assert_allclose(
        grad, torch_grad(hcl.contrastive_loss, z, ids, hardening=hardening), rtol=1e-10, atol=1e-13
    )


def test_sampled_negatives_gradient_equals_autodiff_and_differences():
    z, ids = batch(seed=8, n=10)
    uniforms = np.random.default_rng(0).random((10, 6))
    options = {"beta": 2.0, "negatives": "sampled", "k": 6, "uniforms": uniforms}
    _, grad = hcl.hscl(z, ids, return_grad=True, **options)
    np.testing.assert_allclose(
        grad, torch_grad(hcl.hscl, z, ids, **{**options, "uniforms": torch.tensor(uniforms)}), rtol=1e-10, atol=1e-13
    )
    np.testing.assert_allclose(grad, finite_difference(lambda x: hcl.hscl(x, ids, **options), z), rtol=1e-6, atol=1e-8)


def test_views_gradient_keeps_the_view_layout():
    z = np.random.default_rng(9).normal(size=(5, 2, 3))
    _, grad = hcl.ntxent(z, return_grad=True)
    assert grad.shape == z.shape
    np.testing.assert_allclose(grad, finite_difference(lambda x: hcl.ntxent(x), z), rtol=1e-6, atol=1e-8)


def test_jax_jit_with_sampled_negatives_from_jax_random():
    z, ids = batch(seed=10)
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
