"""diffusers checkpoints in, schedules out: a tiny UNet2DModel + DDPMScheduler made here."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from extras import import_extra
from typer.testing import CliRunner

import_extra("diffusers", "diffusers")
import diffusers.schedulers.scheduling_ddpm as scheduling_ddpm  # noqa: E402
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

from ddpm_tools.cli.main import app  # noqa: E402
from ddpm_tools.costs.build import cache_path  # noqa: E402
from ddpm_tools.costs.estimate import CostSettings  # noqa: E402
from ddpm_tools.errors import CheckpointError  # noqa: E402
from ddpm_tools.sampling.ancestral import sample  # noqa: E402
from ddpm_tools.schedules.schedule_file import Schedule, write_schedule  # noqa: E402
from ddpm_tools.sets import Denoiser, load_set  # noqa: E402
from ddpm_tools.sets.diffusers_config import read_scheduler_config  # noqa: E402
from ddpm_tools.sets.diffusers_set import DiffusersSet  # noqa: E402

T = 50  # num_train_timesteps of the tiny scheduler
runner = CliRunner()


def tiny_unet(out_channels: int = 1, seed: int = 0) -> UNet2DModel:
    """A 1-channel 8x8 UNet2DModel with attention (~45k parameters)."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels,
                       block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None)


