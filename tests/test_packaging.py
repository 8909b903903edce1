"""The package's metadata stays in step with the files it names: the license, the citation, the version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hcl_array

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_declared_license_is_the_shipped_file():
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


def test_the_citation_names_this_version_and_the_paper():
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^version: (\S+)$", citation, re.MULTILINE).group(1) == PROJECT["version"]
    assert hcl_array.__version__ == PROJECT["version"]
    assert re.search(r"^license: MIT$", citation, re.MULTILINE)
    preferred = citation[citation.index("preferred-citation:") :]
    assert "arXiv:2311.05139" in preferred and "10.48550/arXiv.2311.05139" in preferred
    for author in ("Jiang", "Nguyen", "Aeron", "Ishwar"):
        assert f"family-names: {author}" in citation


def test_the_package_declares_its_annotations():
    assert (ROOT / "hcl_array" / "py.typed").is_file()
    assert (
        "py.typed"
        in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["hcl_array"]
    )
