"""The fused kernel (hcl_array/fused.py; torch: backends/_torch_fused.py): what tests/test_paths.py's
table does not hold.

tests/test_paths.py holds the kernel (kernel="fused", one block or several) to the dense array-API
path and the naive loops for every named loss and option row on NumPy and torch. Here: degenerate
batches, torch's autograd Function and return_grad, the fallback of kernel="auto", extreme numbers,
half precision, the cache-sized blocks and reused buffers, the exponentiation contract, and NaN/Inf.
"""

from __future__ import annotations

import numpy as np
import pytest

import hcl_array as hcl
from hcl_array import fused, tiled
from tests import cases

option_id = cases.option_id
FUSED = {name: (cases.LOSSES[name].function, cases.LOSSES[name].extra) for name in cases.FUSED_NAMES}
#: The option rows of the NaN/Inf test: each option the kernel reads once (cases.OPTIONS has them all).
OPTIONS = [
    row
    for row in cases.OPTIONS
    if option_id(row)
    in {
        "defaults",
        "include_self=True",
        "reduction=anchor_mean",
        "k=7",
        "negative_reduction=mean",
        "detach_weights=False",
        "normalize=sphere,temperature=0.1",
        "normalize=none,temperature=3.0,detach_weights=False,reduction=anchor_mean",
    }
]


def batch(n: int, seed: int, d: int = 6, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """cases.batch with six columns."""
    return cases.batch(n, seed, d=d, classes=classes)


def value_and_grad(backend, function, z, ids, *, kernel: bool, monkeypatch, **options) -> tuple[float, np.ndarray]:
    """(loss, gradient) on the fused path (kernel=True) or the dense one; NumPy by return_grad, torch by
    autograd (through FusedLoss on the fused path, through the array-API code on the dense one)."""
    tile = options.pop("tile", None)
    ran = cases.record_paths(monkeypatch)
    path = "fused" if kernel else "dense"
    value, grad = cases.value_and_gradient(backend, function, z, ids, **options, **cases.path_options(path, tile))
    assert {p for p, _ in ran} == {path}
    return float(value), grad


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", sorted(FUSED))
def test_degenerate_batches_match(backend, name, monkeypatch):
    """Path: fused (one block and blocks of 4) against dense.

    One id for every row (no negatives for the supervised losses), all ids distinct (no positives), one row."""
    function, extra = FUSED[name]
    rng = np.random.default_rng(1)
    for z, ids in (
        (rng.normal(size=(6, 3)), np.zeros(6, dtype=np.int64)),
        (rng.normal(size=(6, 3)), np.arange(6)),
        (rng.normal(size=(1, 3)), np.zeros(1, dtype=np.int64)),
    ):
        for tile in (None, 4):
            value, grad = value_and_grad(
                backend, function, z, ids, kernel=True, monkeypatch=monkeypatch, tile=tile, **extra
            )
            ref_value, ref_grad = value_and_grad(
                backend, function, z, ids, kernel=False, monkeypatch=monkeypatch, **extra
            )
            assert np.isfinite(value) and np.all(np.isfinite(grad))
            np.testing.assert_allclose(value, ref_value, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-15)


def test_autograd_keeps_only_the_gradient_and_scales_it_by_the_cotangent():
    """Path: fused on torch (the FusedLoss Function) against NumPy's fused return_grad."""
    torch = pytest.importorskip("torch")
    z, ids = batch(40, seed=2)
    tensor = torch.tensor(z, requires_grad=True)
    value = hcl.hscl(tensor, torch.tensor(ids), beta=3.0)
    saved = value.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(40, 6)]  # no (N, N) matrix survives the forward pass
    (2.5 * value).backward(retain_graph=True)
    once = tensor.grad.clone()
    value.backward()
    np.testing.assert_allclose(tensor.grad.numpy(), once.numpy() * 1.4, rtol=1e-12)
    _, analytic = hcl.hscl(z, ids, beta=3.0, return_grad=True)
    np.testing.assert_allclose(once.numpy(), 2.5 * analytic, rtol=1e-10, atol=1e-14)


def test_torch_return_grad_and_inputs_without_grad():
    """Path: fused on torch, return_grad and inputs without requires_grad, against NumPy's fused path."""
    torch = pytest.importorskip("torch")
    z, ids = batch(17, seed=5)
    value, grad = hcl.hucl(torch.tensor(z), torch.tensor(ids), beta=4.0, return_grad=True)
    ref_value, ref_grad = hcl.hucl(z, ids, beta=4.0, return_grad=True)
    np.testing.assert_allclose(value.item(), ref_value, rtol=1e-12)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-10, atol=1e-14)
    plain = hcl.hucl(torch.tensor(z), torch.tensor(ids), beta=4.0)
    assert plain.grad_fn is None
    np.testing.assert_allclose(float(plain), ref_value, rtol=1e-12)


