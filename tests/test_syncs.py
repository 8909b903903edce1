"""Host synchronizations: where one torch loss call and a training epoch make the host wait for a GPU.

Counted on the CPU with tests/sync_counter.py (the calls that would synchronize a GPU, by the hcl_array
function that makes them), with the kernel's GPU branches taken (TorchOps.on_cpu answering False); the CPU-only
branches of the sampled draws (NumPy's guide table) are named and left out. tests/test_gpu.py counts the
same call with torch.cuda.set_sync_debug_mode on CUDA. docs/performance.md lists the sites that stay.
"""

from __future__ import annotations

import dataclasses
import types
from collections import Counter

import numpy as np
import pytest

import hcl_array as hcl
from hcl_array import fused
from hcl_array.config import loss_config

torch = pytest.importorskip("torch")

from hcl_array.backends._torch_fused import TorchOps  # noqa: E402  (after the skip: needs torch)
from tests.sync_counter import count_syncs  # noqa: E402

#: the sampled draws' CPU branch (a guide table over the tensor's NumPy view): on a GPU, torch.searchsorted
CPU_ONLY = {"backends._torch_fused:draw_positions (numpy)", "backends._torch_fused:draw_positions (from_numpy)"}
PAIRS = {"fused:of (tolist)": 1}  # the pair numbers at the block boundaries: sizes the host must know
FINITE = {"dispatch:_reject_overflow (__bool__)": 1}  # check_finite: one test of the value (and gradient)
INPUT = {"config:all_finite (__bool__)": 1}  # check_finite on the array-API paths: z, before computing

CALLS = {
    "hscl": ({"beta": 1.0}, PAIRS | FINITE),
    "hscl anchor_mean": ({"beta": 1.0, "reduction": "anchor_mean"}, PAIRS | FINITE),
    "hscl two blocks": ({"beta": 1.0, "tile": 96}, PAIRS | FINITE),
    "hscl check_finite=False": ({"beta": 1.0, "check_finite": False}, PAIRS),
    "hscl return_grad": ({"beta": 1.0, "return_grad": True}, PAIRS | FINITE),
    "paper preset, rng": (
        {"beta": 1.0, **hcl.PAPER_PRESET, "rng": 0},
        {"formulas:uniform_draws (asarray)": 1} | PAIRS | FINITE,
    ),
    "paper preset, uniforms": (
        {"beta": 1.0, **hcl.PAPER_PRESET},
        {"formulas:uniform_draws (__bool__)": 1} | PAIRS | FINITE,
    ),
    "dense": ({"beta": 1.0, "kernel": "array_api", "tile": None}, INPUT | FINITE),
    "tiled": ({"beta": 1.0, "kernel": "array_api", "tile": 64}, INPUT | FINITE),
}


def _batch(n: int = 192, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(2)
    return torch.tensor(rng.normal(size=(n, dim)), dtype=torch.float32), torch.tensor(rng.integers(0, 8, n))


def _call(z: torch.Tensor, labels: torch.Tensor, options: dict) -> None:
    options = dict(options)
    if options.get("negatives") == "sampled" and "rng" not in options:
        generator = torch.Generator().manual_seed(0)
        options["uniforms"] = torch.rand(z.shape[0], options["k"], generator=generator, dtype=torch.float64)
    if options.pop("return_grad", False):
        hcl.hscl(z, labels, return_grad=True, **options)
        return
    leaf = z.clone().requires_grad_()
    hcl.hscl(leaf, labels, **options).backward()


@pytest.mark.parametrize("name", sorted(CALLS))
def test_one_torch_loss_call_waits_for_the_device_only_where_documented(name, monkeypatch):
    """Before: 3 reads per hscl call (the pair offsets, the overflow test of the row norms, the value), 4 with
    anchor_mean (a second read for the rows alone with their id) or return_grad (the gradient's own test)."""
    monkeypatch.setattr(TorchOps, "on_cpu", staticmethod(lambda like: False))  # the kernel's GPU branches
    options, expected = CALLS[name]
    z, labels = _batch()
    _call(z, labels, options)  # warm-up: lazy imports and registrations
    with count_syncs() as sites:
        _call(z, labels, options)
    assert {site: count for site, count in sites.items() if site not in CPU_ONLY} == expected


def test_the_gpu_branch_of_the_row_norms_rescales_rows_whose_sum_of_squares_overflows(monkeypatch):
    """On a GPU the norms are not tested on the host: both are computed and the rescaled ones taken where the
    plain sum of squares overflowed (float32 rows of 1e30 next to ordinary ones)."""
    rng = np.random.default_rng(4)
    z, ids = rng.normal(size=(24, 32)), rng.integers(0, 3, 24)
    expected_value, expected_grad = hcl.hscl(z, ids, normalize="sphere", beta=1.0, return_grad=True)
    scales = np.where(np.arange(24) % 3 == 0, 1e30, 1.0)[:, None]
    monkeypatch.setattr(TorchOps, "on_cpu", staticmethod(lambda like: False))
    huge = torch.tensor(z * scales, dtype=torch.float32, requires_grad=True)
    value = hcl.hscl(huge, torch.tensor(ids), normalize="sphere", beta=1.0, kernel="fused")
    value.backward()
    np.testing.assert_allclose(float(value.detach()), expected_value, rtol=1e-5)
    np.testing.assert_allclose(huge.grad.numpy() * scales, expected_grad, rtol=1e-3, atol=1e-6)


def _module_like_cupy() -> types.SimpleNamespace:
    """NumPy under another name: NumpyOps then takes its CuPy branches (it tests `module is numpy`)."""
    return types.SimpleNamespace(**{name: value for name, value in vars(np).items() if not name.startswith("__")})


@pytest.mark.parametrize(
    "options",
    [
        {"beta": 2.0, "reduction": "anchor_mean"},
        {"beta": 1.0, "tile": 40},
        {"beta": 1.0, "negatives": "sampled", "k": 16, "tile": 50},
    ],
    ids=["anchor_mean", "blocks", "sampled-blocks"],
)
def test_the_cupy_branches_of_the_kernel_give_the_numpy_kernel_numbers(options):
    """NumpyOps on CuPy scatters the anchor gradients with add.at (cupy.bincount reads its input's min and
    max on the host), draws by one 1-D search and computes the norms without a host test; run on NumPy
    arrays through a module that is not numpy, they must give the NumPy kernel's numbers."""
    rng = np.random.default_rng(6)
    z, ids = rng.normal(size=(120, 12)) * np.where(np.arange(120) == 5, 1e200, 1.0)[:, None], rng.integers(0, 6, 120)
    uniforms = rng.random((120, options["k"])) if "k" in options else None
    config = loss_config(hcl.hardening.exponential(options.pop("beta")), **options)
    expected = fused.value_and_grad(z, ids, config, fused.NumpyOps(np), uniforms=uniforms)
    got = fused.value_and_grad(z, ids, config, fused.NumpyOps(_module_like_cupy()), uniforms=uniforms)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-10, atol=1e-14)


