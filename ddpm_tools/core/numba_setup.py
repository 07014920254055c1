"""Where numba keeps its disk cache, and which threads it uses: set before numba is
imported anywhere in ddpm-tools (``core.kernels`` imports this module first)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def private_folder(folder: Path) -> bool:
    """``folder`` exists, belongs to this user and no one else may write in it (group and
    others have no write permission)."""
    try:
        st = folder.stat()
    except OSError:
        return False
    owner_ok = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return owner_ok and not st.st_mode & 0o022


def set_numba_cache_dir() -> None:
    """Where numba keeps its disk cache. The cache holds pickles that numba loads, so
    only this user may be able to write there: ``NUMBA_CACHE_DIR`` when the user set it;
    else numba's default, ``__pycache__`` in the package folder, when that folder is this
    user's alone; else the per-user folder ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/ddpm-tools/numba``, created with mode 0700 (and set to 0700 if it exists); failing
    that, a fresh temporary folder of mode 0700."""
    package = Path(__file__).parent
    if os.environ.get("NUMBA_CACHE_DIR") or (os.access(package, os.W_OK)
                                             and private_folder(package)):
        return
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folder = Path(base) / "ddpm-tools" / "numba"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if hasattr(os, "getuid") and folder.stat().st_uid == os.getuid():
            folder.chmod(0o700)
    except OSError:
        pass
    if not private_folder(folder):  # not ours alone: a fresh 0700 folder for this process
        folder = Path(tempfile.mkdtemp(prefix="ddpm-tools-numba-"))
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    if "numba" in sys.modules:  # imported earlier by someone else: set the live config too
        sys.modules["numba"].config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


set_numba_cache_dir()

import numba  # noqa: E402

if "NUMBA_THREADING_LAYER" not in os.environ:  # the user's choice wins
    # numba's own pool sleeps while it waits; OpenMP's spins, and on a machine where
    # other processes keep the cores busy a spinning thread takes the time the thread
    # it waits for needs (the threaded DP then ran 2-4x slower than on one thread)
    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]
