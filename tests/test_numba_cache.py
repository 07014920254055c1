"""numba's disk cache (pickles numba loads) lives where only this user can write."""

from __future__ import annotations

import os
import stat
import sys

import pytest

import ddpm_tools.core.kernels as kernels
from ddpm_tools.core import numba_setup

pytestmark = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")


@pytest.fixture
def shared_package(monkeypatch, tmp_path):
    """As if the package folder could be written by others (a shared install)."""
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real = numba_setup.private_folder
    package = os.path.dirname(kernels.__file__)
    monkeypatch.setattr(numba_setup, "private_folder",
                        lambda p: False if str(p) == package else real(p))
    monkeypatch.setitem(sys.modules, "numba", sys.modules["numba"])  # restore live config
    monkeypatch.setattr(sys.modules["numba"].config, "CACHE_DIR",
                        sys.modules["numba"].config.CACHE_DIR)
    return tmp_path / "cache" / "ddpm-tools" / "numba"


def test_per_user_cache_folder_is_created_with_mode_0700(shared_package):
    numba_setup.set_numba_cache_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == str(shared_package)
    assert stat.S_IMODE(shared_package.stat().st_mode) == 0o700


def test_an_existing_open_cache_folder_is_closed_to_others(shared_package):
    shared_package.mkdir(parents=True)
    shared_package.chmod(0o777)
    numba_setup.set_numba_cache_dir()
    assert stat.S_IMODE(shared_package.stat().st_mode) == 0o700
    assert os.environ["NUMBA_CACHE_DIR"] == str(shared_package)


def test_the_users_own_setting_wins(shared_package, monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    numba_setup.set_numba_cache_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "mine")
    assert not shared_package.exists()


def test_the_package_folder_is_used_only_when_private(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    assert not numba_setup.private_folder(open_dir)
    open_dir.chmod(0o700)
    assert numba_setup.private_folder(open_dir)
