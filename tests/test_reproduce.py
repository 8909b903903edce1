"""`hcl reproduce`: the grid, the summaries and claims against naive references, resuming after an interrupt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hcl_array.checkpoint import load_checkpoint
from hcl_array.cli.app import app
from hcl_array.reproduce import PAPER_REFERENCE, PRESETS, Preset, Setting, check_claims, reproduce, summarize
from hcl_array.reproduce.runner import THREAD_VARIABLES, single_threaded_pool
from hcl_array.training import train

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

# A reduced preset: the digits grid's shape (baselines, moderate betas, a large beta) on a tiny synthetic set.
TINY = Preset(
    name="tiny",
    description="Tiny synthetic grid for the tests",
    base={"data": "synthetic", "classes": 4, "per_class": 12, "input_dim": 6, "hidden": 16, "batch_size": 16},
    settings=(
        Setting("scl"),
        Setting("hscl", 2.0),
        Setting("hscl", 5.0),
        Setting("ucl"),
        Setting("hucl", 5.0),
        Setting("hucl", 30.0),
    ),
    moderate_betas=(2.0, 5.0),
    large_beta=30.0,
)


def naive_equal_inner_product(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """mean over class pairs of |cos(mu_a, mu_b) + 1/(C-1)|, by loops in float64."""
    means = [embeddings[labels == c].astype(np.float64).mean(axis=0) for c in range(num_classes)]
    deviations = []
    for a in range(num_classes):
        for b in range(a + 1, num_classes):
            cosine = means[a] @ means[b] / (np.linalg.norm(means[a]) * np.linalg.norm(means[b]))
            deviations.append(abs(cosine + 1.0 / (num_classes - 1)))
    return float(np.mean(deviations))


def naive_zero_sum(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    means = [embeddings[labels == c].astype(np.float64).mean(axis=0) for c in range(num_classes)]
    return float(np.linalg.norm(sum(means) / num_classes))


def test_summarize_is_the_mean_and_sample_std() -> None:
    values = [0.25, 0.5, 1.5]
    mean = sum(values) / 3
    std = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
    summary = summarize(values)
    assert summary["mean"] == pytest.approx(mean, abs=1e-15)
    assert summary["std"] == pytest.approx(std, abs=1e-15)
    assert summary["values"] == values
    assert summarize([0.3]) == {"mean": 0.3, "std": 0.0, "values": [0.3]}


def _finals(values: dict[str, dict[str, tuple[float, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    return {
        name: {m: {"mean": mean, "std": std} for m, (mean, std) in metrics.items()} for name, metrics in values.items()
    }


def _paper_like(**changes: dict[str, tuple[float, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """Finals of the digits grid shaped like the paper's result; `changes` overrides single settings."""
    eip = {"scl": 0.23, "hscl-beta2": 0.1, "hscl-beta5": 0.05, "hscl-beta10": 0.02, "ucl": 0.23, "hucl-beta5": 0.05}
    values = {
        name: {
            "equal_inner_product": (value, 0.01),
            "etf_distance": (3 * value, 0.01),
            "significant_directions": (9.0 if name.startswith("h") else 7.0, 0.5),
            "zero_sum": (0.03, 0.01),
        }
        for name, value in eip.items()
    }
    values["hucl-beta30"] = {
        "equal_inner_product": (0.6, 0.01),
        "etf_distance": (0.7, 0.01),
        "significant_directions": (9.0, 0.0),
        "zero_sum": (0.8, 0.05),
    }
    for name, metrics in changes.items():
        values[name.replace("_", "-")] = values[name.replace("_", "-")] | metrics
    return _finals(values)


def _verdicts(finals) -> dict[str, bool]:
    return {claim.id: claim.holds for claim in check_claims(PRESETS["digits"], finals)}