@pytest.mark.parametrize(
    "call",
    [
        lambda z, ids: hcl.debiased_hcl(z, ids, beta=1.0),
        lambda z, ids: hcl.hscl(z, ids, hardening=hcl.hardening.threshold(0.1)),
        lambda z, ids: hcl.hscl(z, ids, reduction="none").sum(),
    ],
    ids=["debiased", "threshold", "reduction-none"],
)
def test_configurations_outside_the_kernel_take_the_array_api_path(call):
    """Path: kernel="auto" on torch falls back to the array-API code where the kernel cannot compute."""
    torch = pytest.importorskip("torch")
    z, ids = batch(12, seed=7)
    value = call(torch.tensor(z, requires_grad=True), torch.tensor(ids))
    assert type(value.grad_fn).__name__ != "FusedLossBackward"


def test_extreme_temperature_and_beta_stay_finite_and_accurate():
    """Path: fused on torch and NumPy in float32 against NumPy's fused path in float64.

    tau = 0.01 and beta = 1000 in float32: every exponent is max-shifted, nothing overflows."""
    torch = pytest.importorskip("torch")
    z, ids = batch(64, seed=8, d=16)
    tensor = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    value = hcl.hscl(tensor, torch.tensor(ids), beta=1000.0, temperature=0.01, normalize="sphere")
    value.backward()
    ref_value, ref_grad = hcl.hscl(z, ids, beta=1000.0, temperature=0.01, normalize="sphere", return_grad=True)
    assert np.isfinite(value.item()) and torch.isfinite(tensor.grad).all()
    np.testing.assert_allclose(value.item(), ref_value, rtol=1e-4)
    np.testing.assert_allclose(tensor.grad.numpy(), ref_grad, rtol=2e-3, atol=1e-4 * np.abs(ref_grad).max())
    value32, grad32 = hcl.hscl(
        z.astype(np.float32), ids, beta=1000.0, temperature=0.01, normalize="sphere", return_grad=True
    )
    assert value32.dtype == np.float32 and np.isfinite(value32) and np.all(np.isfinite(grad32))
    np.testing.assert_allclose(float(value32), ref_value, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_input_accumulates_in_float32(dtype):
    """Path: fused on torch half precision, against NumPy's fused path on the same rounded inputs."""
    torch = pytest.importorskip("torch")
    z, ids = batch(33, seed=9, d=8)
    half = torch.tensor(z, dtype=getattr(torch, dtype), requires_grad=True)
    value = hcl.hscl(half, torch.tensor(ids), beta=5.0, temperature=0.1, normalize="sphere")
    assert value.dtype == torch.float32
    value.backward()
    assert half.grad.dtype == half.dtype
    rounded = half.detach().double().numpy()  # the reference sees the same rounded inputs
    ref_value, ref_grad = hcl.hscl(rounded, ids, beta=5.0, temperature=0.1, normalize="sphere", return_grad=True)
    np.testing.assert_allclose(value.item(), ref_value, rtol=1e-5)
    np.testing.assert_allclose(half.grad.double().numpy(), ref_grad, rtol=2e-2, atol=1e-2 * np.abs(ref_grad).max())


def test_numpy_half_precision_input_gives_a_float32_loss_and_a_half_gradient():
    """Path: fused on NumPy float16, against the same path in float64."""
    z, ids = batch(21, seed=10, d=8)
    half = z.astype(np.float16)
    value, grad = hcl.hscl(half, ids, beta=2.0, return_grad=True)
    assert value.dtype == np.float32 and grad.dtype == np.float16
    ref_value, ref_grad = hcl.hscl(half.astype(np.float64), ids, beta=2.0, return_grad=True)
    np.testing.assert_allclose(float(value), ref_value, rtol=1e-5)
    np.testing.assert_allclose(grad.astype(np.float64), ref_grad, rtol=2e-2, atol=1e-3 * np.abs(ref_grad).max())


def test_numpy_default_call_runs_the_kernel_in_cache_sized_blocks(monkeypatch):
    """Path: fused, chosen by default.

    hscl(z, labels) on NumPy goes through `fused.value_and_grad` with tile = auto_tile(N)."""
    z, ids = batch(50, seed=11)
    seen = []
    original = fused.value_and_grad
    monkeypatch.setattr(
        fused,
        "value_and_grad",
        lambda z, ids, config, *a, **k: (
            seen.append(tiled.block_rows(config.tile, z.shape[0])) or original(z, ids, config, *a, **k)
        ),
    )
    hcl.hscl(z, ids, beta=1.0, return_grad=True)
    hcl.hscl(z, ids, beta=1.0, tile=7)
    assert seen == [min(tiled.auto_tile(50), 50), 7]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_reused_block_buffers_carry_nothing_from_one_call_to_the_next(backend, monkeypatch):
    """Path: fused on NumPy and torch.

    The per-thread scratch buffers are fully rewritten by every call: A, B, A gives A's numbers exactly."""
    z, ids = batch(24, seed=12)
    other = np.random.default_rng(13).normal(size=z.shape) * 50.0

    def call(x):
        return value_and_grad(backend, hcl.hscl, x, ids, kernel=True, monkeypatch=monkeypatch, beta=3.0)

    first = call(z)
    call(other)
    again = call(z)
    assert first[0] == again[0] and np.array_equal(first[1], again[1])
    key, buffers = fused._scratch.buffers
    shapes = key[0]
    assert shapes[:2] == ((24, 24), (24, 24))  # (rows, N) blocks: the tilted terms, the weights
    assert shapes[2:] == ((24, 6),) * (1 if backend == "numpy" else 2)  # u; dL/du (numpy's last call is value-only)
    assert [tuple(buffer.shape) for buffer in buffers] == list(shapes)
    monkeypatch.setattr(fused, "SCRATCH_LIMIT_BYTES", 0)
    monkeypatch.delattr(fused._scratch, "buffers")
    assert call(z)[0] == first[0] and not hasattr(fused._scratch, "buffers")


@pytest.mark.parametrize("method", ["numpy", "exp_in_place", "softmax_in_place"])
def test_every_exponentiation_keeps_the_kernel_contract(method):
    """No path: the kernel's exponentiation primitives.

    Given the row maxima: x <- exp(x - shift) in place, returning the rows' log-sum-exp and sums.

    Torch takes `softmax_in_place` on the CPU and `exp_in_place` elsewhere: both run here."""
    rng = np.random.default_rng(14)
    x = rng.normal(size=(5, 7)) * 30.0
    x[1, [0, 3]] = -np.inf  # masked candidates
    x[3, 1:] = -np.inf  # a single candidate
    reference_lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    if method == "numpy":
        out, peak = x.copy(), x.max(1, keepdims=True)
        lse, total = fused.NumpyOps(np).exp_shifted_(out, peak)
    else:
        torch = pytest.importorskip("torch")
        from hcl_array.backends._torch_fused import TorchOps

        out = torch.tensor(x)
        lse, total = getattr(TorchOps, method)(out, out.amax(1, keepdim=True))
        out, lse, total = out.numpy(), lse.numpy(), 1.0 if total is None else total.numpy()  # None: rows sum to 1
    np.testing.assert_allclose(lse[:, 0], reference_lse, rtol=1e-13)
    np.testing.assert_allclose(out / total, np.exp(x - reference_lse[:, None]), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(out.sum(1, keepdims=True), np.broadcast_to(total, (5, 1)), rtol=1e-13)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", sorted(FUSED))
@pytest.mark.parametrize("overrides", OPTIONS, ids=option_id)
def test_one_bad_entry_anywhere_is_rejected(backend, name, overrides):
    """Path: the default (fused) on NumPy and torch.

    The kernel path tests only its value for NaN/Inf (fused.value_and_grad's guarantee): one bad
    entry in any row, a row without positives included, and in batches without terms, is still caught."""
    function, extra = FUSED[name]
    options = {**extra, **overrides}
    z, ids = batch(11, seed=20)
    cases = [(z, ids, row, bad) for row in (0, 4) for bad in (np.nan, np.inf, -np.inf)]  # row 0: no positive
    cases += [(z[:5], np.zeros(5, dtype=np.int64), 2, np.nan), (z[:1], ids[:1], 0, np.inf)]  # no terms
    for rows, labels, row, bad in cases:
        poisoned = rows.copy()
        poisoned[row, 1] = bad
        if backend == "torch":
            torch = pytest.importorskip("torch")
            poisoned, labels = torch.tensor(poisoned), torch.tensor(labels)
        with pytest.raises(ValueError, match="NaN or Inf"):
            function(poisoned, labels, **options)
        assert not np.isfinite(float(function(poisoned, labels, check_finite=False, **options)))


def test_the_scratch_buffers_of_a_cpu_call_are_not_handed_to_a_call_on_another_device():
    """The buffers kept for the next call of the same shapes went to a GPU call as out= (a device error);
    a meta tensor stands in for the GPU."""
    torch = pytest.importorskip("torch")
    from hcl_array.backends._torch_fused import TorchOps

    shapes = ((64, 64), (64, 8))
    cpu_buffers = fused._scratch_buffers(shapes, torch.zeros(1), TorchOps)
    assert fused._scratch_buffers(shapes, torch.zeros(1), TorchOps)[0] is cpu_buffers[0], "reused on the CPU"
    on_meta = fused._scratch_buffers(shapes, torch.zeros(1, device="meta"), TorchOps)
    assert [buffer.device.type for buffer in on_meta] == ["meta", "meta"]
