"""GPU checks (scripts/gpu_check.py, `nox -s gpu`): every GPU path against NumPy float64 on the CPU.

The matrix: torch CUDA (fused, dense, tiled), CuPy (fused, dense, tiled) and JAX on a GPU (dense, tiled, and
fused where a JAX kernel is registered), each in float64, float32 and bfloat16 (CuPy has no bfloat16), on
three calls: hscl in one block, hucl in blocks of 16 rows, and the paper's sampled negatives (k = 256) in
blocks of 16 rows (the tiled path has no sampled negatives). The reference is the NumPy kernel in float64 on
the same numbers (for bfloat16, the rounded ones), with the same uniforms.

Tolerances (measured on the CPU's float32 paths, with a margin of 10 or more):
- float64: value 1e-10 relative, gradient 1e-9 relative + 1e-13 absolute;
- float32: value 1e-5 relative, gradient 1e-5 of its largest entry (TF32 products would miss both: ~5e-4);
- bfloat16 input: computed in float32, so the value as float32; the gradient comes back in bfloat16 (8 bits):
  2e-2 of its largest entry;
- sampled negatives in float32 or bfloat16: a uniform within rounding of a CDF step may draw the
  neighbouring column in float32 (measured: 1e-5 in the value, 3e-3 in the gradient), so 1e-4 and 2e-2.

Then: torch.autocast (float16, bfloat16) leaves the loss float32 and equal to the loss without it; one torch
loss call synchronizes twice (torch.cuda.set_sync_debug_mode); batches reach the GPU without a sync; labels
on the CPU are moved; a callable eta closing over CUDA tensors validates; the kernel's CPU buffers are not
handed to a CUDA call; CuPy keeps a run on cuda:1 there. Every test skips with the reason where its GPU
backend is missing.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

import hcl_array as hcl

N, DIM, CLASSES, K = 96, 12, 5, 256

CALLS = {
    "hscl": (hcl.hscl, {"beta": 2.0}),
    "hucl-blocks": (hcl.hucl, {"beta": 1.0, "tile": 16}),
    "paper-sampled-blocks": (hcl.hscl, {"beta": 1.0, **hcl.PAPER_PRESET, "rng": None, "tile": 16}),
}
PATHS = {"fused": {"kernel": "fused"}, "dense": {"kernel": "array_api", "tile": None}, "tiled": {"kernel": "array_api"}}
TOLERANCES = {  # (value rtol, gradient rtol, gradient atol as a share of its largest entry)
    "float64": (1e-10, 1e-9, 1e-13),
    "float32": (1e-5, 1e-3, 1e-5),
    "bfloat16": (1e-5, 2e-2, 2e-2),
    "sampled": (1e-4, 2e-2, 2e-2),
}


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


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, DIM)), rng.integers(0, CLASSES, N), rng.random((N, K))


def _options(call: str, path: str) -> dict:
    """The call's options on that path (tile 16 for the tiled path; skip where the path cannot take the call)."""
    _, options = CALLS[call]
    sampled = options.get("negatives") == "sampled"
    if path == "tiled" and sampled:
        pytest.skip("the tiled path has no sampled negatives")
    merged = {**options, **PATHS[path]}
    if path == "tiled":
        merged["tile"] = 16
    return merged


def _reference(call: str, options: dict, z: np.ndarray, ids: np.ndarray, uniforms: np.ndarray):
    """NumPy float64 on the CPU: the value and dL/dz of the same call on the same numbers."""
    loss, _ = CALLS[call]
    reference = {key: value for key, value in options.items() if key != "kernel"}
    sampled = options.get("negatives") == "sampled"
    return loss(z.astype(np.float64), ids, uniforms=uniforms if sampled else None, return_grad=True, **reference)


def _assert_close(call: str, dtype: str, value: float, grad: np.ndarray, expected: tuple) -> None:
    sampled = CALLS[call][1].get("negatives") == "sampled"
    value_rtol, grad_rtol, grad_atol = TOLERANCES["sampled" if sampled and dtype != "float64" else dtype]
    expected_value, expected_grad = expected
    atol = grad_atol if dtype == "float64" else grad_atol * float(np.abs(expected_grad).max())
    np.testing.assert_allclose(value, expected_value, rtol=value_rtol)
    np.testing.assert_allclose(grad, expected_grad, rtol=grad_rtol, atol=atol)


