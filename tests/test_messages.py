"""Messages that used to mislead now say what is wrong and what to do."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from ddpm_tools.cli.main import app

runner = CliRunner()


def test_eval_samples_given_a_folder(tmp_path):
    res = runner.invoke(app, ["eval-samples", "--samples", str(tmp_path), "--data", "moons"])
    assert res.exit_code == 2 and "is a folder" in res.output, res.output
    assert "does not exist" not in res.output


@pytest.mark.parametrize("spec,words", [("", "empty"), (".", "is a folder")])
def test_empty_or_folder_schedule(tiny_set_2d, tmp_path, spec, words):
    res = runner.invoke(app, ["sample", "--set", str(tiny_set_2d), "--schedule", spec,
                              "--out", str(tmp_path / "x.npz")])
    assert res.exit_code == 2 and words in res.output, res.output
    assert "Is a directory" not in res.output


@pytest.mark.parametrize("eta", ["nan", "inf", "-0.5", "1.5"])
def test_eta_outside_0_1_names_the_range_and_value(tiny_set_2d, tmp_path, eta):
    res = runner.invoke(app, ["sample", "--set", str(tiny_set_2d), "--schedule", "even:3",
                              "--out", str(tmp_path / "x.npz"), "--eta", eta])
    assert res.exit_code == 2 and "[0, 1]" in res.output and eta in res.output, res.output


def test_cost_table_ctrl_c_says_resume_and_keeps_the_columns(tiny_set_2d, tmp_path,
                                                             monkeypatch):
    import ddpm_tools.costs.build as build

    real = build.compute_columns

    def interrupted(*a, **k):
        done = {"n": 0}
        orig = k["progress"]

        def progress(task, i, total, **info):
            if orig is not None:
                orig(task, i, total, **info)
            done["n"] += 1
            if done["n"] == 3:
                raise KeyboardInterrupt
        k["progress"] = progress
        return real(*a, **k)

    monkeypatch.setattr(build, "compute_columns", interrupted)
    out = tmp_path / "c.safetensors"
    res = runner.invoke(app, ["cost-table", "--set", str(tiny_set_2d), "--data", "8gaussians",
                              "--samples", "4", "--out", str(out)])
    assert res.exit_code == 130, res.output
    assert "--resume" in res.output and "train" not in res.output, res.output
    assert (tmp_path / "c.safetensors.partial").exists()  # nothing computed is lost


def test_diffusers_prefix_in_inspect_and_pickled_bin_advice(tmp_path):
    pytest.importorskip("diffusers")
    import torch
    from diffusers import DDPMScheduler
    from test_diffusers import save, tiny_unet

    folder = save(tmp_path / "ckpt", tiny_unet(), DDPMScheduler(num_train_timesteps=50))
    res = runner.invoke(app, ["inspect", f"diffusers:{folder}", "--json"])
    assert res.exit_code == 0, res.output
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"conv_in.weight": np.float64}, folder / "diffusion_pytorch_model.bin")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = runner.invoke(app, ["inspect", f"diffusers:{folder}"])
    assert res.exit_code == 2 and "never unpickles" in res.output, res.output
    said = res.output + " ".join(str(w.message) for w in caught)
    assert "weights_only" not in said and "trust the source" not in said, said