def _training_syncs(batch_size: int) -> Counter:
    from hcl_array.training import TrainConfig, train

    config = TrainConfig(
        backend="torch", classes=4, per_class=24, input_dim=6, hidden=8, batch_size=batch_size, epochs=2, seed=3
    )
    with count_syncs() as sites:
        train(dataclasses.replace(config, encoder="mlp"))
    loss_call = ("fused:", "dispatch:", "formulas:", "config:")  # counted per call above
    host_copy = ("(tensor)", "(asarray)", "(as_tensor)", "(from_numpy)")  # each batch must reach the device
    return Counter(
        {
            site: count
            for site, count in sites.items()
            if not site.startswith(loss_call) and not site.endswith(host_copy)
        }
    )


def test_a_training_epoch_reads_its_losses_once_not_once_per_step():
    """float(loss) after every step made the host wait for the GPU at each one; the epoch's losses now stay
    on the device and are read together. The training loop's own reads must not grow with the steps."""
    assert _training_syncs(batch_size=48) == _training_syncs(batch_size=12)  # 2 and 8 steps per epoch


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_monitor_update_reads_the_device_once(framework):
    """Its value checks (finite rows, labels in range) in one read: torch read twice, JAX three times."""
    if framework == "jax":
        jnp = pytest.importorskip("jax.numpy")
    from hcl_array.monitor import CollapseMonitor

    convert = torch.tensor if framework == "torch" else jnp.asarray
    rng = np.random.default_rng(7)
    embeddings, labels = convert(rng.normal(size=(64, 5))), convert(rng.integers(0, 4, 64))
    monitor = CollapseMonitor(4)
    monitor.update(embeddings, labels)  # warm-up: the state, and JAX's compilations
    with count_syncs(framework) as first_pass:
        monitor.update(embeddings, labels)
    monitor.start_probe()
    monitor.update_probe(embeddings, labels)
    with count_syncs(framework) as second_pass:
        monitor.update_probe(embeddings, labels)
    assert sum(first_pass.values()) == 1 and sum(second_pass.values()) == 1, (first_pass, second_pass)


@pytest.mark.parametrize(
    ("bad", "message"), [("nan", "batch_embeddings contains NaN"), ("label", r"batch_labels must lie in \[0, ")]
)
def test_a_monitor_update_still_says_what_is_wrong(bad, message):
    from hcl_array.monitor import CollapseMonitor

    rng = np.random.default_rng(8)
    embeddings, labels = rng.normal(size=(16, 3)), rng.integers(0, 4, 16)
    if bad == "nan":
        embeddings[5, 1] = np.nan
    else:
        labels[9] = 4
    with pytest.raises(ValueError, match=message):
        CollapseMonitor(4).update(torch.tensor(embeddings), torch.tensor(labels))
