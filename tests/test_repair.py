"""A damaged member (weights missing, unreadable, changed) is repaired by train-interval and
train: from its training checkpoint when intact (the same weights), else from scratch."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.data import load_data
from ddpm_tools.models import MLPConfig
from ddpm_tools.sets import load_set, read_manifest
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.create import SetSpec, build_manifest, create_set
from ddpm_tools.training.trainer import checkpoint_path

SMALL = MLPConfig(hidden=16, depth=1, time_dim=8)


def _trained_set(path):
    cfg = TrainConfig(steps=6, batch_size=16, lr=1e-3, ema=0.9, checkpoint_every=3, seed=1)
    spec = SetSpec(intervals=2, T=12, schedule="cosine")
    create_set(path, build_manifest(spec, load_data("moons", "train", seed=1), cfg,
                                    arch_config=SMALL))
    res = CliRunner().invoke(app, ["train-interval", "--set", str(path), "--member", "auto"],
                             env={"RANK": "0", "WORLD_SIZE": "1"})
    assert res.exit_code == 0, res.output
    return path


def _repair(args):
    res = CliRunner().invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["members"]


def test_missing_weights_are_rebuilt_from_the_checkpoint_bit_identical(tmp_path):
    p = _trained_set(tmp_path / "s")
    sha = read_manifest(p).members[1].sha256
    (p / "member_0001.safetensors").unlink()
    res = CliRunner().invoke(app, ["inspect", str(p)])
    assert res.exit_code == 2
    advice = f"ddpm-tools train-interval --set {p} --member 1"
    assert advice in " ".join(res.output.split()), res.output
    (rep,) = _repair(["train-interval", "--set", str(p), "--member", "1"])
    assert not rep["skipped"] and "training checkpoint" in rep["repaired"]
    assert "missing" in rep["repaired"]
    assert read_manifest(p).members[1].sha256 == sha  # the very same weights again
    load_set(p).load_member(1)


def test_changed_weights_without_checkpoint_are_retrained_from_scratch(tmp_path):
    p = _trained_set(tmp_path / "s")
    w = p / "member_0000.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)  # wrong sha256
    checkpoint_path(p, 0).unlink()
    reps = _repair(["train-interval", "--set", str(p), "--member", "0", "--steps", "6"])
    assert "from scratch" in reps[0]["repaired"] and "sha256" in reps[0]["repaired"]
    load_set(p).load_member(0)


def test_train_repairs_an_unreadable_checkpoint_member_from_scratch(tmp_path):
    p = tmp_path / "s"
    args = ["train", "--data", "moons", "--out", str(p), "--intervals", "2", "--T", "12",
            "--schedule", "cosine", "--steps", "4", "--batch-size", "16", "--workers", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    (p / "member_0000.safetensors").write_bytes(b"garbage")
    checkpoint_path(p, 0).write_bytes(b"also garbage")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "member 0:" in res.output and "from scratch" in res.output, res.output
    assert "already trained" in res.output  # member 1 was intact
    load_set(p).load_member(0)


def test_a_folder_in_place_of_weights_is_one_sentence(tmp_path):
    p = _trained_set(tmp_path / "s")
    w = p / "member_0001.safetensors"
    w.unlink()
    w.mkdir()
    for args in (["inspect", str(p)], ["train-interval", "--set", str(p), "--member", "1"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "not a file" in res.output, res.output


def test_a_multidecoder_set_is_repaired_by_its_joint_training(tmp_path):
    from test_multidecoder import _new_set

    from ddpm_tools.training.joint import train_multidecoder

    p = _new_set(tmp_path / "m", steps=4, every=2)
    train_multidecoder(p)
    before = {f.name: f.read_bytes() for f in p.glob("*.safetensors")}
    (p / "shared_encoder.safetensors").unlink()
    res = CliRunner().invoke(app, ["inspect", str(p)])
    assert res.exit_code == 2 and "ddpm-tools train" in res.output, res.output
    assert not any(r.skipped for r in train_multidecoder(p))  # rebuilt from its checkpoint
    assert {f.name: f.read_bytes() for f in p.glob("*.safetensors")} == before


def test_an_imported_set_is_never_retrained_the_advice_is_to_import_again(tmp_path):
    p = _trained_set(tmp_path / "s")
    man = json.loads((p / "ddpm_set.json").read_text())
    man["training"] = {"imported": {"project": "improved-diffusion", "source": "/m/model.pt",
                                    "flags": "--image_size 32"}}
    (p / "ddpm_set.json").write_text(json.dumps(man))
    (p / "member_0001.safetensors").unlink()
    for args in (["inspect", str(p)], ["train-interval", "--set", str(p), "--member", "1"]):
        res = CliRunner().invoke(app, args)
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and "import-checkpoint improved-diffusion /m/model.pt" in out
        assert "train-interval" not in out, out
