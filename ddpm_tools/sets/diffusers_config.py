"""Translating a diffusers ``scheduler_config.json`` and UNet ``config.json`` to ours.

What is taken from where (every other option we cannot honour is one sentence naming it):

* the noise schedule from ``scheduler_config.json`` (``DDPMScheduler``, or
  ``DDIMScheduler``, whose betas mean the same): ``beta_schedule`` linear, scaled_linear,
  squaredcos_cap_v2 or ``trained_betas``, built in float32 exactly as diffusers builds
  them, then held in float64 by :class:`NoiseSchedule`; ``num_train_timesteps`` is T;
* ``prediction_type`` epsilon / sample / v_prediction -> eps / x0 / v;
* ``variance_type`` fixed_small(_log) -> fixed_small, fixed_large(_log) -> fixed_large,
  learned_range -> learned_range. The ``_log`` forms name the same variances
  (``DDPMScheduler.step`` turns fixed_large_log into NaN noise: it takes the square root
  of log beta; we use the variance beta_{t|s} it stands for, GLIDE's max_log);
* ``clip_sample`` / ``clip_sample_range`` r: x0_hat is clipped to [-r, r] as in
  ``DDPMScheduler.step`` (no clipping without clip_sample);
* the data shape (in_channels, sample_size) from the UNet config, which must be an
  unconditional, discrete-time ``UNet2DModel`` with out_channels = in_channels
  (2 x in_channels for learned_range).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_tools.core.noise_schedule import NoiseSchedule, cosine_betas
from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.io.files import read_json

SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")  # configs whose betas we read
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
             "fixed_large": "fixed_large", "fixed_large_log": "fixed_large",
             "learned_range": "learned_range"}


@dataclass(frozen=True)
class SchedulerSettings:
    """What ddpm-tools takes from ``scheduler_config.json``."""

    schedule: NoiseSchedule  # betas of the forward process, t = 1..T
    prediction: str  # eps, x0 or v
    variance: str  # fixed_small, fixed_large or learned_range
    clip_range: float | None  # x0_hat clipped to [-r, r]; None without clip_sample


def _number(cfg: dict[str, Any], key: str, default: float, where: str) -> float:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CheckpointError(f"{where}: {key} = {v!r} is not a number")
    return float(v)


def diffusers_betas(cfg: dict[str, Any], T: int, where: str) -> np.ndarray:
    """beta_1..beta_T ``[T]`` float64, equal to ``DDPMScheduler(**cfg).betas`` (float32).

    diffusers' rules: linear = linspace(beta_start, beta_end, T); scaled_linear =
    linspace(sqrt(beta_start), sqrt(beta_end), T)^2; squaredcos_cap_v2 = the cosine
    schedule of Nichol & Dhariwal 2021, eq. (17), betas capped at 0.999;
    ``trained_betas`` as given. All computed in float32 as diffusers does.
    """
    trained = cfg.get("trained_betas")
    name = str(cfg.get("beta_schedule", "linear"))
    start = _number(cfg, "beta_start", 1e-4, where)
    end = _number(cfg, "beta_end", 0.02, where)
    if trained is not None:
        if not isinstance(trained, list) or len(trained) != T:
            n = len(trained) if isinstance(trained, list) else "no"
            raise CheckpointError(f"{where}: trained_betas has {n} entries, expected "
                                  f"num_train_timesteps = {T}")
        b = torch.tensor(trained, dtype=torch.float32)
    elif name == "linear":
        b = torch.linspace(start, end, T, dtype=torch.float32)
    elif name == "scaled_linear":
        b = torch.linspace(start**0.5, end**0.5, T, dtype=torch.float32) ** 2
    elif name == "squaredcos_cap_v2":  # diffusers' betas_for_alpha_bar is our cosine_betas
        b = torch.tensor(cosine_betas(T), dtype=torch.float32)
    else:
        raise CheckpointError(
            f"{where}: beta_schedule {name!r} is not supported; ddpm-tools reads linear, "
            "scaled_linear, squaredcos_cap_v2 or an explicit trained_betas list"
        )
    return b.numpy().astype(np.float64)


def read_scheduler_config(path: Path) -> SchedulerSettings:
    """Parse ``scheduler_config.json``; an option we do not support is one sentence naming it."""
    where = str(path)
    cfg = read_json(path, "diffusers scheduler config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where} is not a JSON object; it is not a scheduler config")
    cls = str(cfg.get("_class_name", "DDPMScheduler"))
    if cls not in SCHEDULERS:
        raise CheckpointError(f"{where}: scheduler {cls!r} is not supported; ddpm-tools reads "
                              f"the betas of {' or '.join(SCHEDULERS)} configs")
    for key in ("thresholding", "rescale_betas_zero_snr"):
        if cfg.get(key):
            why = ("ddpm-tools clips x0_hat to a fixed range; dynamic thresholding rescales "
                   "it per image" if key == "thresholding" else
                   "a zero terminal SNR makes alpha_bar_T = 0 and the prior KL infinite")
            raise CheckpointError(f"{where}: {key} = true is not supported ({why}); set it "
                                  "to false in a copy of the folder")
    T = cfg.get("num_train_timesteps", 1000)
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise CheckpointError(f"{where}: num_train_timesteps = {T!r} must be an integer >= 2")
    pt = str(cfg.get("prediction_type", "epsilon"))
    prediction = PREDICTIONS.get(pt)
    if prediction is None:
        raise CheckpointError(f"{where}: prediction_type {pt!r} is not supported; use "
                              "epsilon, sample or v_prediction")
    vt = str(cfg.get("variance_type") or "fixed_small")  # DDPMScheduler's default
    variance = VARIANCES.get(vt)
    if variance is None:
        raise CheckpointError(
            f"{where}: variance_type {vt!r} is not supported; ddpm-tools reads fixed_small, "
            "fixed_small_log, fixed_large, fixed_large_log and learned_range"
        )
    clip = None
    if cfg.get("clip_sample", True):
        clip = _number(cfg, "clip_sample_range", 1.0, where)
        if clip <= 0:
            raise CheckpointError(f"{where}: clip_sample_range = {clip} must be positive")
    try:
        betas = diffusers_betas(cfg, T, where)
        schedule = NoiseSchedule(np.concatenate([[0.0], betas]), name="explicit")
    except BadInputError as e:
        raise CheckpointError(f"{where}: bad noise schedule: {e}") from None
    return SchedulerSettings(schedule, prediction, variance, clip)


# ------------------------------------------------------------------ UNet config

def read_unet_config(path: Path, settings: SchedulerSettings
                     ) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """(the UNet2DModel config, data shape (C, H, W)); one sentence per unsupported option."""
    where = str(path)
    cfg = read_json(path, "diffusers UNet config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where} is not a JSON object; it is not a UNet config")
    cls = cfg.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise CheckpointError(f"{where}: the network is a {cls}, not a UNet2DModel; "
                              "ddpm-tools reads unconditional UNet2DModel checkpoints")
    if cfg.get("num_class_embeds") is not None or cfg.get("class_embed_type") is not None:
        raise CheckpointError(f"{where}: the UNet is class-conditional (num_class_embeds / "
                              "class_embed_type set); ddpm-tools scores unconditional models")
    if cfg.get("time_embedding_type", "positional") == "fourier":
        raise CheckpointError(f"{where}: time_embedding_type 'fourier' (a score-SDE model of "
                              "continuous noise levels) is not supported; ddpm-tools reads "
                              "discrete-time DDPMs")
    T = settings.schedule.T
    if cfg.get("num_train_timesteps") not in (None, T):
        raise CheckpointError(f"{where}: num_train_timesteps = {cfg['num_train_timesteps']} "
                              f"but the scheduler has {T}; the two configs must agree")
    size = cfg.get("sample_size")
    hw = [size, size] if isinstance(size, int) else size
    c_in, c_out = cfg.get("in_channels", 3), cfg.get("out_channels", 3)
    if not (isinstance(hw, list) and len(hw) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (*hw, c_in))):
        raise CheckpointError(f"{where}: sample_size {size!r} and in_channels {c_in!r} must "
                              "give the image size; set sample_size to the image side")
    factor = 2 if settings.variance == "learned_range" else 1
    if c_out != factor * c_in:
        raise CheckpointError(
            f"{where}: out_channels = {c_out} for in_channels = {c_in}, but variance "
            f"{settings.variance} needs out_channels = {factor * c_in}; check variance_type "
            "in the scheduler config"
        )
    return cfg, (c_in, int(hw[0]), int(hw[1]))
