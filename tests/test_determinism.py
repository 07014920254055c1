"""Same inputs, same seed: byte-identical files. A small pipeline (train, cost-table,
optimize-schedule, train-prior, sample) runs twice; every file written is compared byte
for byte. The only exception is wall-clock time: the ``seconds`` the manifest, the
training checkpoints and the prior index record are compared with those removed."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.io.files import canonical_safetensors

runner = CliRunner()


def _run(root):
    s, c, sch = root / "set", root / "costs.safetensors", root / "schedules"
    for args in (
        ["train", "--data", "moons", "--out", str(s), "--intervals", "2", "--T", "20",
         "--schedule", "cosine", "--steps", "6", "--checkpoint-every", "3", "--batch-size",
         "16", "--workers", "1", "--seed", "5"],
        ["cost-table", "--set", str(s), "--data", "moons", "--samples", "8", "--out", str(c),
         "--seed", "5"],
        ["optimize-schedule", "--costs", str(c), "--budget", "3", "--budget", "5", "--out",
         str(sch)],
        ["train-prior", "--set", str(s), "--data", "moons", "--at", "10", "--components", "2",
         "--samples", "64", "--seed", "5"],
        ["sample", "--set", str(s), "--schedule", str(sch / "schedule_K3.json"), "--n", "16",
         "--out", str(root / "samples.npz"), "--seed", "5"],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args[0], res.output)
    return {p.relative_to(root): p for p in root.rglob("*") if p.is_file()
            and not p.name.endswith(".lock")}


def _drop_seconds(obj):
    if isinstance(obj, dict):
        return {k: _drop_seconds(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [_drop_seconds(v) for v in obj]
    return obj


def _comparable(path):
    """The file's bytes, with recorded wall-clock seconds taken out where they are kept."""
    data = path.read_bytes()
    if path.suffix == ".json" and path.name in ("ddpm_set.json", "priors.json"):
        return json.dumps(_drop_seconds(json.loads(data)), sort_keys=True).encode()
    if path.name.endswith(".ckpt.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            meta = {k: v for k, v in (f.metadata() or {}).items() if k != "seconds"}
        n = int.from_bytes(data[:8], "little")
        return json.dumps(meta, sort_keys=True).encode() + data[8 + n:]
    return data


@pytest.mark.slow
def test_two_identical_runs_write_byte_identical_files(tmp_path):
    root = tmp_path / "run"  # the same paths both times: they are recorded in the files
    a = {k: _comparable(p) for k, p in _run(root).items()}
    shutil.rmtree(root)
    b = {k: _comparable(p) for k, p in _run(root).items()}
    assert sorted(a) == sorted(b)
    kinds = {p.suffix for p in a}
    assert {".safetensors", ".json", ".npz"} <= kinds, kinds
    differ = [str(k) for k in a if a[k] != b[k]]
    assert not differ, differ


def test_safetensors_metadata_is_written_in_a_fixed_order():
    import numpy as np
    from safetensors.numpy import save

    meta = {"T": "1", "dims": "2", "seed": "3", "split": "4", "variance": "5", "data": "x"}
    blobs = {canonical_safetensors(save({"x": np.zeros(2)}, metadata=meta)) for _ in range(20)}
    assert len(blobs) == 1  # safetensors alone orders the entries differently between calls
