"""`hcl train --tensorboard DIR`: the event files read back with tensorboard's EventAccumulator agree with the
checkpoint's history and with the spectrum recomputed from its embeddings; NumPy runs never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hcl_array.checkpoint import load_checkpoint
from hcl_array.cli.app import app
from hcl_array.metrics import collapse_report
from hcl_array.tensorboard_writer import TensorBoardWriter, scalar_tag

pytest.importorskip("tensorboard")

SMALL = ["--classes", "4", "--per-class", "10", "--input-dim", "6", "--batch-size", "16", "--epochs", "3"]
ROOT = Path(__file__).resolve().parent.parent


def read_events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"images": 0, "histograms": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_hcl_train_writes_every_metric_the_spectrum_and_the_config(tmp_path):
    out, logdir = tmp_path / "run.npz", tmp_path / "tb"
    result = CliRunner().invoke(app, ["train", *SMALL, "--out", str(out), "--tensorboard", str(logdir), "-q"])
    assert result.exit_code == 0, result.output
    checkpoint, events = load_checkpoint(out), read_events(logdir)
    for key, history in checkpoint.history.items():
        finite = np.isfinite(history)
        if not finite.any():
            assert scalar_tag(key) not in events.Tags()["scalars"]  # NaN is skipped, not logged
            continue
        logged = events.Scalars(scalar_tag(key))
        assert [event.step for event in logged] == list(np.flatnonzero(finite) + 1)
        np.testing.assert_allclose([event.value for event in logged], history[finite], rtol=1e-6, err_msg=key)
    assert {"train/loss", "collapse/equal_inner_product", "test/mean_classifier_accuracy"} <= set(
        events.Tags()["scalars"]
    )
    spectrum = collapse_report(checkpoint.train_embeddings, checkpoint.train_labels, num_classes=4)["spectrum"]
    histograms = events.Histograms("collapse/spectrum")
    assert [event.step for event in histograms] == [1, 2, 3]
    final = histograms[-1].histogram_value
    assert (final.num, final.min, final.max) == (spectrum.size, spectrum.min(), spectrum.max())
    np.testing.assert_allclose([final.sum, final.sum_squares], [spectrum.sum(), spectrum @ spectrum], rtol=1e-12)
    (figure,) = events.Images("collapse/spectrum_figure")  # the last epoch only
    assert figure.step == 3 and figure.encoded_image_string.startswith(b"\x89PNG") and figure.width > 100
    (config,) = events.Tensors("config")
    text = config.tensor_proto.string_val[0].decode()
    assert "| loss | 'hscl' |" in text and "| epochs | 3 |" in text


def test_histogram_buckets_hold_every_value(tmp_path):
    values = np.array([-3.0, -1.0, -1.0, 0.0, 0.0, 0.0])
    with TensorBoardWriter(tmp_path) as writer:
        writer.histogram("h", values, step=7, buckets=3)
        writer.histogram("constant", np.zeros(4), step=1)
    events = read_events(tmp_path)
    (event,) = events.Histograms("h")
    assert event.step == 7
    np.testing.assert_allclose(event.histogram_value.bucket_limit, [-2.0, -1.0, 0.0])
    np.testing.assert_allclose(event.histogram_value.bucket, [1.0, 2.0, 3.0])
    assert sum(events.Histograms("constant")[0].histogram_value.bucket) == 4


def test_bad_option_fails_in_one_line_before_any_event_file(tmp_path):
    logdir = tmp_path / "tb"
    result = CliRunner().invoke(app, ["train", *SMALL, "--loss", "nope", "--tensorboard", str(logdir)])
    assert result.exit_code == 1 and "loss='nope'" in result.output and "Traceback" not in result.output
    assert not logdir.exists()


def test_numpy_run_with_tensorboard_never_imports_torch(tmp_path):
    script = (
        "import sys\n"
        "from hcl_array.cli.app import app\n"
        f"args = {[*SMALL, '--epochs', '1', '--out', str(tmp_path / 'r.npz'), '--tensorboard', str(tmp_path), '-q']}\n"
        "try:\n"
        "    app(['train', *args])\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert list(tmp_path.glob("events.out.tfevents.*"))
