"""CollapseCallback in a real lightning Trainer on the CPU: alone (all three embedding hooks) and under DDP with
2 gloo processes, each logged number equal to collapse_report on the rows the monitor was fed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hcl_array import metrics

pytest.importorskip("lightning")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
FIRST_PASS_KEYS = [key for key in metrics.REPORT_KEYS if key not in metrics.PROBE_KEYS]


def assert_matches(report: dict, embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    expected = metrics.collapse_report(embeddings, labels, num_classes=num_classes)
    for key in FIRST_PASS_KEYS:
        np.testing.assert_allclose(report[key], expected[key], rtol=1e-10, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("hook", ["outputs", "embed", "method"])
def test_callback_in_a_single_process_trainer(tmp_path, hook):
    import torch

    from hcl_array.integrations.lightning import CollapseCallback

    from .lightning_ddp import NUM_CLASSES, TinyEncoder, loader, make_trainer, seen_rows

    module = TinyEncoder(return_embeddings=hook == "outputs")
    embed = None
    if hook == "embed":

        def embed(module, batch):  # the documented function hook
            return torch.as_tensor(module.seen[-1][0]), batch[1]

    elif hook == "method":
        module.collapse_embeddings = lambda batch: (torch.as_tensor(module.seen[-1][0]), batch[1])
    callback = CollapseCallback(NUM_CLASSES, embed=embed)
    trainer = make_trainer(tmp_path, callback, devices=1)
    trainer.fit(module, loader())
    assert_matches(callback.report, *seen_rows(module), NUM_CLASSES)
    for key in FIRST_PASS_KEYS[:-1]:  # every scalar (not the spectrum), logged as float32 tensors
        logged = float(trainer.logged_metrics[f"collapse/{key}"])
        np.testing.assert_allclose(logged, callback.report[key], rtol=1e-6, atol=1e-7, err_msg=key)
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    epochs = {row.split(",")[header.index("epoch")] for row in rows[1:] if row.split(",")[header.index("collapse/nc1")]}
    assert epochs == {"0", "1"}  # logged at the end of both epochs


def test_tensorboard_logger_gets_the_scalars_and_the_spectrum(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hcl_array.integrations.lightning import CollapseCallback

    from .lightning_ddp import NUM_CLASSES, TinyEncoder, loader, make_trainer

    callback = CollapseCallback(NUM_CLASSES)
    logger = TensorBoardLogger(tmp_path, name="", version="")
    trainer = make_trainer(tmp_path, callback, logger=logger, devices=1)
    trainer.fit(TinyEncoder(), loader())
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    (final, *_) = reversed(events.Scalars("collapse/etf_distance"))
    np.testing.assert_allclose(final.value, callback.report["etf_distance"], rtol=1e-6)
    spectra = events.Histograms("collapse/spectrum")
    assert [event.step for event in spectra] == [0, 1]  # one per epoch
    spectrum = callback.report["spectrum"]
    np.testing.assert_allclose(spectra[-1].histogram_value.sum, spectrum.sum(), rtol=1e-6)
    assert spectra[-1].histogram_value.num == spectrum.size


def test_callback_under_two_process_ddp_on_gloo(tmp_path):
    from .lightning_ddp import NUM_CLASSES, ROWS

    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "tests" / "lightning_ddp.py"), str(tmp_path)]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [dict(np.load(tmp_path / f"rank{rank}.npz")) for rank in (0, 1)]
    embeddings = np.concatenate([rank["embeddings"] for rank in ranks])
    labels = np.concatenate([rank["labels"] for rank in ranks])
    assert embeddings.shape[0] == ROWS  # each rank fed its half of the epoch
    assert not np.allclose(ranks[0]["embeddings"][:5], ranks[1]["embeddings"][:5])
    for rank in ranks:  # both ranks report (and log) the numbers of all rows
        report = {key: rank[f"report_{key}"] for key in FIRST_PASS_KEYS}
        assert_matches(report, embeddings, labels, NUM_CLASSES)
        np.testing.assert_allclose(rank["logged_etf_distance"], report["etf_distance"], rtol=1e-6)
