"""No silent NaN or Inf: for finite input every loss returns a finite value and a finite gradient, or raises a
ValueError that names what overflowed and how to fix it.

A property test (hypothesis) over every loss, 1 to 300 rows, d from 1 to 128, float16 / bfloat16 / float32 /
float64, scales from 0 to 1e30, temperatures from 0.01 to 10, beta from 0 to 1000, every normalization,
sampled and expected negatives, tiles, on NumPy (`return_grad=True`) and torch (autograd).

The default run uses a small profile; `nox -s hypothesis` (HCL_HYPOTHESIS_PROFILE=many) runs thousands of
examples.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hcl_array as hcl

_SHARED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "derandomize": False}
settings.register_profile("default", max_examples=40, **_SHARED)
settings.register_profile("many", max_examples=int(os.environ.get("HCL_HYPOTHESIS_EXAMPLES", "3000")), **_SHARED)
PROFILE = os.environ.get("HCL_HYPOTHESIS_PROFILE", "default")

LOSSES = {
    "scl": hcl.scl,
    "hscl": hcl.hscl,
    "ucl": hcl.ucl,
    "hucl": hcl.hucl,
    "supcon": hcl.supcon,
    "ntxent": hcl.ntxent,
    "debiased_hcl": hcl.debiased_hcl,
}
TILTED = {"hscl", "hucl", "debiased_hcl"}
DTYPES = {"numpy": ("float16", "float32", "float64"), "torch": ("float16", "bfloat16", "float32", "float64")}
FIXES = ("normalize", "scale", "dtype")


@st.composite
def calls(draw: st.DrawFn) -> dict:
    """One loss call: the batch as (seed, shape, scale) and every option the property ranges over."""
    framework = draw(st.sampled_from(sorted(DTYPES)))
    rows = draw(st.integers(1, 300))
    # 0, or 10^e with e an integer from -30 to 30 (every regime of the dtypes: the boundaries lie between them)
    exponent = draw(st.one_of(st.just(-math.inf), st.integers(-30, 30)))
    name = draw(st.sampled_from(sorted(LOSSES)))
    options = {
        "temperature": draw(st.one_of(st.sampled_from([0.01, 0.1, 1.0, 10.0]), st.floats(0.01, 10))),
        "normalize": draw(st.sampled_from(["sphere", "ball", "none"])),
        "tile": draw(st.sampled_from([None, "auto", 1, 7, 64])),
    }
    if name in TILTED:
        options["beta"] = draw(st.one_of(st.sampled_from([0.0, 1.0, 1000.0]), st.floats(0, 1000)))
    if draw(st.booleans()):
        options.update(negatives="sampled", k=draw(st.integers(1, 300)), rng=draw(st.integers(0, 2**32 - 1)))
        if name == "debiased_hcl" and isinstance(options["tile"], int):  # only the dense path samples it
            options["tile"] = None
    return {
        "name": name,
        "framework": framework,
        "dtype": draw(st.sampled_from(DTYPES[framework])),
        "shape": (rows, draw(st.integers(1, 128))),
        "classes": draw(st.integers(1, 12)),
        "scale": 0.0 if exponent == -math.inf else draw(st.floats(1, 10)) * 10.0**exponent,
        "spread": draw(st.sampled_from([0.0, 3.0])),  # rows whose norms span 10^+-3 around the scale
        "seed": draw(st.integers(0, 2**32 - 1)),
        "options": options,
    }


def _batch(call: dict) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(call["seed"])
    rows, _ = call["shape"]
    row_scale = call["scale"] * 10.0 ** rng.uniform(-call["spread"], call["spread"], size=(rows, 1))
    return rng.normal(size=call["shape"]) * row_scale, rng.integers(0, call["classes"], rows)


def _value_and_grad(call: dict, z64: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(value, gradient, whether the input as cast to its dtype is finite), as float64 NumPy arrays."""
    loss = LOSSES[call["name"]]
    if call["framework"] == "numpy":
        with np.errstate(over="ignore"):  # the cast of a huge float64 to float16 is the input, not the loss
            z = z64.astype(call["dtype"])
        value, grad = loss(z, ids, return_grad=True, **call["options"])
        return np.asarray(value, dtype=np.float64), np.asarray(grad, dtype=np.float64), bool(np.isfinite(z).all())
    import torch

    z = torch.tensor(z64).to(getattr(torch, call["dtype"])).requires_grad_()
    value = loss(z, torch.tensor(ids), **call["options"])
    value.backward()
    finite_input = bool(torch.isfinite(z).all())
    return value.detach().double().numpy(), z.grad.double().numpy(), finite_input


