"""`hcl train` and `hcl backends` through typer's CliRunner: every option, and one-line errors for bad values."""

from __future__ import annotations

import importlib.util
import inspect

import numpy as np
import pytest
from typer.testing import CliRunner

from hcl_array.checkpoint import load_checkpoint
from hcl_array.cli.app import app
from hcl_array.cli.train import train_command

runner = CliRunner()
SMALL = ["--classes", "4", "--per-class", "10", "--input-dim", "6", "--batch-size", "16", "--epochs", "2"]


def invoke(*args: str):
    return runner.invoke(app, ["train", *args])


def test_help_explains_every_option_with_its_default() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    options = [name for name in inspect.signature(train_command).parameters if name != "ctx"]
    for name in options:
        assert f"--{name.replace('_', '-')}" in result.output, name
    assert result.output.count("[default:") >= len(options) - 5  # flags and the path-less options say "None"
    assert "beta" in result.output and "unit-ball" in result.output


def test_every_option_reaches_the_run(tmp_path) -> None:
    out = tmp_path / "all.npz"
    result = invoke(
        "--data",
        "synthetic",
        "--classes",
        "4",
        "--per-class",
        "12",
        "--input-dim",
        "6",
        "--separation",
        "4",
        "--noise",
        "0.5",
        "--encoder",
        "linear",
        "--hidden",
        "8",
        "--loss",
        "hucl",
        "--beta",
        "2",
        "--temperature",
        "0.5",
        "--normalize",
        "sphere",
        "--negatives",
        "sampled",
        "--k",
        "8",
        "--dim",
        "3",
        "--batch-size",
        "16",
        "--epochs",
        "2",
        "--lr",
        "0.01",
        "--optimizer",
        "sgd",
        "--seed",
        "3",
        "--dtype",
        "float64",
        "--device",
        "cpu",
        "--backend",
        "numpy",
        "--views",
        "2",
        "--paper",
        "--out",
        str(out),
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out), "--quiet prints only the checkpoint path"
    config = load_checkpoint(out).config["train_config"]
    expected = {
        "data": "synthetic",
        "classes": 4,
        "per_class": 12,
        "input_dim": 6,
        "separation": 4.0,
        "noise": 0.5,
        "encoder": "linear",
        "hidden": 8,
        "loss": "hucl",
        "beta": 2.0,
        "temperature": 0.5,
        "normalize": "sphere",
        "negatives": "sampled",
        "k": 8,
        "dim": 3,
        "batch_size": 16,
        "epochs": 2,
        "lr": 0.01,
        "optimizer": "sgd",
        "seed": 3,
        "dtype": "float64",
        "device": "cpu",
        "backend": "numpy",
        "views": 2,
        "paper": True,
    }
    assert {key: config[key] for key in expected} == expected
    assert load_checkpoint(out).config["loss_options"]["include_self"] is True, "--paper applies PAPER_PRESET"


def test_progress_and_summary_name_the_checkpoint(tmp_path) -> None:
    out = tmp_path / "run.npz"
    result = runner.invoke(app, ["train", *SMALL, "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "loss" in result.output and "equal inner product" in result.output
    assert f"checkpoint: {out}" in result.output
    assert load_checkpoint(out).epoch == 2


def test_npz_data_by_path_and_by_name(tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "points.npz"
    np.savez(data, x=rng.normal(size=(40, 5)), y=np.repeat(np.arange(2), 20))
    for args in (["--data", str(data)], ["--data", "npz", "--data-path", str(data)]):
        out = tmp_path / "npz-run.npz"
        result = invoke(*args, "--batch-size", "8", "--epochs", "1", "--out", str(out), "-q")
        assert result.exit_code == 0, result.output
        saved = load_checkpoint(out)
        assert saved.config["train_config"]["data_path"] == str(data)
        assert saved.train_embeddings.shape[1] == 1  # d = C - 1


def test_resume_continues_with_the_saved_options(tmp_path) -> None:
    out = tmp_path / "run.npz"
    first = invoke(*SMALL[:-1], "1", "--loss", "scl", "--seed", "4", "--out", str(out), "-q")
    assert first.exit_code == 0, first.output
    resumed = invoke("--resume", str(out), "--epochs", "3", "-q")
    assert resumed.exit_code == 0, resumed.output
    saved = load_checkpoint(out)
    assert saved.epoch == 3 and saved.config["train_config"]["loss"] == "scl"
    assert saved.history["loss"].shape == (3,)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "tensorflow"], "unknown backend 'tensorflow'; choose one of numpy, torch, jax, cupy"),
        (["--beta", "-1"], "beta must be a finite number >= 0"),
        (["--data", "cifar10", "--data-dir", "/no/such/folder"], "is not a directory"),
        (["--data", "cifar100"], "needs --data-dir"),
        (["--data", "missing.npz"], "does not exist"),
        (["--dtype", "float16"], "dtype='float16' is not one of float32, float64"),
        (["--loss", "triplet"], "loss='triplet' is not one of"),
        (["--normalize", "cube"], "normalize='cube' is not one of"),
        (["--optimizer", "lbfgs"], "optimizer='lbfgs' is not one of"),
        (["--encoder", "resnet18"], "only with --backend torch"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--lr", "0"], "lr must be a finite number > 0"),
        (["--device", "cuda:3"], "device"),
    ],
)
def test_bad_values_give_one_line_and_a_nonzero_exit(args: list[str], message: str) -> None:
    result = invoke(*SMALL, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_unreadable_resume_checkpoint(tmp_path) -> None:
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip archive")
    for path in (broken, tmp_path / "absent.npz"):
        result = invoke("--resume", str(path))
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert str(path) in result.output and len(result.output.strip().splitlines()) == 1


def test_resume_with_a_conflicting_option_is_refused(tmp_path) -> None:
    out = tmp_path / "run.npz"
    assert invoke(*SMALL, "--out", str(out), "-q").exit_code == 0
    result = invoke("--resume", str(out), "--loss", "scl")
    assert (
        result.exit_code != 0
        and "cannot resume with a different configuration (loss: 'hscl' -> 'scl')" in result.output
    )


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed here")
def test_backend_not_installed_names_the_extra() -> None:
    result = invoke(*SMALL, "--backend", "cupy")
    assert result.exit_code != 0 and "pip install 'hcl-array[cupy]'" in result.output


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_resnet_without_torchvision_names_it() -> None:
    pytest.importorskip("torch")
    result = invoke(*SMALL, "--backend", "torch", "--encoder", "resnet18")
    assert result.exit_code != 0 and "needs torchvision" in result.output and "Traceback" not in result.output


def test_backends_command_lists_installed_backends() -> None:
    result = runner.invoke(app, ["backends"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "numpy" in result.output and np.__version__ in result.output and "cpu" in result.output
    assert "cupy" in result.output
