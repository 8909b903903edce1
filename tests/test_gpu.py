"""GPU checks (`nox -s gpu` on a CUDA machine): each GPU backend against NumPy on the CPU, the kernel's CUDA
exponential route, and device placement. Every test skips with the reason where its GPU backend is missing.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import hcl_array as hcl


def _torch_cuda():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch: no CUDA device")
    return torch


def _cupy():
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("cupy is not installed")
    import cupy

    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy: no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError as error:
        pytest.skip(f"cupy: no CUDA device ({error})")
    return cupy


def _jax_gpu():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    import jax

    jax.config.update("jax_enable_x64", True)
    gpus = [device for device in jax.devices() if device.platform == "gpu"]
    if not gpus:
        pytest.skip("jax: no GPU device")
    return jax, gpus[0]


# The kernel's routes: expected negatives in one block and in blocks, and the paper's sampled negatives
CALLS = {
    "hscl": {"beta": 2.0},
    "hucl-tiled": {"beta": 1.0, "tile": 16},
    "paper-sampled": {"beta": 1.0, **hcl.PAPER_PRESET},
}


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(50, 12)), rng.integers(0, 5, 50), rng.random((50, 256))


def _reference(name: str) -> tuple[float, np.ndarray]:
    z, ids, uniforms = _batch()
    options = {**CALLS[name], "rng": None}
    loss = hcl.hucl if name.startswith("hucl") else hcl.hscl
    uniforms = uniforms if options.get("negatives") == "sampled" else None
    return loss(z, ids, uniforms=uniforms, return_grad=True, **options)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_torch_cuda_kernel_matches_numpy_and_stays_on_the_device(name):
    torch = _torch_cuda()
    z, ids, uniforms = _batch()
    options = {**CALLS[name], "rng": None}
    uniforms = torch.tensor(uniforms, device="cuda") if options.get("negatives") == "sampled" else None
    loss = hcl.hucl if name.startswith("hucl") else hcl.hscl
    z_cuda = torch.tensor(z, device="cuda", requires_grad=True)
    value = loss(z_cuda, torch.tensor(ids, device="cuda"), uniforms=uniforms, kernel="fused", **options)
    value.backward()
    assert value.device.type == "cuda" and z_cuda.grad.device.type == "cuda"
    expected_value, expected_grad = _reference(name)
    np.testing.assert_allclose(value.item(), expected_value, rtol=1e-10)
    np.testing.assert_allclose(z_cuda.grad.cpu().numpy(), expected_grad, rtol=1e-9, atol=1e-13)


def test_torch_cuda_takes_the_exp_route_and_it_agrees_with_softmax():
    torch = _torch_cuda()
    from hcl_array.backends._torch_fused import TorchOps

    x = torch.randn(64, 300, dtype=torch.float64, device="cuda")
    expected = torch.logsumexp(x, dim=1, keepdim=True)
    probabilities = torch.softmax(x, dim=1)
    log_sum, sums = TorchOps.exp_shifted_(x, x.amax(dim=1, keepdim=True))
    assert sums is not None, "on CUDA the kernel exponentiates with exp_ (the CPU takes softmax, sums None)"
    torch.testing.assert_close(log_sum, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x / sums, probabilities, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_cupy_kernel_matches_numpy_and_returns_device_arrays(name):
    cupy = _cupy()
    z, ids, uniforms = _batch()
    options = {**CALLS[name], "rng": None}
    uniforms = cupy.asarray(uniforms) if options.get("negatives") == "sampled" else None
    loss = hcl.hucl if name.startswith("hucl") else hcl.hscl
    value, grad = loss(cupy.asarray(z), cupy.asarray(ids), uniforms=uniforms, return_grad=True, **options)
    assert isinstance(grad, cupy.ndarray)
    expected_value, expected_grad = _reference(name)
    np.testing.assert_allclose(float(value), expected_value, rtol=1e-10)
    np.testing.assert_allclose(cupy.asnumpy(grad), expected_grad, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_jax_gpu_matches_numpy_and_stays_on_the_gpu(name):
    jax, gpu = _jax_gpu()
    import jax.numpy as jnp

    z, ids, uniforms = _batch()
    options = {**CALLS[name], "rng": None}
    uniforms = jax.device_put(jnp.asarray(uniforms), gpu) if options.get("negatives") == "sampled" else None
    loss = hcl.hucl if name.startswith("hucl") else hcl.hscl
    z_gpu, ids_gpu = jax.device_put(jnp.asarray(z), gpu), jax.device_put(jnp.asarray(ids), gpu)
    value, grad = jax.value_and_grad(lambda x: loss(x, ids_gpu, uniforms=uniforms, **options))(z_gpu)
    assert grad.devices() == {gpu}
    expected_value, expected_grad = _reference(name)
    np.testing.assert_allclose(float(value), expected_value, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-9, atol=1e-13)
