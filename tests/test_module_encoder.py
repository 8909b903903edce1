"""torch module encoders in `hcl train`, without torchvision: a small conv + BatchNorm network stands in for the
ResNet (`resnet_encoder` is replaced), so these run in the main CPU venv.

They pin the defects of the module path: BatchNorm running statistics that stayed on the CPU while the
parameters moved (`--device cuda` failed; the meta device stands in for a second device), evaluation in
train mode (batch statistics, and running statistics overwritten by the test set), and a checkpoint
without the running statistics (a resumed run diverged). And the fast paths: bf16 autocast, channels_last.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.vision

from hcl_array import training  # noqa: E402
from hcl_array.checkpoint import load_checkpoint  # noqa: E402

from .fabricate import write_binary_cifar  # noqa: E402


def _stand_in(kind: str, output_dim: int, seed: int) -> torch.nn.Module:
    """conv 3x3 + BatchNorm2d + ReLU + pooling, then the released head's Linear-BatchNorm1d-ReLU-Linear."""
    from hcl_array.backends._torch_modules import CifarResNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        head = torch.nn.Sequential(
            torch.nn.Linear(8, 16, bias=False),
            torch.nn.BatchNorm1d(16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, output_dim),
        )
        return CifarResNet(trunk, head)


@pytest.fixture
def config(tmp_path, monkeypatch) -> training.TrainConfig:
    monkeypatch.setattr("hcl_array.backends.torch.resnet_encoder", _stand_in)
    write_binary_cifar(tmp_path / "data", 10, per_batch=6)  # 30 training images, 6 test images
    return training.TrainConfig(
        data="cifar10", data_dir=str(tmp_path / "data"), encoder="resnet18", backend="torch", batch_size=10, epochs=3
    )


def _arguments(run, batch: int = 10):
    return training._batch_arguments(run, np.arange(batch), epoch=0, batch_number=0)


def test_batchnorm_statistics_live_on_the_parameters_device(config) -> None:
    """The defect of `--device cuda`: parameters moved, the running statistics stayed on the CPU module."""
    run = training._setup(dataclasses.replace(config, device="meta"))
    x, _, indices, _ = _arguments(run)
    assert x.device.type == "meta"
    z = run.objective.embed(run.params, x, indices)  # before the fix: a device mismatch inside BatchNorm
    assert z.device.type == "meta" and z.shape == (10, 9)
    assert {buffer.device.type for buffer in run.module.buffers.values()} == {"meta"}


def test_training_updates_running_statistics_and_evaluation_uses_them(config) -> None:
    run = training._setup(config)
    x, _, indices, _ = _arguments(run)
    statistics = {name: value.clone() for name, value in run.module.buffers.items()}
    evaluated = run.objective.encode(run.params, x, indices, train=False)
    for name, value in run.module.buffers.items():  # evaluation leaves them alone
        assert torch.equal(value, statistics[name]), name
    trained = run.objective.encode(run.params, x, indices)
    assert int(run.module.buffers["f.1.num_batches_tracked"]) == 1
    assert not torch.equal(run.module.buffers["f.1.running_mean"], statistics["f.1.running_mean"])
    # Independent reference: the same network in eval mode with the initial statistics (mean 0, var 1).
    module = _stand_in("resnet18", 9, config.seed).eval()
    with torch.no_grad():
        torch.testing.assert_close(evaluated, module(x), rtol=1e-6, atol=1e-6)
        module.train()  # batch statistics divide by small spreads: channels_last rounding grows to a few 1e-6
        torch.testing.assert_close(trained, module(x), rtol=1e-5, atol=1e-5)


def test_a_killed_run_resumes_exactly_with_its_running_statistics(config, tmp_path) -> None:
    full = training.train(config, out=tmp_path / "full.npz")
    training.train(dataclasses.replace(config, epochs=1), out=tmp_path / "part.npz")
    training.train(config, resume_from=tmp_path / "part.npz")
    uninterrupted, resumed = load_checkpoint(tmp_path / "full.npz"), load_checkpoint(tmp_path / "part.npz")
    assert sorted(uninterrupted.extra) == sorted(f"buffers/{name}" for name, _ in _stand_in("", 9, 0).named_buffers())
    for name, value in uninterrupted.extra.items():
        np.testing.assert_array_equal(resumed.extra[name], value, err_msg=name)
    for name, value in uninterrupted.params.items():
        np.testing.assert_array_equal(resumed.params[name], value, err_msg=name)
    for key, values in full.history.items():
        np.testing.assert_array_equal(resumed.history[key], values, err_msg=key)


def test_bf16_runs_the_module_in_bfloat16_and_returns_float32(config) -> None:
    fp32 = training._setup(config)
    bf16 = training._setup(dataclasses.replace(config, precision="bf16"))
    x, _, indices, _ = _arguments(fp32)
    exact = fp32.objective.encode(fp32.params, x, indices, train=False)
    rounded = bf16.objective.encode(bf16.params, x, indices, train=False)
    assert rounded.dtype == torch.float32
    assert 0 < (rounded - exact).abs().max() < 0.05 * exact.abs().max()  # bfloat16 keeps 8 bits of mantissa


def test_convolution_weights_and_inputs_are_channels_last(config) -> None:
    run = training._setup(config)
    weight = run.params["f.0.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    x, _, indices, _ = _arguments(run)
    plain = _stand_in("resnet18", 9, config.seed).eval()
    with torch.no_grad():
        torch.testing.assert_close(run.objective.encode(run.params, x, indices, train=False), plain(x))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"precision": "bf16", "encoder": "mlp"}, "bf16 runs a ResNet"),
        ({"precision": "bf16", "dtype": "float64"}, "needs --dtype float32"),
        ({"precision": "fp16"}, "precision='fp16' is not one of fp32, bf16"),
        ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0"),
    ],
)
def test_bad_module_options_fail_with_one_line(config, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        dataclasses.replace(config, **changes).validate()
    assert "\n" not in str(error.value)
