"""One seeded batch through every installed backend: the same values and gradients (float64, 1e-10).

NumPy, array-api-strict and CuPy get their gradients from the analytic VJP, torch from autograd and
JAX from jax.grad under jit, so agreement checks the backends against each other, not against themselves.
"""

from __future__ import annotations

import numpy as np
import pytest

import hcl_array as hcl
from hcl_array._array_api import to_numpy
from tests.conftest import _load

LOSSES = {
    "scl": (hcl.scl, {}),
    "hscl": (hcl.hscl, {"beta": 5.0}),
    "ucl": (hcl.ucl, {}),
    "hucl": (hcl.hucl, {"beta": 5.0}),
    "supcon": (hcl.supcon, {}),
    "ntxent": (hcl.ntxent, {}),
    "debiased_hcl": (hcl.debiased_hcl, {"beta": 1.0}),
}


def seeded_batch():
    rng = np.random.default_rng(2311_05139)
    return rng.normal(size=(48, 16)), rng.integers(0, 6, size=48), rng.random((48, 32))


def value_and_gradient(backend: str, function, z, ids, **options):
    loaded = _load(backend)
    if isinstance(loaded, str):
        pytest.skip(loaded)
    xp, _ = loaded
    if backend == "torch":
        import torch

        tensor = torch.tensor(z, requires_grad=True)
        value = function(tensor, torch.tensor(ids), **options)
        value.backward()
        return value.item(), tensor.grad.numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        value, grad = jax.jit(jax.value_and_grad(lambda x: function(x, jnp.asarray(ids), **options)))(jnp.asarray(z))
        return float(value), np.asarray(grad)
    value, grad = function(xp.asarray(z), xp.asarray(ids), return_grad=True, **options)
    return float(to_numpy(value)), to_numpy(grad)


@pytest.mark.parametrize("backend", ["array_api_strict", "torch", "jax", "cupy"])
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("negatives", ["expected", "sampled"])
def test_backends_agree_with_numpy(backend, name, negatives):
    if isinstance(reason := _load(backend), str):
        pytest.skip(reason)
    function, options = LOSSES[name]
    z, ids, uniforms = seeded_batch()
    if negatives == "sampled":
        options = {**options, "negatives": "sampled", "k": 32, "uniforms": uniforms}
    reference = value_and_gradient("numpy", function, z, ids, **options)
    if negatives == "sampled" and backend in ("torch", "jax"):
        import importlib

        options["uniforms"] = importlib.import_module("jax.numpy" if backend == "jax" else "torch").asarray(uniforms)
    value, grad = value_and_gradient(backend, function, z, ids, **options)
    assert value == pytest.approx(reference[0], rel=1e-10)
    np.testing.assert_allclose(grad, reference[1], rtol=1e-10, atol=1e-12)
