"""Peer parity: the same inputs give pytorch-metric-learning's and lightly's numbers to 1e-6 (float64)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import hcl_array as hcl

torch = pytest.importorskip("torch")


def labelled_batch(seed: int, n: int = 32, d: int = 8, classes: int = 5):
    rng = np.random.default_rng(seed)
    z = torch.tensor(rng.normal(size=(n, d)), dtype=torch.float64)
    return z, torch.tensor(rng.integers(0, classes, size=n))


@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supcon_equals_pytorch_metric_learning(temperature, seed):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    z, labels = labelled_batch(seed)
    z.requires_grad_(True)
    peer = losses.SupConLoss(temperature=temperature)(z, labels)
    ours = hcl.supcon(z, labels, temperature=temperature)
    assert ours.item() == pytest.approx(peer.item(), rel=1e-6, abs=1e-9)
    (peer_grad,) = torch.autograd.grad(peer, z)
    (our_grad,) = torch.autograd.grad(ours, z)
    torch.testing.assert_close(our_grad, peer_grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("labels", ["instances", "classes"])
def test_ntxent_equals_pytorch_metric_learning(temperature, labels):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    if labels == "instances":  # SimCLR: two views of each of 16 samples, view-major
        z = torch.tensor(np.random.default_rng(3).normal(size=(32, 8)), dtype=torch.float64)
        ids = torch.cat([torch.arange(16), torch.arange(16)])
    else:  # several positives per anchor: every positive pair is its own term
        z, ids = labelled_batch(4)
    z.requires_grad_(True)
    peer = losses.NTXentLoss(temperature=temperature)(z, ids)
    ours = hcl.ntxent(z, ids, temperature=temperature)
    assert ours.item() == pytest.approx(peer.item(), rel=1e-6, abs=1e-9)
    (peer_grad,) = torch.autograd.grad(peer, z)
    (our_grad,) = torch.autograd.grad(ours, z)
    torch.testing.assert_close(our_grad, peer_grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_ntxent_equals_lightly(temperature):
    """lightly needs torchvision, which fails beside the CPU torch wheel: its own nox session runs this."""
    if os.environ.get("HCL_REQUIRE_LIGHTLY"):  # the lightly nox session: a failed import must fail
        import lightly.loss as lightly_losses
    else:
        lightly_losses = pytest.importorskip("lightly.loss", exc_type=ImportError)
    rng = np.random.default_rng(5)
    view0 = torch.tensor(rng.normal(size=(16, 8)), requires_grad=True)
    view1 = torch.tensor(rng.normal(size=(16, 8)), requires_grad=True)
    peer = lightly_losses.NTXentLoss(temperature=temperature)(view0, view1)
    ours = hcl.ntxent(torch.stack([view0, view1], dim=1), temperature=temperature)
    assert ours.item() == pytest.approx(peer.item(), rel=1e-6, abs=1e-9)
    peer_grads = torch.autograd.grad(peer, (view0, view1))
    our_grads = torch.autograd.grad(ours, (view0, view1))
    for our_grad, peer_grad in zip(our_grads, peer_grads, strict=False):
        torch.testing.assert_close(our_grad, peer_grad, rtol=1e-6, atol=1e-9)