def test_claims_hold_on_the_papers_shape_and_each_fails_on_its_counterexample() -> None:
    assert _verdicts(_paper_like()) == {
        "hscl-nearer-etf": True,
        "hucl-nearer-etf": True,
        "scl-fewer-directions": True,
        "ucl-fewer-directions": True,
        "hscl-beta-nearer-etf": True,
        "hucl-breaks-at-large-beta": True,
    }
    # HSCL beta = 2 below SCL by 0.02 with spread 0.01 + 0.015 = 0.025: within the noise, the claim fails.
    overlap = _verdicts(_paper_like(hscl_beta2={"equal_inner_product": (0.21, 0.015)}))
    assert not overlap["hscl-nearer-etf"] and overlap["hucl-nearer-etf"]
    # A gap just above the spread holds: 0.23 - 0.19 = 0.04 > 0.01 + 0.02.
    assert _verdicts(_paper_like(hscl_beta2={"equal_inner_product": (0.19, 0.02)}))["hscl-nearer-etf"]
    assert not _verdicts(_paper_like(ucl={"significant_directions": (8.5, 0.5)}))["ucl-fewer-directions"]
    # beta = 10 worse than beta = 5 by more than the spread breaks the trend even though 10 beats 2.
    rise = _verdicts(_paper_like(hscl_beta10={"etf_distance": (0.2, 0.01)}))
    assert not rise["hscl-beta-nearer-etf"] and rise["hscl-nearer-etf"]
    # Saturation at the ETF (5 and 10 equal within the noise) still holds.
    assert _verdicts(_paper_like(hscl_beta10={"equal_inner_product": (0.05, 0.01)}))["hscl-beta-nearer-etf"]
    assert not _verdicts(_paper_like(hucl_beta30={"zero_sum": (0.09, 0.001)}))["hucl-breaks-at-large-beta"]
    assert not _verdicts(_paper_like(hucl_beta30={"zero_sum": (0.8, 0.8)}))["hucl-breaks-at-large-beta"]


def test_a_claim_with_a_setting_not_run_is_not_checked_and_the_others_keep_their_verdicts() -> None:
    everything = {claim.id: claim for claim in check_claims(PRESETS["digits"], _paper_like())}
    # HSCL at beta = 10 not run, and UCL's claims made to fail: they are still checked.
    finals = _paper_like(ucl={"significant_directions": (9.0, 0.5)})
    del finals["hscl-beta10"]
    claims = {claim.id: claim for claim in check_claims(PRESETS["digits"], finals)}
    assert list(claims) == list(everything)  # every claim of the grid is reported, checked or not
    for claim_id in ("hscl-nearer-etf", "scl-fewer-directions", "hscl-beta-nearer-etf"):  # the three that use it
        assert (claims[claim_id].checked, claims[claim_id].holds) == (False, None)
        assert claims[claim_id].missing == ("hscl-beta10",) and claims[claim_id].evidence == []
    assert claims["hucl-nearer-etf"].evidence == everything["hucl-nearer-etf"].evidence
    assert claims["hucl-breaks-at-large-beta"].holds is True and claims["hucl-breaks-at-large-beta"].missing == ()
    assert claims["ucl-fewer-directions"].holds is False and claims["ucl-fewer-directions"].checked
    assert {claim.id: claim.missing for claim in check_claims(PRESETS["digits"], {"scl": finals["scl"]})} == {
        "hscl-nearer-etf": ("hscl-beta2", "hscl-beta5", "hscl-beta10"),
        "hucl-nearer-etf": ("ucl", "hucl-beta5"),
        "scl-fewer-directions": ("hscl-beta2", "hscl-beta5", "hscl-beta10"),
        "ucl-fewer-directions": ("ucl", "hucl-beta5"),
        "hscl-beta-nearer-etf": ("hscl-beta2", "hscl-beta5", "hscl-beta10"),
        "hucl-breaks-at-large-beta": ("ucl", "hucl-beta5", "hucl-beta30"),
    }


def test_check_fails_only_on_checked_claims_that_do_not_hold() -> None:
    from hcl_array.reproduce.report import claim_verdict, claims_hold

    def report(*holds: bool | None) -> dict:
        return {"claims": [{"id": f"c{i}", "holds": value} for i, value in enumerate(holds)]}

    assert [claim_verdict(claim) for claim in report(True, False, None)["claims"]] == [
        "holds",
        "does not hold",
        "not checked",
    ]
    assert claims_hold(report(True, None)) and claims_hold(report(None, None)) and claims_hold(report())
    assert not claims_hold(report(True, False, None)) and not claims_hold(report(False))


