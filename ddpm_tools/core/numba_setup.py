"""Where numba keeps its disk cache, and which threads it uses: set before numba is
imported anywhere in ddpm-tools (``core.kernels`` imports this module first). Also two
LLVM intrinsics the kernels add: a cache prefetch (:func:`prefetch`) and an atomic
counter (:func:`take_next`)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any


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
from llvmlite import ir  # noqa: E402
from numba.core import cgutils, types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

if "NUMBA_THREADING_LAYER" not in os.environ:  # the user's choice wins
    # numba's own pool sleeps while it waits; OpenMP's spins, and on a machine where
    # other processes keep the cores busy a spinning thread takes the time the thread
    # it waits for needs (the threaded DP then ran 2-4x slower than on one thread)
    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]


def _prefetch(typingctx: Any, a: Any, i: Any, j: Any) -> Any:
    """``prefetch(a, i, j)`` in compiled code: ask the CPU to bring the cache line of
    ``a[i, j]`` (a 2-D array) into L1, and go on at once (a hint: no value, no fault, even
    out of bounds). The DP kernel asks for the next rows of L while it computes on the
    current ones: rows that start on a new page come from memory at full speed only when
    asked for early, since the hardware prefetcher stops at page boundaries."""
    sig = types.void(a, i, j)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        idx = [context.cast(builder, v, t, types.intp)  # any integer type
               for v, t in zip(args[1:], signature.args[1:], strict=True)]
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], arr, idx)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(  # named the way numba names its own
            "llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
        # read (0), keep in every cache level (3), data (1)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


prefetch: Any = intrinsic(_prefetch)


def _take_next(typingctx: Any, counter: Any) -> Any:
    """``take_next(counter)`` in compiled code: add 1 to ``counter[0]`` (an int64 array
    shared by numba's threads) as one atomic step and return the value before. Threads
    that take pieces of work this way each get a different piece, in any order."""
    if not (isinstance(counter, types.Array) and counter.ndim == 1
            and counter.dtype == types.int64):
        return None
    sig = types.int64(counter)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], arr,
                                       [context.get_constant(types.intp, 0)])
        return builder.atomic_rmw("add", ptr, context.get_constant(types.int64, 1),
                                  "monotonic")

    return sig, codegen


take_next: Any = intrinsic(_take_next)
