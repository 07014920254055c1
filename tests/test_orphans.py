"""No process of a run outlives it: SIGKILL or SIGTERM of `train --workers 2` ends every
worker and the fork server (checked through the process group, /proc-free of psutil)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ddpm_tools.training.trainer import checkpoint_path


def _start(out):
    cmd = [sys.executable, "-m", "ddpm_tools.cli.main", "train", "--data", "8gaussians",
           "--out", str(out), "--intervals", "2", "--T", "100", "--steps", "100000",
           "--workers", "2", "--checkpoint-every", "20", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 120
    cks = [checkpoint_path(out, i) for i in (0, 1)]
    while not all(c.exists() for c in cks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return proc


def _group_gone(pgid, seconds):
    """True once no process of group ``pgid`` is left (within ``seconds``)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _group_members(pgid):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # field 5 of /proc/PID/stat: the process group
                pids.append(int(d))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_parent_leaves_no_process(tmp_path):
    proc = _start(tmp_path / "set")
    assert len(_group_members(proc.pid)) >= 3  # the command, the fork server, the workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone = _group_gone(proc.pid, 5)
    if not gone:
        left = _group_members(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"processes {left} of the killed run are still alive after 5 s")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_is_one_sentence_exit_143_and_stops_every_worker(tmp_path):
    proc = _start(tmp_path / "set")
    proc.send_signal(signal.SIGTERM)  # to the command only, as a job scheduler does
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("train --workers 2 kept running after SIGTERM")
    assert proc.returncode == 143, err[-2000:]
    assert "terminated" in err and "Traceback" not in err, err[-2000:]
    if not _group_gone(proc.pid, 5):
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("processes of the terminated run are still alive")
