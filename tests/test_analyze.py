"""`hcl analyze`: JSON equals collapse_report, every figure is a real PNG with its lines, bad input fails cleanly.

Checkpoints are built here from synthetic arrays with save_checkpoint; nothing depends on training.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("typer")
pytest.importorskip("matplotlib")

from typer.testing import CliRunner

from hcl_array import analysis, plots
from hcl_array.checkpoint import Checkpoint, save_checkpoint, save_embeddings
from hcl_array.cli.app import app
from hcl_array.metrics import collapse_report

NUM_CLASSES, DIM, PER_CLASS, EPOCHS = 6, 5, 12, 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _embeddings(rng: np.random.Generator, spread: float, per_class: int = PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """Rows around random class centres; small `spread` is close to neural collapse."""
    centres = rng.normal(size=(NUM_CLASSES, DIM))
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    return centres[labels] + spread * rng.normal(size=(labels.size, DIM)), labels


def _checkpoint(path: Path, *, loss: str, beta: float, seed: int, history: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    train, train_labels = _embeddings(rng, 0.3)
    test, test_labels = _embeddings(rng, 0.3, per_class=4)
    means = rng.normal(size=(EPOCHS, NUM_CLASSES, DIM))
    recorded = {"loss": np.linspace(2.0, 1.0, EPOCHS)}
    if history:
        recorded |= {
            "within_class_variation": np.linspace(1.0, 0.2, EPOCHS),
            "nc1": np.geomspace(5.0, 0.05, EPOCHS),
            "test_mean_classifier_accuracy": np.linspace(0.2, 0.9, EPOCHS),
        }
    checkpoint = Checkpoint(
        train_embeddings=train,
        train_labels=train_labels,
        test_embeddings=test,
        test_labels=test_labels,
        class_means=means,
        history=recorded,
        config=_train_config(loss, beta),
        params={},
        optimizer_state={},
        epoch=EPOCHS,
    )
    return save_checkpoint(path, checkpoint)


def _train_config(loss: str, beta: float) -> dict:
    """The config layout `hcl train` writes: its options, and the loss options it resolved."""
    hard = loss.startswith("h")
    return {
        "train_config": {"loss": loss, "beta": None, "temperature": None},
        "loss_options": {"beta": beta} if hard else {},
        "num_classes": NUM_CLASSES,
        "dim": DIM,
    }


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        _checkpoint(tmp_path / "scl.npz", loss="scl", beta=0.0, seed=1),
        _checkpoint(tmp_path / "hscl.npz", loss="hscl", beta=5.0, seed=2),
    ]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, ["analyze", *args])


def _assert_same_numbers(got: dict, expected: dict) -> None:
    for key, value in expected.items():
        if key == "spectrum":
            continue
        if math.isfinite(value):
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
        else:
            assert got[key] is None, key


# ----------------------------------------------------------------------------------------------------
# Numbers


def test_json_equals_collapse_report(runs: list[Path], runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = _invoke(runner, *map(str, runs), "--json", str(out))
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert [run["name"] for run in document["runs"]] == ["SCL", "HSCL beta=5"]
    for path, run in zip(runs, document["runs"], strict=False):
        with np.load(path) as archive:
            train = (archive["train_embeddings"], archive["train_labels"])
            test = (archive["test_embeddings"], archive["test_labels"])
        expected_train = collapse_report(*train, num_classes=NUM_CLASSES)
        expected_test = collapse_report(*test, num_classes=NUM_CLASSES, reference=train)
        _assert_same_numbers(run["train"], expected_train)
        _assert_same_numbers(run["test"], expected_test)
        assert set(run["train"]) == set(expected_train) - {"spectrum"}
        np.testing.assert_allclose(run["spectrum"], expected_train["spectrum"], rtol=1e-12)
        assert run["config"]["train_config"]["loss"] in {"scl", "hscl"} and run["epochs_recorded"] == EPOCHS
        assert run["significant_directions"] == int(np.sum(expected_train["spectrum"] > math.log(1e-3)))


def test_json_to_stdout_is_pure_json(runs: list[Path], runner: CliRunner) -> None:
    result = _invoke(runner, str(runs[0]), "--json", "-")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # the table went to stderr
    assert document["runs"][0]["name"] == "SCL"


def test_table_shows_runs_side_by_side(runs: list[Path], runner: CliRunner) -> None:
    result = _invoke(runner, *map(str, runs))
    assert result.exit_code == 0, result.output
    for text in ("SCL", "HSCL beta=5", "equal inner product", "ETF distance", "mean-classifier acc. (test)"):
        assert text in result.output


def test_duplicate_names_are_told_apart(tmp_path: Path) -> None:
    first = _checkpoint(tmp_path / "a.npz", loss="hscl", beta=5.0, seed=1)
    second = _checkpoint(tmp_path / "b.npz", loss="hscl", beta=5.0, seed=2)
    names = [run.name for run in analysis.load_runs([first, second])]
    assert names == ["HSCL beta=5 (a.npz)", "HSCL beta=5 (b.npz)"]


def test_plain_embeddings_file_is_analyzed(tmp_path: Path, runner: CliRunner) -> None:
    rng = np.random.default_rng(3)
    path = save_embeddings(tmp_path / "model.npz", *_embeddings(rng, 0.1))
    out = tmp_path / "plain.json"
    result = _invoke(runner, str(path), "--json", str(out), "--plots", str(tmp_path / "figures"))
    assert result.exit_code == 0, result.output
    run = json.loads(out.read_text())["runs"][0]
    assert run["name"] == "model" and run["source"] == "embeddings" and run["test"] is None
    assert "no per-epoch history" in result.output
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["spectrum_final.png"]


def test_history_recomputes_class_mean_conditions(runs: list[Path]) -> None:
    run = analysis.load_run(runs[0])
    history = analysis.metric_history(run)
    epochs, values = history["equal_inner_product"]
    np.testing.assert_array_equal(epochs, np.arange(1, EPOCHS + 1))
    means = run.data.class_means[2]
    expected = collapse_report(means, np.arange(NUM_CLASSES), num_classes=NUM_CLASSES)["equal_inner_product"]
    assert values[2] == pytest.approx(expected, rel=1e-12)
    assert history["test_mean_classifier_accuracy"][1][-1] == pytest.approx(0.9)
    assert "mean_classifier_accuracy" not in history  # not recorded by this fixture


@pytest.mark.parametrize(
    ("config", "name"),
    [
        ({"train_config": {"loss": "hscl", "beta": None}, "loss_options": {"beta": 5.0}}, "HSCL beta=5"),
        ({"train_config": {"loss": "hucl", "beta": 0.5}}, "HUCL beta=0.5"),
        ({"train_config": {"loss": "scl", "beta": 3.0}, "loss_options": {}}, "SCL"),
        ({"loss": "ucl"}, "UCL"),
        ({}, "run7"),
    ],
)
def test_run_names_come_from_loss_and_beta(config: dict, name: str) -> None:
    assert analysis.run_name(config, "out/run7.npz") == name


def test_spectrum_at_epoch_uses_class_means(runs: list[Path]) -> None:
    run = analysis.load_run(runs[1])
    epoch, spectrum = analysis.spectrum_at_epoch(run, 2)
    expected = collapse_report(run.data.class_means[1], np.arange(NUM_CLASSES))["spectrum"]
    assert epoch == 2
    np.testing.assert_allclose(spectrum, expected, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------
# Figures


def _assert_png(path: Path) -> None:
    from matplotlib import image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_every_plot_is_written_as_png(runs: list[Path], runner: CliRunner, tmp_path: Path) -> None:
    directory = tmp_path / "figures"
    result = _invoke(runner, *map(str, runs), "--plots", str(directory), "--epoch", "2")
    assert result.exit_code == 0, result.output
    expected = {"spectrum_final.png", "spectrum_epoch_2.png", "conditions.png", "accuracy.png", "nc1_etf.png"}
    assert {path.name for path in directory.iterdir()} == expected
    for name in expected:
        _assert_png(directory / name)


def test_figures_have_one_line_per_run_plus_target(runs: list[Path]) -> None:
    loaded = analysis.load_runs(runs)
    count = len(loaded)
    series = {run.name: analysis.metric_history(run) for run in loaded}
    spectra = {run.name: analysis.spectrum_at_epoch(run)[1] for run in loaded}
    spectrum = plots.spectrum_figure(spectra, num_classes=NUM_CLASSES, title="t")
    assert [len(axes.lines) for axes in spectrum.axes] == [count + 1]
    target = spectrum.axes[0].lines[-1]
    assert target.get_linestyle() == "--" and list(target.get_xdata()) == [1, NUM_CLASSES - 1]
    conditions = plots.conditions_figure(series)
    assert [len(axes.lines) for axes in conditions.axes] == [count + 1] * 4
    nc1_etf = plots.nc1_etf_figure(series)
    assert [len(axes.lines) for axes in nc1_etf.axes] == [count + 1] * 2
    accuracy = plots.accuracy_figure(series)
    assert [len(axes.lines) for axes in accuracy.axes] == [count]  # accuracy has no collapse target
    for figure in (spectrum, conditions, nc1_etf, accuracy):
        for axes in figure.axes:
            assert axes.get_title() and axes.get_xlabel() and axes.get_ylabel()
            labels = [text.get_text() for text in axes.get_legend().get_texts()]
            assert {run.name for run in loaded} <= set(labels)


def test_missing_epoch_is_a_note_not_a_failure(runs: list[Path], runner: CliRunner, tmp_path: Path) -> None:
    result = _invoke(runner, str(runs[0]), "--plots", str(tmp_path / "f"), "--epoch", "99")
    assert result.exit_code == 0, result.output
    assert "no epoch 99" in result.output
    assert not (tmp_path / "f" / "spectrum_epoch_99.png").exists()


# ----------------------------------------------------------------------------------------------------
# Bad input: one line naming the file (and key), non-zero exit, no traceback.


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    text = tmp_path / "notes.npz"
    text.write_text("this is not a zip archive")
    missing_key = tmp_path / "missing.npz"
    np.savez(missing_key, embeddings=np.zeros((4, 2)))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, embeddings=np.array([{"a": 1}, None], dtype=object), labels=np.zeros(2, dtype=np.int64))
    mismatched = tmp_path / "mismatched.npz"
    np.savez(mismatched, embeddings=np.zeros((5, 3)), labels=np.zeros(4, dtype=np.int64))
    broken_zip = tmp_path / "broken.npz"
    with zipfile.ZipFile(broken_zip, "w") as archive:
        archive.writestr("embeddings.npy", b"garbage")
    return {
        "not npz": (text, ["not an .npz"]),
        "missing key": (missing_key, ["'labels'", "is missing"]),
        "pickled": (pickled, ["'embeddings'", "pickled object array"]),
        "mismatched": (mismatched, ["labels'", "4 labels for 5 rows"]),  # checkpoint.py says 'train_labels'
        "nonexistent": (tmp_path / "nowhere.npz", ["does not exist"]),
        "broken zip member": (broken_zip, ["'embeddings'"]),
    }


@pytest.mark.parametrize(
    "case", ["not npz", "missing key", "pickled", "mismatched", "nonexistent", "broken zip member"]
)
def test_bad_input_is_one_clear_message(case: str, tmp_path: Path, runner: CliRunner, runs: list[Path]) -> None:
    path, fragments = _bad_inputs(tmp_path)[case]
    result = _invoke(runner, str(runs[0]), str(path))
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert str(path.name) in result.output and "error" in result.output
    for fragment in fragments:
        assert fragment in result.output


def test_nan_embeddings_name_the_file(tmp_path: Path, runner: CliRunner) -> None:
    embeddings = np.ones((4, 2))
    embeddings[1, 0] = np.nan
    path = save_embeddings(tmp_path / "nan.npz", embeddings, np.array([0, 0, 1, 1]))
    result = _invoke(runner, str(path))
    assert result.exit_code != 0 and "nan.npz" in result.output and "NaN" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
