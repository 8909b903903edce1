"""One equivalence test: every path (dense, tiled, fused) on every backend it serves, every named loss,
every option row of tests/cases.py; value and gradient against the dense path (NumPy's analytic VJP)
and the value against the naive float64 loops of tests/reference.py, in float64.

Each backend takes its gradient by its own means (tests/cases.py: NumPy, array-api-strict and CuPy by
return_grad, torch by autograd, JAX by jax.grad), and each call records which path and which module
computed it, so a silent fallback to another path fails the test.
"""

from __future__ import annotations

import pytest

import hcl_array as hcl
from tests import cases
from tests.conftest import assert_close

#: JAX compiles a program for each tiled option row: one row per loss, chosen to cover the options
#: whose gradient the custom VJP computes differently (eager for undetached weights, jit otherwise).
JAX_TILED_ROWS = {
    "debiased_hcl": {"normalize": "none", "temperature": 3.0},
    "hscl": {"detach_weights": False},
    "hucl": {"reduction": "none", "detach_weights": False, "include_self": True},
    "ntxent": {"reduction": "anchor_mean", "k": 7},
    "scl": {"reduction": "none"},
    "supcon": {"include_self": True, "negative_reduction": "mean", "normalize": "ball"},
    "ucl": {"normalize": "sphere", "temperature": 0.1},
}


#: The JAX kernel compiles a program per option row: every option row the kernel serves once over the
#: losses, in blocks (each option on a loss it changes: tilt-dependent options on hscl and hucl), and one
#: row per loss in a single block.
JAX_FUSED_ROWS = {
    "hscl": [{}, {"detach_weights": False}, {"negatives": "sampled", "k": 9}, {"reduction": "anchor_mean", "k": 7}],
    "hucl": [
        {"include_self": True},
        {"negative_reduction": "mean", "detach_weights": False},
        {"negatives": "sampled", "k": 9, "negative_reduction": "mean"},
    ],
    "ntxent": [{"normalize": "sphere", "temperature": 0.1}, {"k": 7}],
    "scl": [{"normalize": "none", "temperature": 3.0}, {"negative_reduction": "mean"}],
    "supcon": [{"temperature": 0.3}, {"include_self": True, "negative_reduction": "mean", "normalize": "ball"}],
    "ucl": [{"normalize": "sphere"}, {"reduction": "anchor_mean"}, {"negatives": "sampled", "k": 9}],
}
JAX_ONE_BLOCK_ROWS = {
    "hscl": {"negatives": "sampled", "k": 9, "negative_reduction": "mean"},
    "hucl": {"normalize": "none", "temperature": 3.0, "detach_weights": False, "reduction": "anchor_mean"},
    "ntxent": {},
    "scl": {},
    "supcon": {"negatives": "sampled", "k": 9},
    "ucl": {"include_self": True},
}


def _rows(path: str, backend: str, name: str) -> list[int]:
    """The option rows (indices into cases.OPTIONS) a path computes for a loss."""
    if path == "tiled" and backend == "jax":
        return [cases.OPTIONS.index(JAX_TILED_ROWS[name])]
    rows = range(len(cases.OPTIONS))
    if path == "tiled":  # sampled negatives draw from whole rows of weights: the dense path and the kernel
        rows = [i for i in rows if cases.OPTIONS[i].get("negatives") != "sampled"]
    if path.startswith("fused"):  # per-anchor values need the cotangent inside the kernel's sum
        rows = [i for i in rows if cases.OPTIONS[i].get("reduction") != "none"]
    if path.startswith("fused") and backend == "jax":
        chosen = JAX_FUSED_ROWS[name] if path == "fused" else [JAX_ONE_BLOCK_ROWS[name]]
        return [cases.OPTIONS.index(row) for row in chosen]
    return list(rows)


def _cases() -> list:
    params = []
    for path, (served_by, _, _) in cases.PATHS.items():
        names = cases.FUSED_NAMES if served_by == "fused" else cases.NAMES
        for backend in cases.available(cases.SERVES[served_by]):
            for name in names:
                for row in _rows(path, backend, name):
                    case_id = f"{path}-{backend}-{name}-{cases.option_id(cases.OPTIONS[row])}"
                    params.append(pytest.param(path, backend, name, row, id=case_id))
    return params


