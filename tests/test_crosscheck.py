"""One seeded batch through every installed backend on the default path (kernel="auto", tile="auto"):
the same values and gradients as NumPy (float64, 1e-10), and the path docs/architecture.md promises.

On the default path NumPy, CuPy, torch and JAX take the fused kernel where it computes the loss (not
the debiased form) and the dense array-API code otherwise; array-api-strict always takes the dense code
(48 rows are below the tiled threshold). Gradients: NumPy, array-api-strict and CuPy by
return_grad, torch by autograd (through the kernel's FusedLoss Function where the kernel runs: the
kernel's own gradient, which tests/test_paths.py holds to autograd through the dense code), JAX by
jax.grad under jit. tests/test_paths.py forces each path; this file checks what users get by default.
"""

from __future__ import annotations

import pytest

from tests import cases
from tests.conftest import assert_close


def _default_path(backend: str, name: str) -> str:
    """The kernel takes expected and sampled negatives alike where it serves the backend and the loss."""
    kernel_serves = backend in cases.SERVES["fused"] and cases.LOSSES[name].fused
    return "fused" if kernel_serves else "dense"


@pytest.mark.parametrize("backend", ["array_api_strict", "torch", "jax", "cupy"])
@pytest.mark.parametrize("name", cases.NAMES)
@pytest.mark.parametrize("negatives", ["expected", "sampled"])
def test_backends_agree_with_numpy_on_the_default_path(backend, name, negatives, monkeypatch):
    """Path: the default one for the backend (fused on NumPy/torch/CuPy/JAX where it serves, else dense)."""
    cases.namespace(backend)
    z, ids = cases.batch(48, seed=2311_05139, d=16, classes=6)
    options = cases.loss_options(name, {})
    if negatives == "sampled":
        options.update(negatives="sampled", k=32, uniforms=cases.uniforms(48, 32))
    reference = cases.value_and_gradient("numpy", cases.LOSSES[name].function, z, ids, **options)
    ran = cases.record_paths(monkeypatch)
    value, grad = cases.value_and_gradient(backend, cases.LOSSES[name].function, z, ids, jit=True, **options)
    path = _default_path(backend, name)
    assert set(ran) == {(path, cases.implemented_in(path, backend))}
    assert_close(value, reference[0], rtol=1e-10, atol=0)
    assert_close(grad, reference[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", cases.NAMES)
@pytest.mark.parametrize("negatives", ["expected", "sampled"])
def test_numpy_default_path(name, negatives, monkeypatch):
    """Path: NumPy's default: the fused kernel where it serves, else dense; the value against the naive loops."""
    z, ids = cases.batch(48, seed=2311_05139, d=16, classes=6)
    row = {} if negatives == "expected" else {"negatives": "sampled", "k": 32}
    draws = cases.uniforms(48, 32) if negatives == "sampled" else None
    ran = cases.record_paths(monkeypatch)
    value = cases.LOSSES[name].function(z, ids, **cases.loss_options(name, row), uniforms=draws)
    path = _default_path("numpy", name)
    assert set(ran) == {(path, cases.implemented_in(path, "numpy"))}
    assert_close(value, cases.reference_value(name, z, ids, row, draws), rtol=1e-11, atol=1e-13)