def test_grid_reports_the_runs_reuses_them_and_checks(tmp_path, monkeypatch) -> None:
    epochs: dict[str, list[int]] = {}
    first = reproduce(
        TINY, tmp_path, seeds=2, jobs=2, epochs=3, on_epoch=lambda s, e: epochs.setdefault(s.path.stem, []).append(e)
    )
    assert [outcome.status for outcome in first.outcomes] == ["trained"] * 12
    assert epochs == {f"{s.name}-seed{k}": [1, 2, 3] for s in TINY.settings for k in (0, 1)}  # reported as trained
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["preset"] == "tiny" and report["epochs"] == 3 and report["dim"] == 3
    assert [s["name"] for s in report["settings"]] == [s.name for s in TINY.settings]
    for setting in report["settings"]:
        assert setting["seeds"] == [0, 1]
        runs = [load_checkpoint(tmp_path / "runs" / f"{setting['name']}-seed{seed}.npz") for seed in (0, 1)]
        assert all(run.epoch == 3 for run in runs)
        for metric, naive in (("equal_inner_product", naive_equal_inner_product), ("zero_sum", naive_zero_sum)):
            values = [naive(run.train_embeddings, run.train_labels, 4) for run in runs]
            final = setting["final"][metric]
            np.testing.assert_allclose(final["values"], values, rtol=1e-9, atol=1e-12)
            assert final["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert final["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    finals = {s["name"]: s["final"] for s in report["settings"]}
    scl = finals["scl"]
    expected = all(
        scl[m]["mean"] - finals[name][m]["mean"] > scl[m]["std"] + finals[name][m]["std"]
        for name in ("hscl-beta2", "hscl-beta5")
        for m in ("equal_inner_product", "etf_distance")
    )
    claims = {claim["id"]: claim for claim in report["claims"]}
    assert claims["hscl-nearer-etf"]["holds"] == expected
    assert f"{finals['hscl-beta5']['equal_inner_product']['mean']:.3g}" in " ".join(
        claims["hscl-nearer-etf"]["evidence"]
    )
    markdown = (tmp_path / "report.md").read_text()
    assert all(s.label in markdown for s in TINY.settings) and all(claim_id in markdown for claim_id in claims)
    for name in ("spectrum.png", "conditions.png"):
        assert (tmp_path / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A run trained in a single-threaded worker is the run `train` gives in this process.
    alone = train(TINY.config(Setting("hucl", 30.0), 1, epochs=3))
    worker = load_checkpoint(tmp_path / "runs" / "hucl-beta30-seed1.npz")
    np.testing.assert_allclose(worker.class_means, alone.checkpoint.class_means, rtol=1e-5, atol=1e-6)

    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "runs").iterdir()}
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    args = ["reproduce", "tiny", "--seeds", "2", "--jobs", "2", "--epochs", "3", "--out", str(tmp_path), "--check"]
    checked = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert checked.exit_code == (0 if all(claim["holds"] for claim in claims.values()) else 1)
    assert "runs: 12 reused, 0 resumed, 0 trained" in checked.output
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "runs").iterdir()} == stamps
    assert json.loads((tmp_path / "report.json").read_text())["settings"] == report["settings"]


# TINY with HUCL at both moderate betas (as the cifar100 grid has it), and HUCL beta = 2 not in PAPER_REFERENCE.
TINY_HUCL = Preset(
    name="tiny-hucl",
    description=TINY.description,
    base=TINY.base,
    settings=(*TINY.settings[:4], Setting("hucl", 2.0), *TINY.settings[4:]),
    moderate_betas=TINY.moderate_betas,
    large_beta=TINY.large_beta,
)


