"""Training: resume is bit-identical, crash-safe checkpoints, CLI end to end, many members."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import ddpm_tools.io.files as fileio
from ddpm_tools.cli.main import app
from ddpm_tools.data import load_data
from ddpm_tools.models import MLPConfig
from ddpm_tools.sets import Denoiser, load_set, read_manifest
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.create import SetSpec, build_manifest, create_set
from ddpm_tools.training.trainer import checkpoint_path, train_member

SMALL = MLPConfig(hidden=32, depth=2, time_dim=16)


def _new_set(path, steps=20, every=5, variance="fixed_small", intervals=2, T=30):
    cfg = TrainConfig(steps=steps, batch_size=32, lr=1e-3, ema=0.9, checkpoint_every=every,
                      seed=3)
    spec = SetSpec(intervals=intervals, T=T, schedule="cosine", variance=variance)
    create_set(path, build_manifest(spec, load_data("moons", "train", seed=3), cfg,
                                    arch_config=SMALL))
    return path


def _weights(path, member=0):
    return load_file(str(path / read_manifest(path).members[member].weights))


@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
def test_resume_is_bit_identical_to_uninterrupted(tmp_path, variance):
    a = _new_set(tmp_path / "a", variance=variance)
    b = _new_set(tmp_path / "b", variance=variance)
    train_member(a, 1)
    r = train_member(b, 1, stop_after=7)  # "killed" after 7 steps (checkpoint at 5 and 7)
    assert r.steps_done == 7 and read_manifest(b).members[1].sha256 is None
    r = train_member(b, 1)  # resumes
    assert r.steps_done == 20
    wa, wb = _weights(a, 1), _weights(b, 1)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ma, mb = read_manifest(a).members[1], read_manifest(b).members[1]
    assert ma.sha256 == mb.sha256 and ma.state.final_loss == mb.state.final_loss


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    p = _new_set(tmp_path / "s", steps=20, every=5)
    ref = _new_set(tmp_path / "ref", steps=20, every=5)
    train_member(ref, 0)
    calls = {"n": 0}
    real_replace = os.replace

    def dying_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 10) dies mid-write
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        train_member(p, 0)
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    ck = checkpoint_path(p, 0)
    assert not [f for f in ck.parent.iterdir() if f.name.endswith(".tmp")]  # no debris
    from safetensors import safe_open
    with safe_open(str(ck), framework="pt") as f:
        assert f.metadata()["step"] == "5"  # the previous checkpoint, intact
    train_member(p, 0)  # resumes from step 5
    for k, v in _weights(ref, 0).items():
        assert torch.equal(v, _weights(p, 0)[k])


def test_sigkilled_cli_run_resumes_bit_identical(tmp_path):
    """A real kill: `train-interval` in its own process gets SIGKILL after its first
    checkpoint; a rerun removes the debris, resumes, and ends with the uninterrupted
    run's weights bit for bit."""
    import signal
    import subprocess
    import sys
    import time

    steps, every = 3000, 50
    ref = _new_set(tmp_path / "ref", steps=steps, every=every)
    p = _new_set(tmp_path / "p", steps=steps, every=every)
    train_member(ref, 0)
    cmd = [sys.executable, "-m", "ddpm_tools.cli.main", "train-interval", "--set", str(p),
           "--member", "0", "--device", "cpu", "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = checkpoint_path(p, 0)
    deadline = time.monotonic() + 120
    while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert read_manifest(p).members[0].sha256 is None  # killed mid-training
    debris = ck.parent / f".{ck.name}.killed.tmp"  # what a kill during a write leaves
    debris.write_bytes(b"half a checkpoint")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not debris.exists()
    assert read_manifest(p).members[0].sha256 == read_manifest(ref).members[0].sha256
    for k, v in _weights(ref, 0).items():
        assert torch.equal(v, _weights(p, 0)[k]), k


def test_ctrl_c_stops_every_worker_with_one_sentence(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) during `train --workers 2`: the
    command ends within seconds with exit code 130 and one sentence, no worker keeps
    training, and the checkpoints on disk are whole."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "set"
    cmd = [sys.executable, "-m", "ddpm_tools.cli.main", "train", "--data", "8gaussians",
           "--out", str(out), "--intervals", "2", "--T", "100", "--steps", "100000",
           "--workers", "2", "--checkpoint-every", "50", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    cks = [checkpoint_path(out, i) for i in (0, 1)]
    while not all(c.exists() for c in cks) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("train --workers 2 kept running after Ctrl-C")
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err, err[-2000:]
    gone_by = time.monotonic() + 15  # nothing of the run is left (workers, fork server)
    while time.monotonic() < gone_by:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("processes of the interrupted run are still alive")
    from safetensors import safe_open
    for c in cks:
        with safe_open(str(c), framework="pt") as f:
            assert 50 <= int(f.metadata()["step"]) < 100000


def test_a_failing_worker_stops_the_others(tmp_path):
    import time

    from ddpm_tools.errors import CheckpointError
    from ddpm_tools.training.parallel import train_set

    p = _new_set(tmp_path / "s", steps=60000, every=60000, intervals=2)
    bad = checkpoint_path(p, 1)
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not a checkpoint")  # member 1 fails at once; member 0 would run long
    t0 = time.monotonic()
    with pytest.raises(CheckpointError):
        train_set(p, workers=2)
    assert time.monotonic() - t0 < 30  # member 0 was stopped, not trained to the end
    assert read_manifest(p).members[0].sha256 is None


def test_second_process_on_the_same_member_is_refused(tmp_path):
    from ddpm_tools.training.trainer import training_lock

    p = _new_set(tmp_path / "s", steps=4, every=2)
    with training_lock(checkpoint_path(p, 1), "held"):  # as if another process trained it
        res = CliRunner().invoke(app, ["train-interval", "--set", str(p), "--member", "1"])
        assert res.exit_code == 2 and "another process" in res.output, res.output
        assert "Traceback" not in res.output
        # other members are not blocked
        res = CliRunner().invoke(app, ["train-interval", "--set", str(p), "--member", "0"])
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["train-interval", "--set", str(p), "--member", "1"])
    assert res.exit_code == 0 and read_manifest(p).members[1].sha256 is not None


def test_train_cli_intervals_1_and_4_end_to_end(tmp_path):
    runner = CliRunner()
    for n in (1, 4):
        out = tmp_path / f"set{n}"
        res = runner.invoke(app, ["train", "--data", "8gaussians", "--out", str(out),
                                  "--intervals", str(n), "--steps", "30", "--T", "40",
                                  "--schedule", "cosine", "--workers", "1", "--batch-size",
                                  "64", "--json"])
        assert res.exit_code == 0, res.output
        rep = json.loads(res.stdout)
        assert [m["t_lo"] for m in rep["members"]][0] == 1 and len(rep["members"]) == n
        assert all(m["steps"] == 30 and np.isfinite(m["final_loss"]) for m in rep["members"])
        cset = load_set(out)
        assert len(cset.manifest.members) == n and cset.manifest.members[-1].t_hi == 40
        res = runner.invoke(app, ["inspect", str(out), "--json"])
        assert res.exit_code == 0, res.output
        assert all(m["status"] == "ok" for m in json.loads(res.stdout)["members"])
    # rerunning the same command reuses the trained set
    res = runner.invoke(app, ["train", "--data", "8gaussians", "--out", str(tmp_path / "set4"),
                              "--intervals", "4", "--steps", "30", "--T", "40", "--schedule",
                              "cosine", "--workers", "1", "--batch-size", "64", "--json"])
    assert res.exit_code == 0 and all(m["skipped"] for m in json.loads(res.stdout)["members"])


def test_train_into_a_set_with_other_settings_is_refused(tmp_path):
    runner = CliRunner()
    args = ["train", "--data", "moons", "--out", str(tmp_path / "s"), "--steps", "2", "--T",
            "30", "--schedule", "cosine", "--workers", "1"]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, args[:-2] + ["--intervals", "3", "--workers", "1"])
    assert res.exit_code == 2 and "different settings" in res.output


