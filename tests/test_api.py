"""The public surface as an editor and a reader see it: explicit loss signatures, and an API page in step.

The named losses repeat contrastive_loss's keyword-only options (so an editor, a type checker and the API page see
them); these tests hold the repetition to the original, so that an option added to one cannot be forgotten in
another, and check that each option the signature promises reaches the `LossConfig` the call computes with.
"""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hcl_array as hcl
from hcl_array import dispatch, hardening, losses
from hcl_array.config import OPTION_NAMES, LossConfig

NAMED_LOSSES = ("scl", "hscl", "ucl", "hucl", "supcon", "ntxent", "debiased_hcl")

#: What each named loss fixes (so does not take): its candidates and form, eta where the name says it,
#: and tau_plus where the form does not read it.
FIXED: dict[str, dict[str, Any]] = {
    "scl": {"candidates": "other-ids", "form": "infonce", "hardening": None, "tau_plus": None},
    "hscl": {"candidates": "other-ids", "form": "infonce", "tau_plus": None},
    "ucl": {"candidates": "all", "form": "infonce", "hardening": None, "tau_plus": None},
    "hucl": {"candidates": "all", "form": "infonce", "tau_plus": None},
    "supcon": {"candidates": "all", "form": "supcon", "hardening": None, "tau_plus": None},
    "ntxent": {"candidates": "other-ids", "form": "infonce", "hardening": None, "tau_plus": None},
    "debiased_hcl": {"candidates": "other-ids", "form": "debiased", "hardening": None},
}
#: Options of a named loss that contrastive_loss does not have.
OWN_OPTIONS = {"beta"}
#: The defaults a named loss changes (docs/losses.md, "Named losses").
DEFAULTS: dict[str, dict[str, Any]] = {
    "supcon": {"temperature": 0.1, "normalize": "sphere", "reduction": "anchor_mean"},
    "ntxent": {"temperature": 0.5, "normalize": "sphere"},
    "debiased_hcl": {"tau_plus": 0.1, "temperature": 0.5, "normalize": "sphere"},
}
#: contrastive_loss's options that are not LossConfig fields: they go to dispatch.compute as keywords.
CALL_OPTIONS = ("rng", "uniforms", "return_grad", "group")


def _keyword_options(function: Any) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(function).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def test_contrastive_loss_takes_every_loss_config_field_and_the_call_options():
    names = [p.name for p in _keyword_options(hcl.contrastive_loss)]
    assert set(names) == set(OPTION_NAMES) | set(CALL_OPTIONS), set(names) ^ (set(OPTION_NAMES) | set(CALL_OPTIONS))
    defaults = {p.name: p.default for p in _keyword_options(hcl.contrastive_loss)}
    for name in OPTION_NAMES - {"hardening"}:  # LossConfig's hardening default is a placeholder
        assert defaults[name] == getattr(LossConfig(), name), name


@pytest.mark.parametrize("name", NAMED_LOSSES)
def test_a_named_loss_spells_out_contrastive_loss_options_in_its_order(name: str):
    loss = getattr(hcl, name)
    parameters = inspect.signature(loss).parameters.values()
    assert not [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD], f"{name} takes **options"
    expected = [p for p in _keyword_options(hcl.contrastive_loss) if p.name not in FIXED[name]]
    got = [p for p in _keyword_options(loss) if p.name not in OWN_OPTIONS]
    assert [p.name for p in got] == [p.name for p in expected]
    hints, general_hints = typing.get_type_hints(loss), typing.get_type_hints(hcl.contrastive_loss)
    for parameter in got:
        assert hints[parameter.name] == general_hints[parameter.name], f"{name}({parameter.name}=) has another type"
    defaults = {p.name: p.default for p in got}
    assert defaults == {p.name: DEFAULTS.get(name, {}).get(p.name, p.default) for p in expected}


def _non_default(parameter: inspect.Parameter) -> Any:
    """A valid value of the option other than its default (all of them valid together)."""
    values = {
        "temperature": 0.37,
        "k": 7,
        "negatives": "sampled",
        "negative_reduction": "mean" if parameter.default == "sum" else "sum",
        "reduction": "none",
        "tau_plus": 0.3,
        "tile": 16,
        "kernel": "array_api",
        "axis_name": "batch",
        "hardening": hardening.threshold(0.2),
        "rng": 3,
        "uniforms": np.full((4, 7), 0.5),
        "group": object(),
    }
    if parameter.name in values:
        return values[parameter.name]
    if isinstance(parameter.default, bool):
        return not parameter.default
    choices = typing.get_args(typing.get_type_hints(losses.contrastive_loss)[parameter.name])
    return next(choice for choice in choices if choice != parameter.default)


@pytest.mark.parametrize("name", NAMED_LOSSES)
def test_every_option_of_a_named_loss_reaches_the_computation(name: str, monkeypatch: pytest.MonkeyPatch):
    """Each option set to a value other than its default arrives in the LossConfig (or the call) unchanged."""
    captured: dict[str, Any] = {}

    def compute(embeddings: Any, ids: Any, config: LossConfig, **call: Any) -> float:
        captured.update(call, config=config)
        return 0.0

    monkeypatch.setattr(dispatch, "compute", compute)
    loss = getattr(hcl, name)
    options = {p.name: _non_default(p) for p in _keyword_options(loss) if p.name not in OWN_OPTIONS}
    loss(np.zeros((4, 3)), np.arange(4), **options)
    config = captured["config"]
    for option, value in options.items():
        if option in CALL_OPTIONS:
            assert captured[option] is value, option
        elif option == "hardening":
            assert config.hardening == hardening.as_hardening(value)
        else:
            assert getattr(config, option) == value, option
    fixed = {key: value for key, value in FIXED[name].items() if value is not None}
    assert {key: getattr(config, key) for key in fixed} == fixed


