"""What a first GPU run would meet, reproduced on the CPU with stand-ins, each held to the value it must give.

- torch.autocast (CPU autocast in float16 and bfloat16 stands in for CUDA's): the loss stays float32 and
  equals the loss without autocast on the fused, dense and tiled paths (autocast ran the kernel's last
  product and the array-API similarities in half precision: a float16 loss, or 0.0, or an overflow).
- JAX's TF32 default on Ampere / Hopper: every matrix product the loss traces asks for full float32.
- Devices: a meta tensor, or a second JAX host device (XLA_FLAGS), stands in for a second GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import hcl_array as hcl

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]

PATHS = {
    "fused": {},
    "dense": {"kernel": "array_api", "tile": None},
    "tiled": {"kernel": "array_api", "tile": 128},
}


def _batch(n: int = 1024, dim: int = 16, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    z = torch.tensor(rng.normal(size=(n, dim)), dtype=torch.float32)
    return z, torch.tensor(rng.integers(0, classes, n))


def _value_and_grad(
    z: torch.Tensor, labels: torch.Tensor, autocast: str | None = None, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss (under CPU autocast in that dtype, when given) and its gradient, the backward pass outside
    autocast as PyTorch's AMP recipe has it."""
    leaf = z.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=getattr(torch, autocast or "float16"), enabled=autocast is not None):
        value = hcl.hscl(leaf, labels, beta=5.0, **options)
    value.backward()
    return value, leaf.grad


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_autocast_leaves_the_loss_in_float32_and_equal_to_the_loss_without_it(path, dtype):
    """N = 1024, beta = 5: in float16 the sum of the exponentials overflowed (the fused kernel raised, the
    dense and tiled paths returned 0.0); in bfloat16 the loss came back bfloat16, 0.2% off."""
    z, labels = _batch()
    expected_value, expected_grad = _value_and_grad(z, labels, **PATHS[path])
    value, grad = _value_and_grad(z, labels, autocast=dtype, **PATHS[path])
    assert value.dtype == torch.float32 and grad.dtype == torch.float32
    assert torch.isfinite(value) and bool(torch.isfinite(grad).all())
    torch.testing.assert_close(value, expected_value, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-9)


def test_autocast_around_the_backward_pass_of_per_anchor_values_recomputes_in_float32():
    """reduction="none" on the tiled path recomputes the blocks in its own backward pass, outside the loss
    call; a loop that calls backward inside autocast ran those products in bfloat16."""
    z, labels = _batch(n=512)
    options = {"reduction": "none", "kernel": "array_api", "tile": 128}
    leaf = z.clone().requires_grad_()
    cotangent = torch.linspace(0.5, 1.5, 512)
    (hcl.hscl(leaf, labels, beta=5.0, **options) * cotangent).sum().backward()
    expected = leaf.grad
    leaf = z.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (hcl.hscl(leaf, labels, beta=5.0, **options) * cotangent).sum().backward()
    torch.testing.assert_close(leaf.grad, expected, rtol=1e-5, atol=1e-9)


def _dot_precisions(jaxpr) -> list:
    """The precision of every dot_general in a jaxpr and in the jaxprs nested in it (jit, scan, custom rules)."""
    found = []
    for equation in jaxpr.eqns:
        if equation.primitive.name == "dot_general":
            found.append(equation.params["precision"])
        for param in equation.params.values():
            for inner in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    found += _dot_precisions(inner)
    return found


JAX_CALLS = {
    "dense": {"tile": None},
    "tiled": {"tile": 8},
    "tiled-per-anchor": {"tile": 8, "reduction": "none"},
    "sampled": {"negatives": "sampled", "k": 4},
}


