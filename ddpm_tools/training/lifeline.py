"""Worker processes die with the command that started them: no orphan keeps training.

``train --workers N`` forks its workers from a fork server. If the command is killed
(SIGKILL, an out-of-memory kill, a closed terminal), nothing would stop the fork server
and the workers: they would train on under PID 1 and hold the members' locks. Three
guards prevent that:

1. The fork server, when it imports this module (it is the first module it preloads),
   asks the kernel to SIGKILL it when the command ends (Linux ``prctl(PR_SET_PDEATHSIG)``);
   the command's pid reaches it through :data:`PARENT_ENV`.
2. Each worker does the same for its own parent (the fork server, or the command itself
   where workers are spawned): :func:`die_with_parent`.
3. Each worker checks every 10 steps that its parent is still the one it started with
   (:func:`parent_alive`; ``os.getppid()`` changes when a parent ends), which also works
   where ``prctl`` does not exist.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PARENT_ENV = "DDPM_TOOLS_PARENT_PID"  # the command's pid, read by its fork server
PR_SET_PDEATHSIG = 1  # linux/prctl.h: the signal sent to this process when its parent ends

server_pid: int | None = None  # in the fork server and the workers it forks: its pid


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent ends (Linux); exit at once if the parent
    ``parent`` has already ended (then ``os.getppid()`` is no longer ``parent``)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL),
                                                    0, 0, 0)
    if not parent_alive(parent):
        os._exit(1)


def parent_alive(parent: int) -> bool:
    """Whether ``parent`` is still this process's parent (a dead parent's children are
    re-parented, so ``os.getppid()`` changes)."""
    return os.getppid() == parent


def _in_fork_server() -> bool:
    """True in a multiprocessing fork server (started as ``python -c 'from
    multiprocessing.forkserver import main; ...'``)."""
    return sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules


_command = os.environ.get(PARENT_ENV, "")
if _command.isdigit() and _in_fork_server():  # runs once, when the fork server preloads
    server_pid = os.getpid()
    die_with_parent(int(_command))
