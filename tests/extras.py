"""Optional dependencies (the package's extras) in tests: skipped where an extra is not
installed, except under ``scripts/test``, which installs every extra and sets
``DDPM_TOOLS_REQUIRE_EXTRAS=1`` so that a missing one fails instead of skipping silently."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE_ENV = "DDPM_TOOLS_REQUIRE_EXTRAS"


def import_extra(module: str, extra: str) -> ModuleType:
    """``module`` of the ``extra``; skip the test (module) without it, or fail when
    ``DDPM_TOOLS_REQUIRE_EXTRAS=1``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        reason = f"the {extra} extra is not installed (pip install 'ddpm-tools[{extra}]')"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, but {REQUIRE_ENV}=1 (scripts/test) requires it",
                        pytrace=False)
        pytest.skip(reason, allow_module_level=True)
