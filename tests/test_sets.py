"""Checkpoint sets: tiling, routing, lazy bounded loading, corrupt files, inspect."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.core.noise_schedule import make_schedule
from ddpm_tools.errors import CheckpointError
from ddpm_tools.io.files import sha256_file
from ddpm_tools.models import MLPConfig, build_network
from ddpm_tools.sets import DataInfo, Denoiser, Member, SetManifest, load_set, write_manifest
from ddpm_tools.sets.manifest import MANIFEST_NAME, check_tiling
from ddpm_tools.stages.partition import partition_snr, partition_uniform

CFG = MLPConfig(hidden=8, depth=1, time_dim=8)


def _constant_set(path, ranges, T):
    """A set of MLP members with prediction x0 whose output is the constant 10 * index."""
    members = []
    path.mkdir(parents=True, exist_ok=True)
    for i, (lo, hi) in enumerate(ranges):
        net = build_network(CFG, (2,), 1)
        state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
        last_bias = [k for k in state if k.endswith("bias")][-1]
        state[last_bias] = torch.full_like(state[last_bias], 10.0 * i)
        name = f"m{i}.safetensors"
        save_file(state, str(path / name))
        members.append(Member(i, lo, hi, CFG, name, sha256_file(path / name)))
    man = SetManifest(make_schedule("cosine", T), DataInfo("8gaussians", (2,), None), "x0",
                      "fixed_small", tuple(members))
    write_manifest(path, man)
    return path


def test_tiling_validation_names_gap_overlap_and_end():
    def m(i, lo, hi):
        return Member(i, lo, hi, CFG, f"{i}.safetensors")
    check_tiling([m(0, 1, 4), m(1, 5, 10)], 10, "x")
    with pytest.raises(CheckpointError, match="gap at t = 5"):
        check_tiling([m(0, 1, 4), m(1, 6, 10)], 10, "x")
    with pytest.raises(CheckpointError, match="overlap"):
        check_tiling([m(0, 1, 5), m(1, 5, 10)], 10, "x")
    with pytest.raises(CheckpointError, match="T = 10"):
        check_tiling([m(0, 1, 4), m(1, 5, 9)], 10, "x")
    with pytest.raises(CheckpointError, match="t_lo = 5 > t_hi = 4"):
        check_tiling([m(0, 5, 4)], 10, "x")


@pytest.mark.parametrize("n", [1, 3, 7, 50])
def test_partitions_tile(n):
    sch = make_schedule("linear", 50)
    for parts in (partition_uniform(50, n), partition_snr(sch, n)):
        assert parts[0][0] == 1 and parts[-1][1] == 50 and len(parts) == n
        assert all(b[0] == a[1] + 1 for a, b in zip(parts, parts[1:], strict=False))


def _equal_log_snr_spans(sch, parts) -> bool:
    """Each member covers 1/n of the log-SNR range [lambda(T), lambda(1)] up to one step:
    member i spans lambda(end of i-1) - lambda(end of i) (lambda(1) for the first), and
    every end may miss its equal-span level by at most the width of the step after it."""
    lab = sch.log_alpha_bar
    lam = lab[1:] - np.log(-np.expm1(lab[1:]))  # lambda(t) for t = 1..T, decreasing
    width = (lam[0] - lam[-1]) / len(parts)
    spans = [lam[0] - lam[parts[0][1] - 1]] + [lam[a[1] - 1] - lam[b[1] - 1]
                                               for a, b in zip(parts, parts[1:], strict=False)]
    # allowed miss at each end: the width of the step hi -> hi + 1 (none at t = 1 and T)
    misses = [0.0] + [lam[hi - 1] - lam[hi] for _, hi in parts[:-1]] + [0.0]
    return all(abs(span - width) <= misses[i] + misses[i + 1] + 1e-12
               for i, span in enumerate(spans))


@pytest.mark.parametrize("n", [3, 5, 7])
def test_snr_partition_has_equal_log_snr_spans_and_uniform_has_not(n):
    sch = make_schedule("linear", 50)
    assert _equal_log_snr_spans(sch, partition_snr(sch, n))
    assert not _equal_log_snr_spans(sch, partition_uniform(50, n))
    assert [hi - lo + 1 for lo, hi in partition_snr(sch, 3)] == [12, 23, 15]


def test_routing_mixed_t_in_one_batch(tmp_path):
    T = 12
    ranges = [(1, 3), (4, 4), (5, 11), (12, 12)]
    cset = load_set(_constant_set(tmp_path / "s", ranges, T))
    den = Denoiser(cset)
    t = np.array([12, 1, 4, 5, 3, 11, 4, 12, 7])
    owner = np.array([3, 0, 1, 2, 0, 2, 1, 3, 2])
    out = den(torch.zeros(len(t), 2), t)
    np.testing.assert_allclose(out.x0_hat[:, 0].numpy(), 10.0 * owner)
    np.testing.assert_allclose(out.x0_hat[:, 1].numpy(), 10.0 * owner)
    assert out.v is None


def test_bounded_lazy_loading_of_many_members(tmp_path):
    T = 60
    cset = load_set(_constant_set(tmp_path / "s", [(t, t) for t in range(1, T + 1)], T))
    den = Denoiser(cset, max_loaded=5)
    assert den.loads == 0  # lazy: nothing loaded before the first call
    for t in range(1, T + 1):
        out = den(torch.zeros(2, 2), np.array([t, t]))
        assert out.x0_hat[0, 0].item() == 10.0 * (t - 1)
        assert len(den._cache) <= 5
    assert den.loads == T


def test_corrupt_truncated_and_wrong_sha(tmp_path):
    p = _constant_set(tmp_path / "s", [(1, 5), (6, 10)], 10)
    weights = p / "m1.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated: sha differs
    with pytest.raises(CheckpointError, match="sha256"):
        load_set(p).load_member(1)
    # truncated file whose sha matches the manifest: the loader reports corruption
    man = json.loads((p / MANIFEST_NAME).read_text())
    man["members"][1]["sha256"] = sha256_file(weights)
    (p / MANIFEST_NAME).write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_set(p).load_member(1)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_set(p).load_member(1)
    res = CliRunner().invoke(app, ["inspect", str(p)])
    assert res.exit_code == 2 and "member 1" in res.output and "Traceback" not in res.output


def test_manifest_errors_are_one_sentence(tmp_path):
    p = _constant_set(tmp_path / "s", [(1, 5), (6, 10)], 10)
    man = json.loads((p / MANIFEST_NAME).read_text())
    bad = dict(man, version=99)
    (p / MANIFEST_NAME).write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_set(p)
    man["members"][1]["t_lo"] = 7
    (p / MANIFEST_NAME).write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match="gap at t = 6"):
        load_set(p)
    man["members"][1]["t_lo"] = 6
    man["members"][1]["arch"] = "transformer"
    (p / MANIFEST_NAME).write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match="transformer"):
        load_set(p)
    (p / MANIFEST_NAME).write_text("{not json")
    res = CliRunner().invoke(app, ["inspect", str(p)])
    assert res.exit_code == 2 and "not valid JSON" in res.output


def test_untrained_member_is_named(tmp_path):
    p = _constant_set(tmp_path / "s", [(1, 5), (6, 10)], 10)
    from ddpm_tools.sets import read_manifest
    from ddpm_tools.sets.manifest import with_member
    write_manifest(p, with_member(read_manifest(p), 1, sha256=None))
    with pytest.raises(CheckpointError, match="member 1 .*train-interval"):
        load_set(p)
    res = CliRunner().invoke(app, ["inspect", str(p), "--json"])
    assert res.exit_code == 0, res.output
    assert [m["status"] for m in json.loads(res.output)["members"]] == ["ok", "untrained"]


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    p = _constant_set(tmp_path / "s", [(1, 10)], 10)
    from ddpm_tools.sets import read_manifest
    from ddpm_tools.sets.manifest import with_member
    m = read_manifest(p)
    write_manifest(p, with_member(m, 0, arch=replace(CFG, hidden=16)))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_set(p).load_member(0)
