"""A missing extra skips its tests, or fails them under scripts/test."""

from __future__ import annotations

import pytest
from extras import REQUIRE_ENV, import_extra

MISSING = "ddpm_tools_test_no_such_module"


def test_installed_extra_is_imported():
    assert import_extra("json", "none").dumps([1]) == "[1]"


def test_missing_extra_skips_by_default(monkeypatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="the nothing extra is not installed"):
        import_extra(MISSING, "nothing")


def test_missing_extra_fails_when_required(monkeypatch):
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_ENV}=1"):
        import_extra(MISSING, "nothing")


def test_scripts_test_requires_the_extras():
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "scripts" / "test").read_text()
    assert f"export {REQUIRE_ENV}=1" in script