def _check(call: dict) -> None:
    z64, ids = _batch(call)
    try:
        value, grad, finite_input = _value_and_grad(call, z64, ids)
    except ValueError as error:
        message = str(error)
        if "NaN or Inf" in message:  # the input itself overflowed its dtype (e.g. 1e30 as float16)
            return
        assert "overflow" in message and all(fix in message for fix in FIXES), message
        return
    assert finite_input, "a non-finite input was accepted"
    assert np.isfinite(value).all(), f"silent non-finite loss {value}"
    assert np.isfinite(grad).all(), "silent non-finite gradient"


@pytest.mark.skipif(PROFILE != "default", reason="the many-example profile runs test_every_loss_is_finite_or_says_why")
@settings(settings.get_profile("default"))
@given(calls())
def test_small_profile_every_loss_is_finite_or_says_why(call: dict) -> None:
    _check(call)


@pytest.mark.skipif(PROFILE == "default", reason="many examples: nox -s hypothesis")
@settings(settings.get_profile("many"))
@given(calls())
def test_every_loss_is_finite_or_says_why(call: dict) -> None:
    _check(call)


@pytest.mark.parametrize(
    ("dtype", "scale", "temperature"),
    [("float32", 1e30, 1.0), ("float32", 1e20, 1.0), ("float16", 1e4, 0.01), ("float64", 1e160, 1.0)],
)
def test_the_fuzzed_overflows_raise_with_the_fix(dtype, scale, temperature):
    """The inputs of issue 13's fuzz: similarities beyond the dtype's range with normalize='none'."""
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(32, 8)) * scale).astype(dtype)
    ids = rng.integers(0, 4, 32)
    with pytest.raises(ValueError, match="overflow") as error:
        hcl.hscl(z, ids, normalize="none", temperature=temperature, return_grad=True)
    assert all(fix in str(error.value) for fix in FIXES)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_huge_rows_are_normalized_without_overflow(framework):
    """||z|| of a float32 row of 1e30 entries overflows a plain sum of squares; g(z) must not become 0."""
    rng = np.random.default_rng(1)
    z, ids = rng.normal(size=(16, 128)), rng.integers(0, 3, 16)
    expected = hcl.hscl(z, ids, normalize="sphere")
    huge = (z * 1e30).astype(np.float32)
    if framework == "torch":
        import torch

        huge, ids = torch.tensor(huge), torch.tensor(ids)
    for kernel in ("fused", "array_api"):
        np.testing.assert_allclose(float(hcl.hscl(huge, ids, normalize="sphere", kernel=kernel)), expected, rtol=1e-5)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_a_float16_gradient_beyond_its_range_raises_with_the_fix(framework):
    """Tiny float16 rows on the sphere at tau = 0.01: the loss is finite (computed in float32), but dL/dz ~
    1 / (N tau ||z||) exceeds float16's 65504. NumPy's return_grad and torch's autograd both raise."""
    rng = np.random.default_rng(193)
    z, ids = (rng.normal(size=(4, 2)) * 1e-5).astype(np.float16), np.array([0, 1, 0, 1])
    assert np.isfinite(hcl.hscl(z.astype(np.float64), ids, temperature=0.01, normalize="sphere"))
    with pytest.raises(ValueError, match="gradient overflowed") as error:
        if framework == "numpy":
            hcl.hscl(z, ids, temperature=0.01, normalize="sphere", return_grad=True)
        else:
            import torch

            z_torch = torch.tensor(z, requires_grad=True)
            hcl.hscl(z_torch, torch.tensor(ids), temperature=0.01, normalize="sphere").backward()
    assert all(fix in str(error.value) for fix in FIXES)