def test_settings_runs_that_part_of_the_grid_and_reports_the_claims_it_cannot_check(tmp_path, monkeypatch) -> None:
    assert "hucl-beta2" not in PAPER_REFERENCE
    monkeypatch.setitem(PRESETS, "tiny-hucl", TINY_HUCL)
    command = ["reproduce", "tiny-hucl", "--seeds", "2", "--jobs", "1", "--epochs", "1", "--out", str(tmp_path)]
    first = runner.invoke(app, [*command, "--settings", "hucl-beta5,ucl,hucl-beta2", "--check"], env={"COLUMNS": "200"})
    runs = tmp_path / "runs"
    assert sorted(path.name for path in runs.iterdir()) == [
        f"{name}-seed{seed}.npz" for name in ("hucl-beta2", "hucl-beta5", "ucl") for seed in (0, 1)
    ]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["name"] for s in report["settings"]] == ["ucl", "hucl-beta2", "hucl-beta5"]  # the grid's order
    assert report["not_run"] == ["scl", "hscl-beta2", "hscl-beta5", "hucl-beta30"]
    assert [s["paper"] for s in report["settings"]] == [PAPER_REFERENCE["ucl"], None, PAPER_REFERENCE["hucl-beta5"]]
    claims = {claim["id"]: claim for claim in report["claims"]}
    checked = ["hucl-nearer-etf", "ucl-fewer-directions", "hucl-beta-nearer-etf"]
    assert [claim_id for claim_id, claim in claims.items() if claim["checked"]] == checked
    for claim_id in checked:
        assert isinstance(claims[claim_id]["holds"], bool) and claims[claim_id]["missing"] == []
        assert claims[claim_id]["evidence"]
    assert claims["hscl-nearer-etf"] | {"statement": ""} == {
        "id": "hscl-nearer-etf",
        "statement": "",
        "checked": False,
        "holds": None,
        "missing": ["scl", "hscl-beta2", "hscl-beta5"],
        "evidence": [],
    }
    assert claims["hucl-breaks-at-large-beta"]["missing"] == ["hucl-beta30"]
    # --check fails only on a checked claim that does not hold
    assert first.exit_code == (0 if all(claims[claim_id]["holds"] for claim_id in checked) else 1), first.output
    assert "not checked    hucl-breaks-at-large-beta (needs: hucl-beta30)" in first.output
    assert "not checked    hscl-nearer-etf (needs: scl, hscl-beta2, hscl-beta5)" in first.output
    markdown = (tmp_path / "report.md").read_text()
    held = sum(claims[claim_id]["holds"] for claim_id in checked)
    assert f"`hcl reproduce tiny-hucl`: {held} of 3 checked claims hold, 4 not checked" in markdown
    assert "Not run (`--settings`): scl, hscl-beta2, hscl-beta5, hucl-beta30." in markdown
    assert "- `hucl-breaks-at-large-beta`: **not checked** (needs: hucl-beta30)." in markdown
    assert "| HUCL beta = 2 | " in markdown and "| not reported | not reported | not reported |" in markdown

    # Another subset into the same folder: the finished run is reused, the new one trained, the rest untouched.
    stamps = {path: path.stat().st_mtime_ns for path in runs.iterdir()}
    second = runner.invoke(app, [*command, "--settings", "scl, hucl-beta5"], env={"COLUMNS": "200"})
    assert second.exit_code == 0 and "runs: 2 reused, 0 resumed, 2 trained" in second.output, second.output
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    again = json.loads((tmp_path / "report.json").read_text())
    assert [s["name"] for s in again["settings"]] == ["scl", "hucl-beta5"]
    assert again["settings"][1]["final"] == report["settings"][2]["final"]  # hucl-beta5, read from the same runs


