"""Helpers of the image tests: torchvision where it loads, a skip with the reason where it does not.

The CPU torch pin has no torchvision that loads beside it, so the main test run skips the tests that need
torchvision; `nox -s vision` installs a torch + torchvision pair and sets HCL_REQUIRE_VISION=1, which
turns those skips into failures (a test that silently skipped there would hide a broken image path).
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest


def require_torchvision() -> ModuleType:
    """The torchvision module; a skip naming the reason, or a failure under HCL_REQUIRE_VISION=1."""
    try:
        import torchvision
        import torchvision.transforms.v2.functional  # the references of the augmentation tests
    except (ImportError, RuntimeError) as error:  # RuntimeError: a torchvision built for another torch
        reason = f"torchvision does not load here ({type(error).__name__}: {error}); nox -s vision runs this test"
        if os.environ.get("HCL_REQUIRE_VISION"):
            pytest.fail(reason)
        pytest.skip(reason)
    return torchvision