# --------------------------------------------------------------------------------------------------
# Every backend, path, dtype and call against NumPy float64


def every_call_and_path(dtypes: list[str]):
    """The test once per call, path and dtype."""

    def parametrize(test):
        test = pytest.mark.parametrize("dtype", dtypes)(test)
        test = pytest.mark.parametrize("path", sorted(PATHS))(test)
        return pytest.mark.parametrize("call", sorted(CALLS))(test)

    return parametrize


@every_call_and_path(dtypes=["float64", "float32", "bfloat16"])
def test_torch_cuda_matches_numpy_float64(call, path, dtype):
    torch = _torch_cuda()
    options = _options(call, path)
    z, ids, uniforms = _batch()
    z_cuda = torch.tensor(z, device="cuda").to(getattr(torch, dtype)).requires_grad_()
    given = torch.tensor(uniforms, device="cuda") if options.get("negatives") == "sampled" else None
    loss, _ = CALLS[call]
    value = loss(z_cuda, torch.tensor(ids, device="cuda"), uniforms=given, **options)
    value.backward()
    assert value.device.type == "cuda" and z_cuda.grad.device.type == "cuda" and z_cuda.grad.dtype == z_cuda.dtype
    assert value.dtype == (torch.float64 if dtype == "float64" else torch.float32)
    rounded = z_cuda.detach().double().cpu().numpy()
    expected = _reference(call, options, rounded, ids, uniforms)
    _assert_close(call, dtype, float(value.detach()), z_cuda.grad.double().cpu().numpy(), expected)


@every_call_and_path(dtypes=["float64", "float32"])
def test_cupy_matches_numpy_float64(call, path, dtype):
    cupy = _cupy()
    options = _options(call, path)
    z, ids, uniforms = _batch()
    given = cupy.asarray(uniforms) if options.get("negatives") == "sampled" else None
    loss, _ = CALLS[call]
    z_gpu = cupy.asarray(z.astype(dtype))
    value, grad = loss(z_gpu, cupy.asarray(ids), uniforms=given, return_grad=True, **options)
    assert isinstance(grad, cupy.ndarray) and grad.dtype == z_gpu.dtype
    expected = _reference(call, options, cupy.asnumpy(z_gpu), ids, uniforms)
    _assert_close(call, dtype, float(value), cupy.asnumpy(grad).astype(np.float64), expected)


@every_call_and_path(dtypes=["float64", "float32", "bfloat16"])
def test_jax_gpu_matches_numpy_float64(call, path, dtype):
    """float32 here is also the TF32 check: JAX's default GPU precision would miss 1e-5 (about 5e-4)."""
    jax, gpu = _jax_gpu()
    import jax.numpy as jnp

    from hcl_array import dispatch

    if path == "fused" and dispatch.implementation("fused", "jax") is None:
        pytest.skip("no fused kernel is registered for JAX")
    options = _options(call, path)
    z, ids, uniforms = _batch()
    z_gpu = jax.device_put(jnp.asarray(z).astype(getattr(jnp, dtype)), gpu)
    ids_gpu = jax.device_put(jnp.asarray(ids), gpu)
    given = jax.device_put(jnp.asarray(uniforms), gpu) if options.get("negatives") == "sampled" else None
    loss, _ = CALLS[call]
    value, grad = jax.value_and_grad(lambda x: loss(x, ids_gpu, uniforms=given, **options))(z_gpu)
    assert grad.devices() == {gpu} and grad.dtype == z_gpu.dtype
    rounded = np.asarray(z_gpu.astype(jnp.float64))
    expected = _reference(call, options, rounded, ids, uniforms)
    _assert_close(call, dtype, float(value), np.asarray(grad.astype(jnp.float64)), expected)


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


# --------------------------------------------------------------------------------------------------
# Autocast, synchronizations, devices