def save(folder, unet, scheduler, layout="root"):
    """Save in the root layout (side by side) or the pipeline layout (DDPMPipeline)."""
    if layout == "root":
        unet.save_pretrained(folder)
        scheduler.save_pretrained(folder)
    else:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def edit_json(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """npz:PATH of 40 random 8-bit 8x8 images (36 train, 4 test)."""
    p = tmp_path_factory.mktemp("data") / "imgs.npz"
    rng = np.random.default_rng(0)
    np.savez(p, x=rng.integers(0, 256, size=(40, 8, 8), dtype=np.uint8))
    return f"npz:{p}"


@pytest.mark.parametrize("cfg", [
    {"beta_schedule": "linear"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": np.linspace(1e-3, 0.05, T).tolist()},
])
def test_betas_are_built_exactly_as_diffusers_builds_them(tmp_path, cfg):
    sch = DDPMScheduler(num_train_timesteps=T, **cfg)
    sch.save_pretrained(tmp_path)
    ours = read_scheduler_config(tmp_path / "scheduler_config.json").schedule
    assert ours.T == T
    np.testing.assert_array_equal(ours.betas[1:], sch.betas.double().numpy())
    # alpha_bar_t is diffusers' alphas_cumprod[t - 1] (ours in float64, theirs in float32)
    np.testing.assert_allclose(ours.alpha_bar[1:], sch.alphas_cumprod.double().numpy(),
                               rtol=1e-5)


def test_log_variance_forms_and_prediction_types_map_to_ours(tmp_path):
    p = tmp_path / "scheduler_config.json"
    for vt, pt, variance, prediction in [("fixed_small_log", "sample", "fixed_small", "x0"),
                                         ("fixed_large_log", "v_prediction", "fixed_large", "v"),
                                         ("learned_range", "epsilon", "learned_range", "eps")]:
        DDPMScheduler(num_train_timesteps=T, variance_type=vt,
                      prediction_type=pt).save_pretrained(tmp_path)
        s = read_scheduler_config(p)
        assert (s.variance, s.prediction, s.clip_range) == (variance, prediction, 1.0)
    edit_json(p, clip_sample=False)
    assert read_scheduler_config(p).clip_range is None
    from diffusers import DDIMScheduler

    DDIMScheduler(num_train_timesteps=T, clip_sample_range=1.5).save_pretrained(tmp_path)
    s = read_scheduler_config(p)  # a DDIM config: same betas, DDPMScheduler's default variance
    assert (s.variance, s.clip_range, s.schedule.T) == ("fixed_small", 1.5, T)


@pytest.mark.parametrize("layout", ["root", "pipeline"])
def test_folder_to_cost_table_to_dp_schedule_to_diffusers_loop(tmp_path, images, layout):
    folder = save(tmp_path / "ckpt", tiny_unet(), DDPMScheduler(num_train_timesteps=T),
                  layout)
    spec = str(folder) if layout == "root" else f"diffusers:{folder}"  # auto-detected, explicit
    costs, scheds = tmp_path / "costs.safetensors", tmp_path / "schedules"
    r = runner.invoke(app, ["cost-table", "--set", spec, "--data", images, "--samples", "8",
                            "--out", str(costs), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["T"] == T
    r = runner.invoke(app, ["optimize-schedule", "--costs", str(costs), "--budget", "8",
                            "--out", str(scheds), "--json"])
    assert r.exit_code == 0, r.output
    sfile = scheds / "schedule_K8.json"
    r = runner.invoke(app, ["export-schedule", str(sfile), "--to", "diffusers", "--json"])
    assert r.exit_code == 0, r.output
    exported = json.loads(r.stdout)
    timesteps = exported["timesteps"]
    tau = json.loads(sfile.read_text())["timesteps"]
    assert timesteps == [t - 1 for t in reversed(tau[1:])] and len(timesteps) == 8
    assert timesteps[0] == T - 1 and timesteps == sorted(timesteps, reverse=True)

    # the exported list drives a plain diffusers denoising loop to completion
    unet = UNet2DModel.from_pretrained(folder / "unet" if layout == "pipeline" else folder)
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler" if layout == "pipeline"
                                              else folder)
    scheduler.set_timesteps(timesteps=timesteps)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    calls = 0
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
            calls += 1
    assert calls == 8 and torch.isfinite(x).all() and x.abs().max() <= 1.0 + 1e-6

    r = runner.invoke(app, ["export-schedule", str(sfile), "--to", "improved-diffusion"])
    assert r.exit_code == 0, r.output
    line = r.stdout.strip().splitlines()[-1]
    assert line == "use_timesteps = {" + ", ".join(str(t - 1) for t in tau[1:]) + "}"


# (scheduler options, UNet output channels, schedule): fixed_small with the usual clip,
# fixed_large unclipped, learned_range clipped to [-2, 2]; tau_1 = 1 and tau_1 > 1
MATCH_CASES = [
    ({"variance_type": "fixed_small"}, 1, [0, 1, 4, 11, 23, 38, 50]),
    ({"variance_type": "fixed_small_log"}, 1, [0, 3, 9, 20, 50]),
    ({"variance_type": "fixed_large", "clip_sample": False}, 1, [0, 1, 6, 17, 29, 50]),
    ({"variance_type": "fixed_large", "prediction_type": "v_prediction"}, 1, [0, 2, 10, 50]),
    ({"variance_type": "learned_range", "clip_sample_range": 2.0}, 2, [0, 1, 5, 13, 31, 50]),
    ({"variance_type": "learned_range"}, 2, [0, 4, 12, 27, 44, 50]),
]


@pytest.mark.parametrize("options,out_channels,tau", MATCH_CASES)
def test_sample_matches_ddpm_scheduler_step_on_the_same_noise(tmp_path, monkeypatch, options,
                                                               out_channels, tau):
    unet = tiny_unet(out_channels)
    scheduler = DDPMScheduler(num_train_timesteps=T, **options)
    cset = load_set(save(tmp_path, unet, scheduler))
    n, shape = 3, (3, 1, 8, 8)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = sample(cset, np.array(tau), n, eta=1.0, generator=torch.Generator().manual_seed(2),
                  x_T=x_T)
    # sample() draws the K - 1 step noises up front (after x_T) from its generator; the
    # step tau_i -> tau_{i-1} (i >= 2) uses draw i - 2. Replay them, feed diffusers the same.
    g = torch.Generator().manual_seed(2)
    draws = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(len(tau) - 2)]
    feed = iter(draws[::-1] + [torch.zeros(shape, dtype=torch.float64)])  # top step first
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor",
                        lambda shape, generator=None, device=None, dtype=None:
                        next(feed).to(dtype))
    scheduler.set_timesteps(timesteps=[t - 1 for t in reversed(tau[1:])])
    x = x_T.float()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = scheduler.step(unet(x, t).sample, t, x)
            x = out.prev_sample
    # the last step returns the decoder's mean x0_hat, diffusers' pred_original_sample
    # (diffusers also adds noise there when tau_1 > 1; ddpm-tools returns the mean)
    theirs = out.pred_original_sample.double()
    assert (theirs.abs() < 0.99 * (options.get("clip_sample_range", 1.0))).any()
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=2e-4)
    if tau[1] == 1:
        np.testing.assert_allclose(ours.numpy(), x.double().numpy(), atol=2e-4)