def test_unknown_settings_are_a_one_line_error_naming_the_grid(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    valid = "scl, hscl-beta2, hscl-beta5, ucl, hucl-beta5, hucl-beta30"
    for value, problem in (
        ("scl,hscl-beta7", "'hscl-beta7' is not in"),
        ("hscl-5,hucl_beta5", "'hscl-5', 'hucl_beta5' are not in"),
        (" , ", "names no setting of"),
    ):
        result = runner.invoke(app, ["reproduce", "tiny", "--settings", value, "--out", str(tmp_path / "o")])
        assert result.exit_code == 1, result.output
        message = result.output.strip()
        assert message == f"error: --settings: {problem} the tiny grid; choose from {valid}", message
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written
    # before the data and GPU checks: the name is the first thing wrong with the command
    result = runner.invoke(app, ["reproduce", "cifar100", "--settings", "hucl-beta3"])
    assert result.exit_code == 1 and "'hucl-beta3' is not in the cifar100 grid" in result.output
    assert "hucl-beta2, hucl-beta5, hucl-beta10, hucl-beta30" in result.output


def _worker_threads() -> dict[str, object]:
    """What a worker sees: the thread variables and the thread counts of the BLAS/OpenMP pools numpy loaded."""
    import threadpoolctl

    pools = {info["internal_api"]: info["num_threads"] for info in threadpoolctl.threadpool_info()}
    return {**{name: os.environ.get(name) for name in THREAD_VARIABLES}, **pools}


def test_workers_are_single_threaded() -> None:
    pytest.importorskip("threadpoolctl")
    before = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    with single_threaded_pool(2) as pool:
        seen = [future.result() for future in [pool.submit(_worker_threads) for _ in range(2)]]
    for threads in seen:
        assert {name: threads[name] for name in THREAD_VARIABLES} == dict.fromkeys(THREAD_VARIABLES, "1")
        pools = {name: count for name, count in threads.items() if name not in THREAD_VARIABLES}
        assert pools and all(count == 1 for count in pools.values()), threads
    assert {name: os.environ.get(name) for name in THREAD_VARIABLES} == before  # this process is left as it was


def _state(path: Path) -> tuple[int, int, bytes] | None:
    if not path.exists():
        return None
    return load_checkpoint(path).epoch, path.stat().st_mtime_ns, path.read_bytes()


def test_interrupted_command_retrains_nothing_that_finished(tmp_path) -> None:
    out, epochs = tmp_path / "out", 10
    command = [sys.executable, "-m", "hcl_array.cli.app", "reproduce", "digits"]
    command += ["--seeds", "1", "--jobs", "1", "--epochs", str(epochs), "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    first = out / "runs" / "scl-seed0.npz"
    # A shell without job control starts background jobs (`cmd &` in a script) with SIGINT ignored, and exec
    # keeps an ignored signal: with a handler here during the spawn, the command gets Ctrl-C as from a terminal.
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    try:
        deadline = time.monotonic() + 120
        while (state := _state(first)) is None or state[0] < epochs:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the command and its workers
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert b"run the same command again" in stderr
    paths = sorted((out / "runs").glob("*.npz"))
    before = {path: _state(path) for path in paths}
    finished = [path for path, state in before.items() if state[0] == epochs]
    partial = [path for path, state in before.items() if state[0] < epochs]
    assert first in finished and len(finished) < 7

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trained = 7 - len(finished) - len(partial)
    assert f"runs: {len(finished)} reused, {len(partial)} resumed, {trained} trained" in rerun.stdout
    for path in finished:  # not trained again: the same file, untouched
        assert _state(path) == before[path]
    assert all(load_checkpoint(path).epoch == epochs for path in (out / "runs").glob("*.npz"))
    for path in partial:  # resumed from its last epoch: the numbers of an uninterrupted run
        setting = next(s for s in PRESETS["digits"].settings if path.name == f"{s.name}-seed0.npz")
        alone = train(PRESETS["digits"].config(setting, 0, epochs=epochs))
        np.testing.assert_allclose(load_checkpoint(path).class_means, alone.checkpoint.class_means, atol=1e-6)
    assert len(json.loads((out / "report.json").read_text())["settings"]) == 7


def test_cifar100_checks_data_dir_and_gpu_up_front(tmp_path) -> None:
    missing = runner.invoke(app, ["reproduce", "cifar100", "--out", str(tmp_path / "o")])
    assert missing.exit_code == 1 and "--data-dir" in missing.output
    empty = runner.invoke(app, ["reproduce", "cifar100", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert empty.exit_code == 1 and "no CIFAR files" in empty.output
    unknown = runner.invoke(app, ["reproduce", "mnist"])
    assert unknown.exit_code == 1 and "digits, synthetic, cifar100" in unknown.output
    if "cuda:0" in available_devices():
        return  # the GPU check passes here; the files below are empty placeholders, not CIFAR data
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / name).write_bytes(b"")
    no_gpu = runner.invoke(app, ["reproduce", "cifar100", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert no_gpu.exit_code == 1
    assert "CUDA GPU" in no_gpu.output or "torchvision" in no_gpu.output or "needs torch" in no_gpu.output
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written


def available_devices() -> list[str]:
    from hcl_array.backends import BackendUnavailable, get_backend

    try:
        return get_backend("torch").devices()
    except BackendUnavailable:
        return []


def _docs_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproducing_docs", ROOT / "scripts" / "reproducing_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["digits", "synthetic"])
def test_docs_tables_are_the_stored_reports(preset) -> None:
    generator = _docs_generator()
    page = (ROOT / "docs" / "reproducing.md").read_text()
    report = json.loads((ROOT / "docs" / "reports" / f"{preset}.json").read_text())
    assert f"<!-- report:{preset} -->\n\n{generator.report_block(preset, report)}\n<!-- /report:{preset} -->" in page
    assert f"<!-- paper-reference -->\n\n{generator.paper_block()}\n<!-- /paper-reference -->" in page
    assert f"<!-- claim-needs -->\n\n{generator.needs_block()}\n<!-- /claim-needs -->" in page
    assert (
        report["epochs"] == PRESETS[preset].config(Setting("scl"), 0).epochs
        and len(report["settings"][0]["seeds"]) == 3
    )
    for name in ("spectrum.png", "conditions.png"):
        assert (ROOT / "docs" / "figures" / f"reproduce-{preset}" / name).is_file()


# The released run, option by option (github.com/rjiang03/HCL, main/SCL and main/UCL; file:line in
# docs/reproducing.md): what every run of the cifar100 preset must be.
RELEASED_CIFAR100 = {
    "data": "cifar100",
    "encoder": "resnet50",  # model.py: the CIFAR-stem ResNet-50 and the Linear-BN-ReLU-Linear head
    "dim": 99,  # train_mean_classifier.py:330 feature_dim = c - 1
    "batch_size": 512,  # :289
    "optimizer": "adam",  # :338 (UCL :333)
    "lr": 1e-3,
    "views": 1,  # train(): only pos_1 goes through the model
    "augment": "none",  # utils_2.py:121 CIFAR100Pair(transform=test_transform) in SCL and UCL
    "epochs": 400,  # --epochs 401, of which the notebooks read [:400]
}
RELEASED_LOSS = {  # nce_supervised_hard / _easy: tau 1, ball clip in the model, anchor among positives, K = 256
    "normalize": "ball",
    "temperature": 1.0,
    "include_self": True,
    "negatives": "sampled",
    "k": 256,
    "negative_reduction": "mean",
    "reduction": "mean",
    "detach_weights": True,
}


def test_cifar100_preset_is_the_released_run_option_by_option() -> None:
    from hcl_array.image_pipeline import resolve_augment
    from hcl_array.training import INSTANCE_ID_LOSSES

    preset = PRESETS["cifar100"]
    for setting in preset.settings:
        config = preset.config(setting, 0)
        for name, value in RELEASED_CIFAR100.items():
            assert getattr(config, name) == value, (setting.name, name)
        released_decay = 1e-6 if setting.loss in ("ucl", "hucl") else 0.0  # UCL :333, SCL :338
        assert config.weight_decay == released_decay, setting.name
        options = config.loss_options()
        assert {key: options[key] for key in RELEASED_LOSS} == RELEASED_LOSS, setting.name
        assert options.get("beta") == setting.beta
        # one view with label ids: positives are the images of the anchor's label, not another view
        assert config.views == 1 and setting.loss in ("scl", "hscl", *INSTANCE_ID_LOSSES)
        assert resolve_augment(config.augment, config.data, config.loss, config.views, True) == "none"


# The released grid: main/SCL/Visualization.ipynb and main/UCL/Visualization.ipynb each load the runs
# easy0.0, hard2.0, hard5.0, hard10.0 and hard30.0 (named `--estimator` + `--beta`: UCL/train_mean_classifier.py:366).
RELEASED_BETAS = (2.0, 5.0, 10.0, 30.0)
RELEASED_GRID = [
    ("scl", None),
    *(("hscl", b) for b in RELEASED_BETAS),
    ("ucl", None),
    *(("hucl", b) for b in RELEASED_BETAS),
]


def test_cifar100_grid_is_the_released_grid_and_every_claim_says_what_it_needs() -> None:
    preset = PRESETS["cifar100"]
    assert [(setting.loss, setting.beta) for setting in preset.settings] == RELEASED_GRID
    assert [s.name for s in preset.settings][5:] == ["ucl", "hucl-beta2", "hucl-beta5", "hucl-beta10", "hucl-beta30"]
    hscl, hucl = ["hscl-beta2", "hscl-beta5", "hscl-beta10"], ["hucl-beta2", "hucl-beta5", "hucl-beta10"]
    assert {claim.id: claim.missing for claim in check_claims(preset, {})} == {
        "hscl-nearer-etf": ("scl", *hscl),
        "hucl-nearer-etf": ("ucl", *hucl),
        "scl-fewer-directions": ("scl", *hscl),
        "ucl-fewer-directions": ("ucl", *hucl),
        "hscl-beta-nearer-etf": tuple(hscl),
        "hucl-beta-nearer-etf": tuple(hucl),  # the HUCL trend: only this grid has two moderate betas of HUCL
        "hucl-breaks-at-large-beta": ("ucl", *hucl, "hucl-beta30"),
    }