@pytest.mark.parametrize("autocast", ["float16", "bfloat16"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_torch_cuda_autocast_leaves_the_loss_float32_and_unchanged(path, autocast):
    torch = _torch_cuda()
    options = _options("hucl-blocks", path)
    rng = np.random.default_rng(1)
    z = torch.tensor(rng.normal(size=(1024, 16)), dtype=torch.float32, device="cuda")
    ids = torch.tensor(rng.integers(0, 10, 1024), device="cuda")

    def value_and_grad(enabled: bool):
        leaf = z.clone().requires_grad_()
        with torch.autocast("cuda", dtype=getattr(torch, autocast), enabled=enabled):
            value = hcl.hucl(leaf, ids, **{**options, "beta": 5.0})
        value.backward()
        return value, leaf.grad

    expected_value, expected_grad = value_and_grad(False)
    value, grad = value_and_grad(True)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(value, expected_value, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-9)


def _cuda_syncs(torch, work) -> int:
    """How many synchronizing CUDA operations `work()` makes (torch.cuda.set_sync_debug_mode warns at each)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


@pytest.mark.parametrize(("check_finite", "expected"), [(True, 2), (False, 1)])
def test_one_torch_loss_call_synchronizes_as_documented(check_finite, expected):
    """docs/performance.md: the pair numbers at the block boundaries, and the finiteness test (check_finite)."""
    torch = _torch_cuda()
    rng = np.random.default_rng(2)
    z = torch.tensor(rng.normal(size=(512, 32)), dtype=torch.float32, device="cuda")
    ids = torch.tensor(rng.integers(0, 10, 512), device="cuda")

    def call():
        leaf = z.clone().requires_grad_()
        hcl.hscl(leaf, ids, beta=1.0, check_finite=check_finite).backward()

    call()  # warm-up: the loaders, the allocator
    assert _cuda_syncs(torch, call) == expected


def test_a_batch_reaches_the_gpu_without_a_synchronization():
    torch = _torch_cuda()
    from hcl_array.backends import get_backend

    batch = np.random.default_rng(3).normal(size=(256, 3, 32, 32))
    backend = get_backend("torch")
    placed = []
    assert _cuda_syncs(torch, lambda: placed.append(backend.from_numpy(batch, "float32", "cuda"))) == 0
    np.testing.assert_array_equal(placed[0].cpu().numpy(), batch.astype(np.float32))


def test_labels_on_the_cpu_are_moved_to_the_embeddings_gpu():
    torch = _torch_cuda()
    z, ids, _ = _batch(4)
    z_cuda = torch.tensor(z, device="cuda")
    moved = hcl.hscl(z_cuda, torch.tensor(ids), beta=1.0)
    np.testing.assert_allclose(float(moved), float(hcl.hscl(z_cuda, torch.tensor(ids, device="cuda"), beta=1.0)))


def test_a_callable_eta_over_cuda_tensors_validates_and_matches_the_exponential():
    torch = _torch_cuda()
    beta = torch.tensor(2.0, device="cuda")
    z, ids, _ = _batch(5)
    z_cuda, ids_cuda = torch.tensor(z, device="cuda"), torch.tensor(ids, device="cuda")
    from_callable = hcl.contrastive_loss(z_cuda, ids_cuda, hardening=lambda s: torch.exp(beta * s), tile=None)
    expected = hcl.hscl(z_cuda, ids_cuda, beta=2.0, kernel="array_api", tile=None)
    np.testing.assert_allclose(float(from_callable), float(expected), rtol=1e-12)


def test_a_cuda_call_after_a_cpu_call_of_the_same_shapes_gets_its_own_buffers():
    torch = _torch_cuda()
    z, ids, _ = _batch(6)
    on_cpu = hcl.hscl(torch.tensor(z), torch.tensor(ids), beta=1.0)
    on_cuda = hcl.hscl(torch.tensor(z, device="cuda"), torch.tensor(ids, device="cuda"), beta=1.0)
    np.testing.assert_allclose(float(on_cuda), float(on_cpu), rtol=1e-12)


def test_cupy_on_a_second_gpu_keeps_the_run_there():
    cupy = _cupy()
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("cupy: one CUDA device (this check needs two)")
    from hcl_array import optim
    from hcl_array.backends import get_backend

    backend = get_backend("cupy")
    z, ids, _ = _batch(7)
    params = backend.params_from_numpy({"z": z}, "float32", "cuda:1")
    state = optim.adam(1e-3).init(params)
    value, grad = hcl.hscl(params["z"], backend.from_numpy(ids, None, "cuda:1"), beta=1.0, return_grad=True)
    assert {params["z"].device.id, state["mu/z"].device.id, grad.device.id} == {1}
    np.testing.assert_allclose(float(value), hcl.hscl(z.astype(np.float32), ids, beta=1.0), rtol=1e-5)
