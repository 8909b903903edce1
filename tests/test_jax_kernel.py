"""The JAX kernel (`backends/_jax_fused.py`) beyond tests/test_paths.py's option rows: bad input, float32 at
the edges of the range, the draws other backends take, and the ways of calling it.

tests/test_paths.py holds it to the dense path and the naive loops at 1e-10 for every option row it serves;
tests/test_draws.py holds its draws to a binary search; tests/test_distributed_jax.py runs it in shard_map.
"""

from __future__ import annotations

import numpy as np
import pytest

import hcl_array as hcl
from tests import cases
from tests.conftest import assert_close
from tests.reference import naive_loss

jax = pytest.importorskip("jax")
jnp = cases.namespace("jax")  # x64 on, as for every JAX test


@pytest.mark.parametrize("row", [0, 9, 22])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("negatives", ["expected", "sampled"])
def test_a_non_finite_row_is_reported_not_returned(row, bad, negatives, monkeypatch):
    """Path: fused on JAX, eager: the kernel's value is NaN (its 0 * sum(z) term), and the dispatcher's one
    scalar test then names the bad input; row 0 is the only member of its class."""
    z, ids = cases.batch(23, seed=4)
    z[row, 1] = bad
    options = {"negatives": "sampled", "k": 6, "uniforms": cases.uniforms(23, 6)} if negatives == "sampled" else {}
    ran = cases.record_paths(monkeypatch)
    with pytest.raises(ValueError, match="NaN or Inf"):
        hcl.hscl(jnp.asarray(z), jnp.asarray(ids), beta=1.0, **options)
    assert ran == [("fused", "hcl_array.backends._jax_fused")]


def test_under_jit_a_bad_row_makes_the_value_nan():
    """Path: fused on JAX under jax.jit, where nothing is concrete to test: the value says NaN instead."""
    z, ids = cases.batch(23, seed=4)
    z[5, 0] = np.inf
    value = jax.jit(lambda x: hcl.hscl(x, jnp.asarray(ids), beta=1.0))(jnp.asarray(z))
    assert np.isnan(float(value))


@pytest.mark.parametrize("negatives", ["expected", "sampled"])
def test_float32_at_a_low_temperature_and_a_large_tilt_stays_finite_and_close(negatives):
    """Path: fused on JAX in float32 (tau = 0.01, beta = 1000: every exponent max-shifted) against NumPy's
    kernel in float64 on the same rounded input, under jax.jit."""
    z, ids = cases.batch(64, seed=9, d=16, classes=6)
    z32 = z.astype(np.float32)
    options = {"beta": 1000.0, "temperature": 0.01, "normalize": "sphere"}
    if negatives == "sampled":
        options.update(negatives="sampled", k=32, uniforms=cases.uniforms(64, 32))
    value64, grad64 = hcl.hscl(z32.astype(np.float64), ids, return_grad=True, **options)
    jax_options = {**options, "uniforms": None if negatives == "expected" else jnp.asarray(options["uniforms"])}
    step = jax.jit(jax.value_and_grad(lambda x: hcl.hscl(x, jnp.asarray(ids), **jax_options)))
    value, grad = step(jnp.asarray(z32))
    assert value.dtype == jnp.float32 and np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    assert_close(value, value64, rtol=1e-4)
    assert_close(grad, grad64, rtol=1e-2, atol=1e-3 * np.abs(grad64).max())


@pytest.mark.parametrize("name", ["hscl", "ucl"])
def test_the_tree_draws_other_backends_take_give_the_same_loss(name, monkeypatch):
    """Path: fused on JAX with the draws of a non-CPU backend (`tree_draw_columns` in XLA instead of the
    host's guide table), in blocks, against the naive loops and NumPy's analytic gradient at 1e-10."""
    from hcl_array.backends import _jax_fused

    traced = []
    tree = _jax_fused.tree_draw_columns
    monkeypatch.setattr(_jax_fused, "_draws_on_host", lambda: False)
    monkeypatch.setattr(_jax_fused, "tree_draw_columns", lambda *args: traced.append(1) or tree(*args))
    jax.clear_caches()  # the programs traced with the host's draws must not be reused
    z, ids = cases.batch(29, seed=12)
    draws = cases.uniforms(29, 9)
    options = {**cases.loss_options(name, {}), "negatives": "sampled", "k": 9, "tile": 8}
    loss = cases.LOSSES[name].function
    value, grad = jax.value_and_grad(lambda x: loss(x, jnp.asarray(ids), **options, uniforms=jnp.asarray(draws)))(
        jnp.asarray(z)
    )
    jax.clear_caches()
    assert traced  # the tree drew
    dense = {**options, "tile": None, "kernel": "array_api"}
    expected_value, expected_grad = loss(z, ids, **dense, uniforms=draws, return_grad=True)
    reference = naive_loss(z, ids, **{**cases.LOSSES[name].reference, "k": 9}, uniforms=draws)
    assert_close(value, reference, rtol=1e-11, atol=1e-13)
    assert_close(grad, expected_grad, rtol=1e-10, atol=1e-13)
    assert_close(value, expected_value, rtol=1e-11)


def test_value_alone_return_grad_and_jax_grad_agree(monkeypatch):
    """Path: fused on JAX, called three ways: the value alone (no gradient computed), return_grad=True (one
    jitted pass) and jax.grad through the custom VJP, eager; a cotangent other than 1 scales the gradient."""
    z, ids = cases.batch(30, seed=6)
    z_, ids_ = jnp.asarray(z), jnp.asarray(ids)
    ran = cases.record_paths(monkeypatch)
    plain = hcl.hscl(z_, ids_, beta=2.0)
    value, grad = hcl.hscl(z_, ids_, beta=2.0, return_grad=True)
    scaled = jax.grad(lambda x: 3.0 * hcl.hscl(x, ids_, beta=2.0))(z_)
    assert {path for path, _ in ran} == {"fused"}
    expected_value, expected_grad = hcl.hscl(z, ids, beta=2.0, kernel="array_api", return_grad=True)
    assert_close(plain, expected_value, rtol=1e-12)
    assert_close(value, expected_value, rtol=1e-12)
    assert_close(grad, expected_grad, rtol=1e-10, atol=1e-13)
    assert_close(scaled, 3.0 * expected_grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    ("tile", "n", "count", "expected"),
    [
        ("auto", 65_536, 65_536, 128),  # 2**24 / 2 entries per (rows, N) block
        ("auto", 65_536, 16_384, 128),  # a device's quarter of the anchors: still N = 65,536 columns
        ("auto", 2_048, 2_048, 2_048),  # 4096 rows at most, and never more than the anchors
        ("auto", 1_000_000, 500, 64),  # 64 rows at least
        (300, 65_536, 1_000, 300),
        (None, 8_192, 4_096, 4_096),
    ],
)
def test_blocks_hold_half_the_tiled_paths_entries_sized_by_the_columns(tile, n, count, expected):
    """Rows per block of the JAX kernel: min(max(2**23 / N, 64), 4096) for "auto", at most the anchors.
    XLA keeps several (rows, N) temporaries of a block live, hence half the array-API block; sizing by the
    anchors instead gave a device's share of a global batch blocks 8x too large (1024 rows above)."""
    from hcl_array.backends._jax_fused import rows_per_block_request

    assert rows_per_block_request(tile, n, count) == expected
