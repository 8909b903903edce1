"""The three recipes of docs/monitoring.md run as written, and what they print is what collapse_report gives."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from hcl_array import metrics

PAGE = Path(__file__).resolve().parents[1] / "docs" / "monitoring.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
FIRST_PASS_KEYS = [key for key in metrics.REPORT_KEYS if key not in metrics.PROBE_KEYS]


def run(snippet: str) -> dict:
    namespace: dict = {"__name__": "monitoring_recipe"}
    exec(compile(snippet, str(PAGE), "exec"), namespace)
    return namespace


def test_the_page_has_the_three_recipes():
    assert len(SNIPPETS) == 3
    assert "CollapseMonitor" in SNIPPETS[0] and "CollapseCallback" in SNIPPETS[1] and "optax" in SNIPPETS[2]


def test_plain_torch_recipe_reports_collapse_report_of_its_rows():
    pytest.importorskip("torch")
    namespace = run(SNIPPETS[0])
    embeddings = np.concatenate([z.double().numpy() for z, _ in namespace["batches"]])
    labels = np.concatenate([y.numpy() for _, y in namespace["batches"]])
    expected = metrics.collapse_report(embeddings, labels, num_classes=namespace["num_classes"])
    assert list(namespace["final"]) == list(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(namespace["final"][key], value, rtol=1e-10, atol=1e-10, err_msg=key)


def test_lightning_recipe_logs_the_report():
    pytest.importorskip("lightning")
    namespace = run(SNIPPETS[1])
    report, logged = namespace["callback"].report, namespace["trainer"].callback_metrics
    assert list(report) == FIRST_PASS_KEYS
    for key in FIRST_PASS_KEYS[:-1]:
        np.testing.assert_allclose(float(logged[f"collapse/{key}"]), report[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_jax_optax_recipe_runs_the_monitor_inside_the_jitted_step():
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    namespace = run(SNIPPETS[2])
    report, state = namespace["report"], namespace["monitor"]
    assert sorted(report) == sorted(FIRST_PASS_KEYS)
    assert float(np.sum(state.counts)) == namespace["rows"]  # every row of the last epoch was fed
    assert all(np.all(np.isfinite(np.asarray(value))) for value in report.values())