def test_two_hundred_one_step_members_train_and_route(tmp_path):
    p = _new_set(tmp_path / "s", steps=1, every=1, intervals=200, T=200)
    from ddpm_tools.training.parallel import train_set
    train_set(p, workers=1)
    cset = load_set(p)
    assert len(cset.manifest.members) == 200
    assert all(m.t_lo == m.t_hi == m.index + 1 for m in cset.manifest.members)
    den = Denoiser(cset, max_loaded=8)
    t = np.array([1, 200, 57, 58, 57])
    out = den(torch.zeros(5, 2), t)
    assert out.x0_hat.shape == (5, 2) and torch.isfinite(out.x0_hat).all()
    assert torch.equal(out.x0_hat[2], out.x0_hat[4])  # same member, same input
    assert not torch.equal(out.x0_hat[2], out.x0_hat[3])  # neighbouring members differ


def test_train_interval_cli_member_and_torchrun_auto(tmp_path, monkeypatch):
    p = _new_set(tmp_path / "s", steps=4, every=2, intervals=3)
    runner = CliRunner()
    res = runner.invoke(app, ["train-interval", "--set", str(p), "--member", "1", "--json"])
    assert res.exit_code == 0, res.output
    m = read_manifest(p).members
    assert m[1].sha256 is not None and m[0].sha256 is None
    res = runner.invoke(app, ["train-interval", "--set", str(p), "--member", "7"])
    assert res.exit_code == 2 and "0..2" in res.output
    res = runner.invoke(app, ["train-interval", "--set", str(p), "--member", "auto"])
    assert res.exit_code == 2 and "torchrun" in res.output
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    res = runner.invoke(app, ["train-interval", "--set", str(p), "--member", "auto", "--json"])
    assert res.exit_code == 0, res.output
    assert all(mb.sha256 for mb in read_manifest(p).members)