@pytest.mark.parametrize("name", sorted(JAX_CALLS))
def test_jax_loss_products_ask_for_full_float32_precision(name):
    """JAX multiplies float32 matrices in TF32 on Ampere and Hopper by default (about 5e-4 relative error in
    s); every product of the loss and of its gradient must carry precision HIGHEST. The CPU ignores it, so
    the traced program is what shows it."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(20, 5)), dtype=jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, 20))
    options = dict(JAX_CALLS[name])
    if options.get("negatives") == "sampled":
        options["uniforms"] = rng.random((20, 4))

    def loss(x):
        return jnp.sum(hcl.hscl(x, labels, beta=2.0, **options))

    precisions = _dot_precisions(jax.make_jaxpr(jax.grad(loss))(z).jaxpr)
    assert len(precisions) >= 3, "the forward product and the two of the gradient"
    assert all(p is not None and "HIGHEST" in str(p) for p in precisions), precisions


def test_labels_on_another_device_than_the_embeddings_are_moved_to_the_embeddings():
    """As pytorch-metric-learning does: labels from a CPU data loader with embeddings on the GPU."""
    from hcl_array import dispatch

    labels = torch.arange(6)
    moved = dispatch._on_device_of(torch.zeros(6, 2, device="meta"), labels)
    assert moved.device.type == "meta"
    assert dispatch._on_device_of(torch.zeros(6, 2), labels) is labels, "no copy when they share a device"


_SECOND_JAX_DEVICE = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp, numpy as np
    import hcl_array as hcl
    rng = np.random.default_rng(3)
    z, labels = rng.normal(size=(24, 6)).astype(np.float32), rng.integers(0, 4, 24)
    first, second = jax.devices()[:2]
    z_second = jax.device_put(jnp.asarray(z), second)
    apart = hcl.hscl(z_second, jax.device_put(jnp.asarray(labels), first), beta=2.0)
    together = hcl.hscl(z_second, jax.device_put(jnp.asarray(labels), second), beta=2.0)
    print(json.dumps({"apart": float(apart), "together": float(together), "device": str(apart.device)}))
    """
)


def test_jax_labels_on_another_device_give_the_loss_of_labels_beside_the_embeddings():
    """Two JAX host devices stand in for two GPUs: committed arrays on different devices made the loss
    raise "incompatible devices for jitted computation"."""
    pytest.importorskip("jax")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", _SECOND_JAX_DEVICE], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert numbers["device"] == "TFRT_CPU_1" or numbers["device"].endswith("1")
    np.testing.assert_allclose(numbers["apart"], numbers["together"], rtol=0, atol=0)


def test_a_callable_eta_is_validated_on_the_device_of_the_similarities():
    """The grid was made on the CPU: an eta that closes over CUDA tensors failed on its first call."""
    seen = []

    def eta(s):
        if not isinstance(s, torch.Tensor):
            raise TypeError("a torch-only eta: validated on the first call")
        seen.append(s.device.type)
        return torch.ones(s.shape)  # non-negative and non-decreasing, readable on the host

    hardening = hcl.hardening.FromCallable(eta)
    similarity = torch.zeros(3, 3, device="meta")
    hardening.log_weights(similarity, torch.ones(3, 3, dtype=torch.bool, device="meta"))
    assert seen == ["meta", "meta"], "the validation grid, then the similarities, on their device"


@pytest.mark.parametrize(("device", "local_rank", "expected"), [("cuda:1", "0", 1), ("cuda", "3", 3)])
def test_init_distributed_makes_the_rank_gpu_current_before_nccl(monkeypatch, device, local_rank, expected):
    """NCCL binds a rank to the current GPU: without set_device every rank of a node took GPU 0."""
    import torch.distributed as dist

    from hcl_array.training import init_distributed

    calls = []
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    init_distributed(device, 30.0)
    assert calls == [("set_device", expected), ("init", "nccl")]


def test_a_matmul_precision_the_user_chose_is_kept():
    """Full float32 replaces JAX's default only: a user who asked for TF32 (for speed) keeps it."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    z = jnp.asarray(np.random.default_rng(2).normal(size=(12, 4)), dtype=jnp.float32)
    labels = jnp.arange(12) % 3
    with jax.default_matmul_precision("tensorfloat32"):
        jaxpr = jax.make_jaxpr(jax.grad(lambda x: hcl.hscl(x, labels, beta=1.0)))(z)
    precisions = _dot_precisions(jaxpr.jaxpr)
    assert precisions and all("HIGH" in str(p) and "HIGHEST" not in str(p) for p in precisions), precisions
