"""Heavy commands over several processes and on GPUs: cost-table --shard auto and eval-bpd
under torchrun (2 CPU ranks, gloo) and in a Slurm array equal one process; each rank's
device; --precision; the batch size halving on CUDA out-of-memory (a fake one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.costs.build import build_cost_table, cache_path, merge_cost_tables
from ddpm_tools.costs.distributed import build_sharded, slurm_shard
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.data import load_data
from ddpm_tools.device import Ranks, resolve_device
from ddpm_tools.errors import BadInputError
from ddpm_tools.likelihood.distributed import rank_rows
from ddpm_tools.sets import Denoiser, load_set
from ddpm_tools.sets.calls import AdaptiveBatch

_ENVS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
         "SLURM_ARRAY_TASK_MIN")


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    """Each test starts outside torchrun and Slurm."""
    for name in _ENVS:
        monkeypatch.delenv(name, raising=False)


def _torchrun(args: list[str]) -> subprocess.CompletedProcess[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    env = {k: v for k, v in os.environ.items() if k not in _ENVS}
    env["OMP_NUM_THREADS"] = "1"  # as the in-process reference (conftest: one thread)
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m",
           "ddpm_tools.cli.main", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _same_file(a: Path, b: Path) -> None:
    """Same safetensors header (as JSON: the metadata's key order varies from process to
    process) and byte-identical arrays."""
    ra, rb = a.read_bytes(), b.read_bytes()
    ha, hb = (int.from_bytes(r[:8], "little") for r in (ra, rb))
    assert json.loads(ra[8 : 8 + ha]) == json.loads(rb[8 : 8 + hb])
    assert ra[8 + ha :] == rb[8 + hb :]


def test_torchrun_cost_table_equals_one_process_bit_for_bit(tiny_set_digits, tmp_path):
    """learned_range set, 2 ranks: rank 0 writes the merged table, byte-identical."""
    one = tmp_path / "one.safetensors"
    build_cost_table(load_set(tiny_set_digits), load_data("digits", "train"), one,
                     CostSettings(samples=12, batch_size=5, seed=3))
    out = tmp_path / "ranks.safetensors"
    proc = _torchrun(["cost-table", "--set", str(tiny_set_digits), "--data", "digits",
                      "--samples", "12", "--batch-size", "5", "--seed", "3", "--out", str(out),
                      "--device", "cpu", "--shard", "auto", "--json"])
    info = json.loads(proc.stdout)  # one JSON object: only rank 0 prints
    assert info["columns_done"] == info["columns_total"] == 24
    _same_file(out, one)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors",
                                                          "ranks.safetensors"]


def test_torchrun_eval_bpd_gives_the_numbers_of_one_process(tiny_set_2d, tmp_path):
    """40 examples in batches of 16: rank 0 scores 32, rank 1 the last 8; rank 0 prints
    the same means, standard errors and paired differences as one process. The dp:3
    schedule's train-split table is built by both ranks (rank 0 merges it into the cache)."""
    args = ["eval-bpd", "--set", str(tiny_set_2d), "--data", "8gaussians", "--samples", "40",
            "--batch-size", "16", "--schedule", "even:4", "--schedule", "full", "--schedule",
            "dp:3", "--table-samples", "24", "--seed", "2", "--device", "cpu", "--json"]
    cset = load_set(tiny_set_2d)
    settings = CostSettings(samples=24, seed=2)
    cached = cache_path(cset, "8gaussians", "train", settings)
    assert not cached.exists()
    proc = _torchrun(args)
    one = tmp_path / "one.safetensors"
    build_cost_table(cset, load_data("8gaussians", "train", seed=2), one, settings)
    _same_file(cached, one)
    assert [p.name for p in cached.parent.iterdir() if p.name.startswith(cached.name)] \
        == [cached.name]  # the ranks' files are gone
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(proc.stdout) == json.loads(res.stdout)