@pytest.mark.parametrize("name", ["hscl", "hucl", "debiased_hcl"])
def test_beta_tilts_the_negatives(name: str, monkeypatch: pytest.MonkeyPatch):
    captured: list[LossConfig] = []
    monkeypatch.setattr(dispatch, "compute", lambda z, ids, config, **call: captured.append(config))
    getattr(hcl, name)(np.zeros((4, 3)), np.arange(4), beta=2.5)
    getattr(hcl, name)(np.zeros((4, 3)), np.arange(4), beta=0.0)
    assert [config.hardening for config in captured] == [hardening.exponential(2.5), hardening.uniform()]


def test_a_misspelled_option_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="negative_reductions"):
        hcl.hscl(np.zeros((4, 3)), np.arange(4), negative_reductions="mean")


# ---------------------------------------------------------------------------------------------------------------
# The API page documents the public surface, and all of it: a new public name without docs fails here.

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The public modules and, where only some of a module's names are public, those names. The rest of such a
#: module's __all__ is internal (docs/internals.md) and listed in INTERNAL, so that every name is classified.
PUBLIC: dict[str, tuple[str, ...] | None] = {
    "hcl_array.losses": None,
    "hcl_array.hardening": None,
    "hcl_array.metrics": None,
    "hcl_array.geometry": None,
    "hcl_array.monitor": None,
    "hcl_array.integrations.lightning": None,
    "hcl_array.training": ("TrainConfig", "train", "TrainResult", "EpochReport"),
    "hcl_array.checkpoint": (
        "load_checkpoint",
        "Checkpoint",
        "load_embeddings",
        "save_embeddings",
        "Embeddings",
        "CheckpointError",
    ),
}
INTERNAL = {
    "hcl_array.training": ("LOSSES", "ContrastiveObjective", "load_dataset", "significant_directions"),
    "hcl_array.checkpoint": (
        "FORMAT_VERSION",
        "save_checkpoint",
        "save_npz_atomic",
        "write_atomically",
        "library_versions",
    ),
}


def _module(name: str) -> Any:
    if name.endswith("lightning"):
        pytest.importorskip("lightning")
    return importlib.import_module(name)


def _documented_objects() -> dict[int, str]:
    """id(object) -> its qualified name on the API page, for every public name (re-exports resolve to one)."""
    documented: dict[int, str] = {}
    for module_name, names in PUBLIC.items():
        module = _module(module_name)
        for name in names or module.__all__:
            documented.setdefault(id(getattr(module, name)), f"{module_name}.{name}")
    return documented


def _api_page() -> str:
    return (DOCS / "api.md").read_text()


def test_every_name_of_a_partly_public_module_is_classified():
    for module_name, internal in INTERNAL.items():
        public = set(PUBLIC[module_name])
        assert not public & set(internal)
        assert set(_module(module_name).__all__) == public | set(internal), f"classify the new names of {module_name}"


def test_the_summary_table_lists_every_public_name_once():
    linked = re.findall(r"^\| \[`(\w+)`\]\(#([\w.]+)\) \| (.+) \|$", _api_page(), re.MULTILINE)
    anchors = [anchor for _, anchor, _ in linked]
    assert len(anchors) == len(set(anchors))
    assert all(anchor.endswith(f".{name}") and summary.strip() for name, anchor, summary in linked)
    assert set(anchors) == set(_documented_objects().values())


def test_the_top_level_names_are_documented_under_their_module():
    documented = _documented_objects()
    for name in hcl.__all__:
        value = getattr(hcl, name)
        if inspect.ismodule(value):
            continue
        assert id(value) in documented, f"hcl_array.{name} is public but not on docs/api.md"


def test_the_api_page_renders_only_public_modules_and_their_public_members():
    directives = re.findall(r"^::: ([\w.]+)\n((?:    .*\n)*)", _api_page(), re.MULTILINE)
    assert {module for module, _ in directives} == set(PUBLIC)
    for module, options in directives:
        members = re.search(r"members: \[(.*)\]", options)
        if PUBLIC[module] is not None:
            assert members and [m.strip() for m in members.group(1).split(",")] == list(PUBLIC[module]), module


def test_every_module_is_on_the_api_page_or_the_internals_page():
    """Private modules (a leading underscore) and the CLI (documented by its own pages) excepted."""
    package = ROOT / "hcl_array"
    pages = _api_page() + (DOCS / "internals.md").read_text()
    rendered = set(re.findall(r"^::: ([\w.]+)", pages, re.MULTILINE))
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        name = ".".join(parts)
        if any(part.startswith("_") for part in parts) or name.startswith("hcl_array.cli") or name == "hcl_array":
            continue
        if name.startswith("hcl_array.backends.") and name != "hcl_array.backends.base":
            continue  # the adapters: documented by backends.md and the Backend protocol of backends/base.py
        assert name in rendered, f"{name} is on neither docs/api.md nor docs/internals.md"
