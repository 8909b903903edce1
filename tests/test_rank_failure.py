"""A process of `hcl train --nproc 2` killed with SIGKILL mid-run, and `--resume` from what it left.

The run is the small 2-process run of tests/test_distributed_torch.py (views, sampled negatives, plain SGD
in float64) for 30 epochs. Once the first checkpoint exists, rank 0, the process that writes the
checkpoints, is killed (a write cut short must leave the previous checkpoint intact). The command must
exit non-zero within --rank-timeout plus a margin, the other process with it, printing one line that
names the checkpoint and its epoch; `--resume` from that checkpoint must end with the parameters of an
uninterrupted 2-process run, bit for bit (the same batches, draws and collectives in the same order).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hcl_array.checkpoint import load_checkpoint

pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")

RANK_TIMEOUT = 20.0
#: the launcher notices a dead process, stops the other (SIGTERM, then SIGKILL after its own grace period)
#: and reports; on a loaded machine that takes seconds, never a rank timeout more
MARGIN = 30.0
EPOCHS = 30
RUN = [
    *("train", "--backend", "torch", "--nproc", "2", "--loss", "hucl", "--views", "2", "--negatives", "sampled"),
    *("--k", "5", "--epochs", str(EPOCHS), "--batch-size", "7", "--dtype", "float64", "--optimizer", "sgd"),
    *("--lr", "0.5", "--classes", "3", "--per-class", "10", "--input-dim", "4", "--encoder", "mlp", "--hidden", "6"),
    *("--seed", "3", "--rank-timeout", str(RANK_TIMEOUT), "--quiet"),
]


def _command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "hcl_array.cli.app", *RUN, *arguments]


def _ranks(launcher: int) -> dict[int, int]:
    """RANK -> pid of the launcher's child processes that have started (read from /proc)."""
    ranks = {}
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:  # gone already
                continue
            variables = dict(entry.decode().split("=", 1) for entry in environ if b"=" in entry)
            if "RANK" in variables:
                ranks[int(variables["RANK"])] = int(child)
    return ranks


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited; only its parent's wait is missing


def _kill_rank_when_checkpointed(checkpoint: Path, rank: int) -> tuple[subprocess.CompletedProcess, float, int]:
    """Start the run, SIGKILL `rank` once the first checkpoint exists; (result, seconds to exit after the kill,
    the other rank's pid)."""
    launcher = subprocess.Popen(
        _command("--out", str(checkpoint)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        while not checkpoint.exists():
            assert launcher.poll() is None, launcher.communicate()
            time.sleep(0.02)
        ranks = _ranks(launcher.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[rank], signal.SIGKILL)
        killed = time.perf_counter()
        stdout, stderr = launcher.communicate(timeout=RANK_TIMEOUT + MARGIN)
        seconds = time.perf_counter() - killed
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    result = subprocess.CompletedProcess(launcher.args, launcher.returncode, stdout, stderr)
    return result, seconds, ranks[1 - rank]


def test_a_killed_rank_stops_the_run_in_one_line_and_resume_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    checkpoint = tmp_path / "killed.npz"
    result, seconds, other = _kill_rank_when_checkpointed(checkpoint, rank=0)

    assert result.returncode != 0
    assert seconds < RANK_TIMEOUT + MARGIN
    assert not _alive(other)
    epoch = load_checkpoint(checkpoint).epoch
    assert 1 <= epoch < EPOCHS  # killed mid-run
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "process 0 of 2 failed (exit code -9)" in lines[0]
    assert (
        f"the last intact checkpoint is {checkpoint} (epoch {epoch}): continue with --resume {checkpoint}" in (lines[0])
    )

    resumed = subprocess.run(
        [sys.executable, "-m", "hcl_array.cli.app", "train", "--nproc", "2", "--backend", "torch", "--quiet"]
        + ["--resume", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = tmp_path / "uninterrupted.npz"
    whole = subprocess.run(_command("--out", str(uninterrupted)), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr

    final, expected = load_checkpoint(checkpoint), load_checkpoint(uninterrupted)
    assert final.epoch == expected.epoch == EPOCHS
    assert set(final.params) == set(expected.params)
    for name, value in expected.params.items():
        np.testing.assert_array_equal(final.params[name], value, err_msg=name)
    np.testing.assert_array_equal(final.history["loss"], expected.history["loss"])