def test_denoiser_calls_the_unet_with_index_t_minus_1(tmp_path):
    unet = tiny_unet()
    cset = load_set(save(tmp_path, unet, DDPMScheduler(num_train_timesteps=T)))
    assert isinstance(cset, DiffusersSet) and cset.T == T and len(cset.manifest.members) == 1
    assert cset.manifest.data.shape == (1, 8, 8) and cset.manifest.data.levels == 256
    x = torch.randn(4, 1, 8, 8)
    t = np.array([1, 2, 25, T])
    raw = Denoiser(cset).raw(x.double(), t)
    with torch.no_grad():
        expected = unet(x, torch.as_tensor(t - 1)).sample
        shifted = unet(x, torch.as_tensor(t)).sample
    np.testing.assert_allclose(raw.numpy(), expected.double().numpy(), atol=1e-6)
    assert not np.allclose(raw.numpy(), shifted.double().numpy(), atol=1e-4)


def test_bin_only_folder_loads_through_weights_only_with_legacy_attention_names(tmp_path):
    unet = tiny_unet()
    save(tmp_path, unet, DDPMScheduler(num_train_timesteps=T))
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    legacy = {re.sub(r"\.to_q\.", ".query.", re.sub(r"\.to_out\.0\.", ".proj_attn.", k)): v
              for k, v in unet.state_dict().items()}
    assert any(".query." in k for k in legacy) and any(".proj_attn." in k for k in legacy)
    torch.save(legacy, tmp_path / "diffusion_pytorch_model.bin")
    cset = load_set(tmp_path)
    assert cset.manifest.members[0].weights == "diffusion_pytorch_model.bin"
    x, t = torch.randn(2, 1, 8, 8), np.array([3, 40])
    with torch.no_grad():
        expected = unet(x, torch.as_tensor(t - 1)).sample
    np.testing.assert_allclose(Denoiser(cset).raw(x.double(), t).numpy(),
                               expected.double().numpy(), atol=1e-6)


class Payload:
    """An object a pickle could run code through; weights_only must refuse it."""


def test_bin_with_pickled_objects_is_refused_not_unpickled(tmp_path):
    save(tmp_path, tiny_unet(), DDPMScheduler(num_train_timesteps=T))
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"conv_in.weight": Payload()}, tmp_path / "diffusion_pytorch_model.bin")
    cset = load_set(tmp_path)
    with pytest.raises(CheckpointError, match="never unpickles"):
        Denoiser(cset).raw(torch.zeros(1, 1, 8, 8), np.array([1]))