@pytest.mark.parametrize("path, backend, name, row", _cases())
def test_every_path_and_backend_equals_the_dense_path_and_the_naive_loops(path, backend, name, row, monkeypatch):
    """Path: the one named in the test id, forced with kernel= and tile=; the backend's gradient."""
    reference = cases.dense_reference(name, row)
    z, ids = reference["z"], reference["ids"]
    options = {**cases.loss_options(name, cases.OPTIONS[row]), **cases.path_options(path, reference["tile"])}
    ran = cases.record_paths(monkeypatch)
    # the JAX kernel under jax.jit; the tiled custom VJP too, but eagerly where the weights take a gradient
    jit = backend == "jax" and (path.startswith("fused") or (path == "tiled" and options.get("detach_weights", True)))
    value, grad = cases.value_and_gradient(
        backend, cases.LOSSES[name].function, z, ids, jit=jit, uniforms=reference["uniforms"], **options
    )
    dispatched = cases.PATHS[path][0]
    assert ran and set(ran) == {(dispatched, cases.implemented_in(dispatched, backend))}
    assert_close(value, reference["naive"], rtol=1e-11, atol=1e-13)
    # 1e-11, not 1e-12: at tau = 0.1 the kernel's in-place order of operations rounds 2e-12 apart
    assert_close(value, reference["value"], rtol=1e-11, atol=1e-13)
    if grad is not None and reference["grad"] is not None:
        assert_close(grad, reference["grad"], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    "backend, options, reason",
    [
        ("array_api_strict", {}, "not array_api"),
        ("jax", {"hardening": hcl.hardening.top_k(3)}, "uniform and exponential"),
        ("numpy", {"hardening": hcl.hardening.threshold(0.1)}, "uniform and exponential"),
        ("numpy", {"form": "debiased"}, "debiased form"),
        ("torch", {"reduction": "none"}, "per-anchor values"),
        ("jax", {"reduction": "none"}, "per-anchor values"),
    ],
    ids=["array-api-strict", "jax-top-k", "threshold", "debiased", "reduction-none", "jax-reduction-none"],
)
def test_forcing_the_kernel_where_it_cannot_compute_names_the_reason(backend, options, reason):
    """Path: fused, forced with kernel="fused"; it raises instead of falling back to the array-API code."""
    xp = cases.namespace(backend)
    z, ids = cases.batch(8, seed=1)
    with pytest.raises(ValueError, match=f"kernel='fused' cannot compute this call: .*{reason}"):
        hcl.contrastive_loss(xp.asarray(z), xp.asarray(ids), kernel="fused", **options)


@pytest.mark.parametrize("backend", cases.available(("numpy", "torch")))
def test_the_global_alias_keeps_auto_calls_off_the_kernel(backend, monkeypatch):
    """Path: dense via `losses.USE_FUSED_KERNEL = False` (the alias of kernel="array_api" for kernel="auto");
    an explicit kernel="fused" still takes the kernel."""
    xp = cases.namespace(backend)
    z, ids = cases.batch(10, seed=2)
    monkeypatch.setattr(hcl.losses, "USE_FUSED_KERNEL", False)
    ran = cases.record_paths(monkeypatch)
    options = cases.loss_options("hscl", {})
    value = hcl.hscl(xp.asarray(z), xp.asarray(ids), **options)
    forced = hcl.hscl(xp.asarray(z), xp.asarray(ids), kernel="fused", **options)
    assert [path for path, _ in ran] == ["dense", "fused"]
    assert_close(value, cases.reference_value("hscl", z, ids, {}), rtol=1e-11, atol=1e-13)
    assert_close(forced, value, rtol=1e-12)


@pytest.mark.parametrize(
    "path, grad_fn", [("dense", None), ("tiled", "TiledLossBackward"), ("fused", "FusedLossBackward")]
)
def test_torch_graphs_hold_the_registered_functions(path, grad_fn):
    """Path: each of dense, tiled and fused on torch: the autograd graph ends in the path's Function
    (dense: autograd through the array-API code, no custom Function)."""
    torch = pytest.importorskip("torch")
    z, ids = cases.batch(10, seed=3)
    value = hcl.hscl(torch.tensor(z, requires_grad=True), torch.tensor(ids), **cases.path_options(path, 3))
    name = type(value.grad_fn).__name__
    assert name == grad_fn if grad_fn else name not in ("TiledLossBackward", "FusedLossBackward")


def test_the_jax_kernel_rows_cover_every_option_row_it_serves():
    """Each option row the kernel serves (every row but per-anchor values) runs on JAX's kernel at least once."""
    served = [row for row in cases.OPTIONS if row.get("reduction") != "none"]
    chosen = [row for rows in JAX_FUSED_ROWS.values() for row in rows] + list(JAX_ONE_BLOCK_ROWS.values())
    assert [row for row in served if row not in chosen] == []
    assert all(row in cases.OPTIONS for row in chosen)
