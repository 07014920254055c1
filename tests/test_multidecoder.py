"""Multidecoder sets: routing to stage decoders, one shared encoder (in memory and on
disk), joint training end to end, bit-identical resumption, manifest validation."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.core.noise_schedule import make_schedule
from ddpm_tools.data import load_data
from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.io.files import sha256_file
from ddpm_tools.models import (
    MLPConfig,
    MultiDecoderConfig,
    build_decoder,
    build_encoder,
    build_multidecoder,
)
from ddpm_tools.sets import DataInfo, Denoiser, Member, SetManifest, load_set, write_manifest
from ddpm_tools.sets.manifest import (
    MANIFEST_NAME,
    SharedWeights,
    manifest_from_json,
    manifest_to_json,
    read_manifest,
)
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.create import SetSpec, build_manifest, create_set
from ddpm_tools.training.joint import stage_probabilities, train_multidecoder

CFG = MultiDecoderConfig(hidden=16, encoder_depth=1, decoder_width=8, decoder_depth=1,
                         time_dim=8)


def _constant_set(path, ranges, T):
    """A multidecoder set (prediction x0) whose stage-k decoder outputs the constant 10 k."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_file(build_encoder(CFG, (2,)).state_dict(), str(path / "enc.safetensors"))
    members = []
    for k, (lo, hi) in enumerate(ranges):
        state = {n: torch.zeros_like(v) for n, v in build_decoder(CFG, (2,), 1).state_dict()
                 .items()}
        state["head.bias"] = torch.full_like(state["head.bias"], 10.0 * k)
        save_file(state, str(path / f"dec{k}.safetensors"))
        members.append(Member(k, lo, hi, CFG, f"dec{k}.safetensors",
                              sha256_file(path / f"dec{k}.safetensors")))
    man = SetManifest(make_schedule("cosine", T), DataInfo("8gaussians", (2,), None), "x0",
                      "fixed_small", tuple(members),
                      shared_encoder=SharedWeights("enc.safetensors",
                                                   sha256_file(path / "enc.safetensors")))
    write_manifest(path, man)
    return path


def test_routes_each_t_to_its_stage_decoder_through_one_shared_encoder(tmp_path):
    cset = load_set(_constant_set(tmp_path / "s", [(1, 3), (4, 4), (5, 12)], 12))
    den = Denoiser(cset)
    t = np.array([12, 1, 4, 5, 3, 11, 4])
    out = den(torch.randn(len(t), 2), t)
    owner = np.array([2, 0, 1, 2, 0, 2, 1])
    np.testing.assert_allclose(out.x0_hat.numpy(), 10.0 * owner[:, None].repeat(2, 1))
    nets = [den.member(k) for k in range(3)]
    assert nets[0].encoder is nets[1].encoder is nets[2].encoder  # one module ...
    ptrs = {n.encoder.time.mlp[0].weight.data_ptr() for n in nets}
    assert len(ptrs) == 1  # ... one tensor in memory
    assert nets[0].decoder.head.weight.data_ptr() != nets[1].decoder.head.weight.data_ptr()
    again = cset.load_member(1)  # a reload (e.g. after LRU eviction) reuses the encoder
    assert again.encoder.time.mlp[0].weight.data_ptr() in ptrs


