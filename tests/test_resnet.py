"""The ResNet encoders: the released architecture, parameter for parameter, and trained by `hcl train`.

Reference: the released `Model` of https://github.com/rjiang03/HCL (main/SCL/model.py), transcribed in
tests/released_model.py. Needs torchvision: skipped with the reason in the main CPU venv, run (and
required) by `nox -s vision`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from .vision import require_torchvision

pytestmark = pytest.mark.vision
torch = pytest.importorskip("torch")


def _count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.fixture(scope="module")
def torchvision():
    return require_torchvision()


def test_resnet50_is_the_released_model_weight_for_weight(torchvision) -> None:
    from hcl_array.backends.torch import resnet_encoder
    from hcl_array.losses import normalize_embeddings

    from .released_model import released_model

    ours = resnet_encoder("resnet50", 99, seed=3)
    torch.manual_seed(3)
    released = released_model(torchvision.models, feature_dim=99)
    assert _count(ours) == _count(released) == 24_600_739  # the count the issue read from the released code
    ours_state, released_state = ours.state_dict(), released.state_dict()
    assert list(ours_state) == list(released_state)  # same names: a released state_dict loads as it is
    for name, value in released_state.items():
        assert torch.equal(ours_state[name], value), name  # the same draws in the same order
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours.eval(), released.eval()
    with torch.no_grad():
        out = ours(images)
        released_feature, released_out = released(images)
        assert torch.equal(torch.flatten(ours.f(images), start_dim=1), released_feature)
    assert out.shape == (4, 99)
    clipped = normalize_embeddings(out, "ball")  # the loss's unit-ball clip, where the released model has its own
    torch.testing.assert_close(clipped, released_out, rtol=0, atol=1e-7)  # x / n against x * (1 / n): an ulp


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("resnet18", 11_168_832 + 512 * 512 + 2 * 512 + 512 * 9 + 9),
        ("resnet18-linear", 11_168_832 + 512 * 9 + 9),
        ("resnet50-linear", 23_500_352 + 2048 * 9 + 9),
    ],
)
def test_other_resnets_have_the_trunk_and_head_they_name(torchvision, kind: str, expected: int) -> None:
    """Trunk counts: torchvision's resnet18 / resnet50 without fc, conv1 3x3 (1728 weights instead of 9408)."""
    from hcl_array.backends.torch import resnet_encoder

    model = resnet_encoder(kind, 9, seed=0)
    trunk = getattr(torchvision.models, kind.removesuffix("-linear"))()
    trunk_count = _count(trunk) - _count(trunk.fc) - trunk.conv1.weight.numel() + 64 * 3 * 3 * 3
    assert _count(model.f) == trunk_count and _count(model) == expected
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 9)
    assert model.f[0].kernel_size == (3, 3) and not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_seed_fixes_the_weights_and_leaves_torch_generator_alone(torchvision) -> None:
    from hcl_array.backends.torch import resnet_encoder

    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = resnet_encoder("resnet18", 5, seed=1)
    assert torch.equal(torch.rand(3), before)  # building a model drew nothing from the global generator
    second = resnet_encoder("resnet18", 5, seed=1)
    other = resnet_encoder("resnet18", 5, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))
    assert not torch.equal(first.g[0].weight, other.g[0].weight)


def test_resnet_on_another_device_moves_its_batchnorm_statistics(tmp_path, torchvision) -> None:
    """`hcl train --encoder resnet18 --device cuda` failed: only the parameters moved (meta stands in for cuda)."""
    from hcl_array import training

    from .fabricate import write_binary_cifar

    write_binary_cifar(tmp_path, 10, per_batch=4)
    config = training.TrainConfig(
        data="cifar10", data_dir=str(tmp_path), encoder="resnet18", backend="torch", device="meta", batch_size=8
    )
    run = training._setup(config)
    x, ids, indices, uniforms = training._batch_arguments(run, np.arange(8), epoch=0, batch_number=0)
    z = run.objective.embed(run.params, x, indices)
    assert z.device.type == "meta" and z.shape == (8, 9)
    assert all(buffer.device.type == "meta" for buffer in run.module.buffers.values())


def test_resnet18_trains_and_resumes_exactly_with_its_batchnorm_statistics(tmp_path, torchvision) -> None:
    from hcl_array import training
    from hcl_array.checkpoint import load_checkpoint

    from .fabricate import write_binary_cifar

    write_binary_cifar(tmp_path / "data", 10, per_batch=4)
    config = training.TrainConfig(
        data="cifar10", data_dir=str(tmp_path / "data"), encoder="resnet18", backend="torch", batch_size=8,
        epochs=2, image_size=8, augment="simclr", loss="ucl", paper=True, k=8,
    )  # fmt: skip
    training.train(config, out=tmp_path / "full.npz")
    training.train(dataclasses.replace(config, epochs=1), out=tmp_path / "part.npz")
    resumed = training.train(config, resume_from=tmp_path / "part.npz")
    saved = load_checkpoint(tmp_path / "full.npz")
    assert any(key.endswith("running_mean") for key in saved.extra)
    again = load_checkpoint(resumed.path)
    for name, value in saved.params.items():
        np.testing.assert_array_equal(again.params[name], value, err_msg=name)
    for name, value in saved.extra.items():
        np.testing.assert_array_equal(again.extra[name], value, err_msg=name)
    np.testing.assert_array_equal(again.train_embeddings, saved.train_embeddings)