def test_slurm_array_tasks_then_merge_equal_one_process(tiny_set_2d, tmp_path, monkeypatch):
    runner = CliRunner()
    base = ["cost-table", "--set", str(tiny_set_2d), "--data", "8gaussians", "--samples", "16",
            "--device", "cpu", "--json"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "one.safetensors")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "x.safetensors"), "--shard",
                              "auto"])
    assert res.exit_code == 2 and "torchrun" in res.output and "SLURM_ARRAY_TASK_ID" \
        in res.output
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")  # sbatch --array=1-2
    parts = []
    for task in ("1", "2"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        parts.append(str(tmp_path / f"part{task}.safetensors"))
        res = runner.invoke(app, [*base, "--out", parts[-1], "--shard", "auto"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["columns_total"] == 10  # T = 20 over 2 tasks
    res = runner.invoke(app, ["cost-table", "merge", *parts, "--out",
                              str(tmp_path / "merged.safetensors")])
    assert res.exit_code == 0, res.output
    _same_file(tmp_path / "merged.safetensors", tmp_path / "one.safetensors")


def test_slurm_shard_reads_the_array_and_refuses_steps(monkeypatch):
    assert slurm_shard() is None
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert (slurm_shard().index, slurm_shard().count) == (3, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "6")  # --array=0-6:2: ids 0, 2, 4, 6
    with pytest.raises(BadInputError, match="--array=0-3"):
        slurm_shard()


def test_shard_text_is_checked_before_any_work(tiny_set_2d, tmp_path, monkeypatch):
    cset, data = load_set(tiny_set_2d), load_data("8gaussians", "train")
    with pytest.raises(BadInputError, match="i/n"):
        build_sharded(cset, data, tmp_path / "x.safetensors", CostSettings(samples=4),
                       shard="2/2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(BadInputError, match="--shard auto"):  # each rank: the whole table
        build_sharded(cset, data, tmp_path / "x.safetensors", CostSettings(samples=4))
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("n,batch,world", [(40, 16, 2), (7, 2, 3), (5, 8, 3), (100, 7, 4),
                                           (3, 1, 5)])
def test_ranks_take_contiguous_whole_batches_covering_every_example(n, batch, world):
    rows = [rank_rows(n, batch, Ranks(r, world, r)) for r in range(world)]
    covered = np.concatenate([np.arange(n)[s] for s in rows])
    np.testing.assert_array_equal(covered, np.arange(n))  # every example once, in order
    assert all(s.start % batch == 0 for s in rows if s.stop > s.start)  # one process's
    sizes = [-(-(s.stop - s.start) // batch) for s in rows]
    assert max(sizes) - min(sizes) <= 1 or n <= batch  # batches spread evenly
    assert rank_rows(n, batch, None) == slice(0, n)


def test_each_rank_resolves_cuda_to_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda") == torch.device("cuda")  # one process: the current GPU
    monkeypatch.setenv("RANK", "7")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda:3")
    assert resolve_device("cuda") == torch.device("cuda:3")
    assert resolve_device("cuda:1") == torch.device("cuda:1")  # explicit: as given
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(BadInputError, match="nproc-per-node"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BadInputError, match="no usable CUDA GPU"):
        resolve_device("cuda")


def _oom_above(limit: int):
    def body_check(rows: int) -> None:
        if rows > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
    return body_check


def test_batch_halves_on_out_of_memory_and_says_it_once():
    said: list[str] = []
    batch = AdaptiveBatch(16, said.append)
    check, done = _oom_above(3), []

    def body(a: int, b: int) -> None:
        check(b - a)
        done.append((a, b))

    batch.run(21, body)
    assert batch.size == 2 and batch.halvings == 3 and len(said) == 1 and "2 examples" in said[0]
    assert [a for a, _ in done] == list(range(0, 21, 2))  # each row once, in order
    batch.run(5, body)  # the smaller size is kept: no new halving, no new warning
    assert batch.halvings == 3 and len(said) == 1
    with pytest.raises(BadInputError, match="--device cpu"):
        AdaptiveBatch(4).run(4, lambda a, b: _oom_above(0)(b - a))
    with pytest.raises(ValueError, match="not memory"):  # other errors pass through
        AdaptiveBatch(4).run(4, lambda a, b: (_ for _ in ()).throw(ValueError("not memory")))


def test_cost_table_after_out_of_memory_equals_the_smaller_batch(tiny_set_2d, tmp_path,
                                                                 monkeypatch):
    cset, data = load_set(tiny_set_2d), load_data("8gaussians", "train")
    small = build_cost_table(cset, data, tmp_path / "a.safetensors",
                             CostSettings(samples=24, batch_size=6)).table
    real = Denoiser.__call__

    def tight(self, x_t, t):  # a "GPU" that fits 6 examples per call
        _oom_above(6)(x_t.shape[0])
        return real(self, x_t, t)

    monkeypatch.setattr(Denoiser, "__call__", tight)

    class Progress:
        warnings: list[str] = []

        def __call__(self, task, done, total, **info):
            pass

        def warn(self, message):
            self.warnings.append(message)

    progress = Progress()
    big = build_cost_table(cset, data, tmp_path / "b.safetensors",
                           CostSettings(samples=24, batch_size=24), progress=progress).table
    np.testing.assert_array_equal(big.L, small.L)
    assert len(progress.warnings) == 1 and "6 examples" in progress.warnings[0]


def test_precision_autocasts_the_network_and_inference_mode(tiny_set_2d):
    cset = load_set(tiny_set_2d)
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = np.full(8, 7)
    fp32 = Denoiser(cset)(x, t)
    assert torch.is_inference(fp32.x0_hat) and fp32.x0_hat.dtype == torch.float64
    bf16 = Denoiser(cset, precision="bf16")(x, t)
    assert bf16.x0_hat.dtype == torch.float64  # back in x_t's dtype for the float64 math
    diff = (bf16.x0_hat - fp32.x0_hat).abs().max().item()
    assert 0 < diff < 0.1  # bfloat16 arithmetic: close, not equal
    with pytest.raises(BadInputError, match="fp32, bf16, fp16"):
        Denoiser(cset, precision="fp64")
    res = CliRunner().invoke(app, ["eval-bpd", "--set", str(tiny_set_2d), "--data",
                                   "8gaussians", "--schedule", "even:2", "--precision", "int8"])
    assert res.exit_code == 2 and "--precision" in res.output


def test_eval_bpd_ranks_slice_the_noise_of_one_process(tiny_set_2d, monkeypatch):
    """4 ranks over 20 examples in batches of 8 (the last rank has none): the gathered
    per-example nats give one process's numbers exactly. The gather is simulated."""
    import ddpm_tools.likelihood.elbo as elbo

    cset, data = load_set(tiny_set_2d), load_data("8gaussians", "test")
    scheds = [("even:3", np.array([0, 5, 12, 20])), ("full", np.arange(21))]
    kw = dict(samples=20, seed=4, batch_size=8)
    one = elbo.eval_bpd(cset, data, scheds, **kw)
    parts: dict[int, np.ndarray] = {}

    def gather(ranks, per):
        parts[ranks.rank] = per
        return np.concatenate([parts[r] for r in range(4)], -1) if ranks.main else None

    monkeypatch.setattr(elbo, "gather_examples", gather)
    monkeypatch.setenv("WORLD_SIZE", "4")
    for r in (3, 2, 1, 0):
        monkeypatch.setenv("RANK", str(r))
        res = elbo.eval_bpd(cset, data, scheds, **kw)
        assert (res == []) == (r != 0)
    assert [parts[r].shape[-1] for r in range(4)] == [8, 8, 4, 0]
    assert res == one


def test_shards_of_other_precisions_do_not_merge(tiny_set_2d, tmp_path):
    cset, data = load_set(tiny_set_2d), load_data("8gaussians", "train")
    parts = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for i, precision in enumerate(("fp32", "bf16")):
        build_sharded(cset, data, parts[i], CostSettings(samples=4, precision=precision),
                       shard=f"{i}/2")
    with pytest.raises(BadInputError, match="other settings"):
        merge_cost_tables(parts, tmp_path / "m.safetensors")


def test_cli_says_the_smaller_batch_once_on_stderr(tiny_set_2d, tmp_path, monkeypatch):
    real = Denoiser.__call__
    monkeypatch.setattr(Denoiser, "__call__",
                        lambda self, x_t, t: (_oom_above(5)(x_t.shape[0]), real(self, x_t, t))[1])
    res = CliRunner().invoke(app, ["cost-table", "--set", str(tiny_set_2d), "--data",
                                   "8gaussians", "--samples", "16", "--batch-size", "16",
                                   "--out", str(tmp_path / "c.safetensors"), "--device", "cpu",
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("ran out of memory") == 1 and "4 examples" in res.stderr
    assert json.loads(res.stdout)["columns_done"] == 20