def test_encoder_stored_once_and_a_corrupt_encoder_is_a_clear_error(tmp_path):
    path = _constant_set(tmp_path / "s", [(1, 6), (7, 12)], 12)
    enc_keys = set(load_file(str(path / "enc.safetensors")))
    for k in range(2):
        assert set(load_file(str(path / f"dec{k}.safetensors"))) == set(
            build_decoder(CFG, (2,), 1).state_dict())  # the decoder alone
    assert any(k.startswith("time.") for k in enc_keys)
    raw = bytearray((path / "enc.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (path / "enc.safetensors").write_bytes(bytes(raw))
    den = Denoiser(load_set(path))
    with pytest.raises(CheckpointError, match=r"shared encoder: weights file .* has sha256"):
        den(torch.zeros(1, 2), np.array([3]))
    (path / "enc.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shared encoder.*missing.*ddpm-tools train"):
        Denoiser(load_set(path))(torch.zeros(1, 2), np.array([3]))


def test_manifest_shared_encoder_entry_is_validated_and_optional(tmp_path):
    path = _constant_set(tmp_path / "s", [(1, 6), (7, 12)], 12)
    obj = json.loads((path / MANIFEST_NAME).read_text())
    assert obj["shared_encoder"]["weights"] == "enc.safetensors"
    no_shared = {k: v for k, v in obj.items() if k != "shared_encoder"}
    with pytest.raises(CheckpointError, match="shared_encoder entry"):
        manifest_from_json(no_shared, "m.json")
    other = json.loads(json.dumps(obj))
    other["members"][1]["config"]["hidden"] = 32
    with pytest.raises(CheckpointError, match="disagree on the shared encoder"):
        manifest_from_json(other, "m.json")
    # an ordinary set has no entry and reads as before
    plain = replace(manifest_from_json(obj, "m.json"), shared_encoder=None, members=tuple(
        replace(m, arch=MLPConfig(hidden=8, depth=1, time_dim=8))
        for m in manifest_from_json(obj, "m.json").members))
    j = manifest_to_json(plain)
    assert "shared_encoder" not in j and manifest_from_json(j, "m.json").shared_encoder is None


def test_multidecoder_net_routes_rows_like_its_stage_networks():
    torch.manual_seed(1)
    net = build_multidecoder([CFG, replace(CFG, decoder_width=4)], [5, 9], (1, 2, 2), 2)
    x, t = torch.randn(6, 1, 2, 2), torch.tensor([1, 9, 5, 6, 2, 7])
    out = net(x, t)
    assert out.shape == (6, 2, 2, 2)
    for k, rows in ((0, [0, 2, 4]), (1, [1, 3, 5])):
        torch.testing.assert_close(out[rows], net.stage(k)(x[rows], t[rows]))
    with pytest.raises(BadInputError, match="share one encoder"):
        build_multidecoder([CFG, replace(CFG, hidden=8)], [5, 9], (2,), 1)


def test_stage_probabilities():
    ranges = [(1, 10), (11, 40)]
    assert stage_probabilities(ranges, "uniform").tolist() == [0.5, 0.5]
    assert stage_probabilities(ranges, "length").tolist() == [0.25, 0.75]


def _new_set(path, steps=12, every=5, sampling="uniform", arch=CFG):
    cfg = TrainConfig(steps=steps, batch_size=32, lr=1e-3, ema=0.9, checkpoint_every=every,
                      seed=2)
    spec = SetSpec(intervals=3, T=30, schedule="cosine", stage_sampling=sampling)
    create_set(path, build_manifest(spec, load_data("moons", "train", seed=2), cfg,
                                    arch_config=arch))
    return path


def _files(path):
    return {f.name: f.read_bytes() for f in path.glob("*.safetensors")}


@pytest.mark.parametrize("sampling", ["uniform", "length"])
def test_joint_resume_is_bit_identical_to_uninterrupted(tmp_path, sampling):
    a = _new_set(tmp_path / "a", sampling=sampling)
    b = _new_set(tmp_path / "b", sampling=sampling)
    train_multidecoder(a)
    res = train_multidecoder(b, stop_after=7)  # "killed" after 7 steps
    assert [r.steps_done for r in res] == [7, 7, 7]
    assert read_manifest(b).shared_encoder.sha256 is None
    res = train_multidecoder(b)  # resumes
    assert [r.steps_done for r in res] == [12, 12, 12]
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == ["member_0000.safetensors", "member_0001.safetensors",
                          "member_0002.safetensors", "shared_encoder.safetensors"]
    assert fa == fb
    ma, mb = read_manifest(a), read_manifest(b)
    assert ma.shared_encoder == mb.shared_encoder
    assert ma.shared_encoder.sha256 == sha256_file(a / "shared_encoder.safetensors")
    for x, y in zip(ma.members, mb.members, strict=True):
        assert x.sha256 == y.sha256 == sha256_file(a / x.weights)
        assert (x.state.steps_done, x.state.final_loss) == (y.state.steps_done,
                                                            y.state.final_loss)
    assert all(r.skipped for r in train_multidecoder(a))  # trained: nothing to do


def test_decoder_widths_per_stage(tmp_path):
    widths = (4, 8, 16)
    p = _new_set(tmp_path / "s", steps=2, every=2,
                 arch=tuple(replace(CFG, decoder_width=w) for w in widths))
    train_multidecoder(p)
    cset = load_set(p)
    got = [cset.load_member(k).decoder.head.in_features for k in range(3)]
    assert got == list(widths)
    with pytest.raises(BadInputError, match="share one encoder"):
        _new_set(tmp_path / "bad", arch=(CFG, CFG, replace(CFG, hidden=8)))
    with pytest.raises(BadInputError, match="one per member"):
        _new_set(tmp_path / "bad2", arch=(CFG, CFG))


def test_train_cli_multidecoder_then_cost_table_and_eval_bpd(tmp_path):
    runner = CliRunner()
    out = tmp_path / "md"
    res = runner.invoke(app, ["train", "--data", "8gaussians", "--out", str(out), "--arch",
                              "multidecoder", "--intervals", "3", "--steps", "30", "--T", "24",
                              "--schedule", "cosine", "--batch-size", "64",
                              "--stage-sampling", "length", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert [(m["t_lo"], m["steps"]) for m in rep["members"]][0] == (1, 30)
    assert len(rep["members"]) == 3 and all(np.isfinite(m["final_loss"])
                                            for m in rep["members"])
    man = read_manifest(out)
    assert man.shared_encoder is not None and man.training["stage_sampling"] == "length"
    res = runner.invoke(app, ["cost-table", "--set", str(out), "--data", "8gaussians",
                              "--samples", "32", "--out", str(tmp_path / "c.safetensors"),
                              "--json"])
    assert res.exit_code == 0, res.output
    assert np.isfinite(json.loads(res.stdout)["full_chain_bpd"])
    res = runner.invoke(app, ["eval-bpd", "--set", str(out), "--data", "8gaussians",
                              "--schedule", "full", "--schedule", "dp:4", "--samples", "64",
                              "--table-samples", "32", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["budget"] for r in rows] == [24, 4]
    assert all(np.isfinite(r["bpd"]) and r["bpd_se"] > 0 for r in rows)
    res = runner.invoke(app, ["train-interval", "--set", str(out), "--member", "1"])
    assert res.exit_code == 2 and "train jointly" in res.output