UNSUPPORTED = [
    ("scheduler", {"thresholding": True}, "thresholding = true is not supported"),
    ("scheduler", {"variance_type": "learned"}, "variance_type 'learned' is not supported"),
    ("scheduler", {"beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid' is not supported"),
    ("scheduler", {"prediction_type": "flow"}, "prediction_type 'flow' is not supported"),
    ("scheduler", {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr = true"),
    ("scheduler", {"_class_name": "EulerDiscreteScheduler"},
     "scheduler 'EulerDiscreteScheduler' is not supported"),
    ("scheduler", {"variance_type": "learned_range"}, "variance learned_range needs "
                                                      "out_channels = 2"),
    ("unet", {"num_class_embeds": 10}, "the UNet is class-conditional"),
    ("unet", {"time_embedding_type": "fourier"}, "time_embedding_type 'fourier'"),
]


@pytest.mark.parametrize("part,changes,message", UNSUPPORTED)
def test_unsupported_options_exit_2_with_a_sentence_naming_them(tmp_path, images, part,
                                                                changes, message):
    folder = save(tmp_path / "ckpt", tiny_unet(), DDPMScheduler(num_train_timesteps=T),
                  "pipeline")
    edit_json(folder / part / ("scheduler_config.json" if part == "scheduler" else
                               "config.json"), **changes)
    r = runner.invoke(app, ["cost-table", "--set", str(folder), "--data", images,
                            "--out", str(tmp_path / "c.safetensors")])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert message in text and "Traceback" not in text


def test_incomplete_or_missing_folders_say_what_is_missing(tmp_path):
    save(tmp_path / "a", tiny_unet(), DDPMScheduler(num_train_timesteps=T))
    (tmp_path / "a" / "scheduler_config.json").unlink()
    with pytest.raises(CheckpointError, match="scheduler_config.json is missing"):
        load_set(tmp_path / "a")
    with pytest.raises(CheckpointError, match="diffusers folder .* does not exist"):
        load_set(f"diffusers:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no ddpm_set.json"):  # not taken for diffusers
        load_set(tmp_path / "empty")


def test_cost_tables_are_cached_in_the_folder_or_per_user_by_weights_hash(tmp_path,
                                                                         monkeypatch):
    cset = load_set(save(tmp_path / "c", tiny_unet(), DDPMScheduler(num_train_timesteps=T)))
    settings = CostSettings(samples=8)
    assert cache_path(cset, "npz:x.npz", "train", settings).parent == \
        tmp_path / "c" / "ddpm_tools_costs"
    monkeypatch.setenv("DDPM_TOOLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("ddpm_tools.sets.diffusers_set.os.access", lambda path, mode: False)
    sha = cset.manifest.members[0].sha256
    assert cset.cache_dir == tmp_path / "cache" / "diffusers-costs" / sha[:16]


def test_export_schedule_forms_and_truncated_note(tmp_path):
    path = tmp_path / "s.json"
    write_schedule(path, Schedule(T=20, budget=3, timesteps=np.array([0, 2, 9, 20]),
                                  predicted_bpd=None, method="given"))
    r = runner.invoke(app, ["export-schedule", str(path), "--to", "diffusers"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1] == "timesteps = [19, 8, 1]"
    assert "set_timesteps(timesteps=timesteps)" in r.stdout
    r = runner.invoke(app, ["export-schedule", str(path), "--to", "improved-diffusion",
                            "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["timesteps"] == [1, 8, 19] and info["code"] == "use_timesteps = {1, 8, 19}"
    assert info["note"] is None
    write_schedule(path, Schedule(T=20, budget=2, timesteps=np.array([0, 3, 12]),
                                  predicted_bpd=None, method="given"))
    r = runner.invoke(app, ["export-schedule", str(path), "--to", "diffusers"])
    assert r.exit_code == 0 and "truncated prior" in r.stdout, r.output
    r = runner.invoke(app, ["export-schedule", str(path), "--to", "ddim"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_inspect_and_sample_dp_with_data_on_a_diffusers_folder(tmp_path, images):
    folder = save(tmp_path / "ckpt", tiny_unet(), DDPMScheduler(num_train_timesteps=T))
    r = runner.invoke(app, ["inspect", str(folder), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["T"] == T and len(info["members"]) == 1
    assert info["members"][0]["status"] == "ok" and info["members"][0]["parameters"] > 0
    r = runner.invoke(app, ["sample", "--set", str(folder), "--schedule", "dp:4", "--n", "3",
                            "--data", images, "--table-samples", "8",
                            "--out", str(tmp_path / "s.npz"), "--json"])
    assert r.exit_code == 0, r.output
    s = np.load(tmp_path / "s.npz")["samples"]
    assert s.shape == (3, 1, 8, 8) and s.dtype == np.uint8 and json.loads(r.stdout)["budget"] == 4