def test_torchrun_two_ranks_train_every_member_like_one_process(tmp_path):
    """The README's command: torchrun with 2 ranks, -m ddpm_tools.cli.main, --member auto.
    Rank 0 trains members 0 and 2, rank 1 member 1; the weights equal one process's."""
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    a = _new_set(tmp_path / "a", steps=6, every=3, intervals=3)
    b = _new_set(tmp_path / "b", steps=6, every=3, intervals=3)
    from ddpm_tools.training.parallel import train_set
    train_set(a, workers=1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "ddpm_tools.cli.main",
           "train-interval", "--set", str(b), "--member", "auto", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks, text, dec = [], proc.stdout, json.JSONDecoder()
    while "{" in text:  # one JSON report per rank
        obj, end = dec.raw_decode(text[text.index("{"):])
        ranks.append(obj)
        text = text[text.index("{") + end:]
    assert sorted(m["member"] for r in ranks for m in r["members"]) == [0, 1, 2], proc.stdout
    for ma, mb in zip(read_manifest(a).members, read_manifest(b).members, strict=True):
        assert ma.sha256 is not None and ma.sha256 == mb.sha256


def test_each_torchrun_rank_uses_its_own_gpu(monkeypatch):
    from ddpm_tools.device import rank_device
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert rank_device("cuda") == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert [rank_device(d) for d in ("cuda", "cuda:1", "cpu")] == ["cuda:3", "cuda:1", "cpu"]


def test_workers_take_the_gpus_in_turn():
    from ddpm_tools.training.parallel import worker_device
    assert [worker_device("cuda", k, 2) for k in range(4)] == ["cuda:0", "cuda:1"] * 2
    assert worker_device("cuda", 3, 1) == "cuda" and worker_device("cuda", 3, 0) == "cuda"
    assert worker_device("cpu", 1, 4) == "cpu" and worker_device("cuda:2", 1, 4) == "cuda:2"


def test_python_m_runs_the_cli():
    import subprocess
    import sys

    for module in ("ddpm_tools", "ddpm_tools.cli.main"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and "train-interval" in out.stdout, (module, out.stderr)


def test_workers_2_trains_every_member_like_one_worker(tmp_path):
    from ddpm_tools.training.parallel import train_set
    a = _new_set(tmp_path / "a", steps=10, every=5, intervals=2)
    b = _new_set(tmp_path / "b", steps=10, every=5, intervals=2)
    train_set(a, workers=1)
    events: list[tuple[str, int, int]] = []
    res = train_set(b, workers=2, progress=lambda task, done, total, **info:
                    events.append((task, done, total)))
    assert sorted(r.index for r in res) == [0, 1]
    # the workers' progress reaches the parent, up to each member's last step
    last = {task: (done, total) for task, done, total in events}
    assert len(last) == 2 and all(v == (10, 10) for v in last.values()), events
    for i in (0, 1):
        for k, v in _weights(a, i).items():
            torch.testing.assert_close(v, _weights(b, i)[k], rtol=1e-4, atol=1e-5)
