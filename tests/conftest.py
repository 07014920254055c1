"""Shared fixtures: tiny trained sets made by the tests themselves (nothing downloaded)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("DDPM_TOOLS_CACHE", tempfile.mkdtemp(prefix="ddpm-tools-test-cache-"))


def make_trained_set(out: Path, *, data: str = "8gaussians", intervals: int = 2, T: int = 20,
                     steps: int = 30, variance: str = "fixed_small", prediction: str = "eps",
                     schedule: str = "cosine", seed: int = 0, batch_size: int = 64,
                     arch_config=None):
    """Create and train a small set in-process; returns its path."""
    from ddpm_tools.data import load_data
    from ddpm_tools.training.config import TrainConfig
    from ddpm_tools.training.create import SetSpec, build_manifest, create_set
    from ddpm_tools.training.parallel import train_set

    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=2e-3, ema=0.9,
                      checkpoint_every=max(1, steps // 2), seed=seed)
    spec = SetSpec(intervals=intervals, T=T, schedule=schedule, variance=variance,
                   prediction=prediction)
    split = load_data(data, "train", seed=seed)
    create_set(out, build_manifest(spec, split, cfg, arch_config=arch_config))
    train_set(out, workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_set_2d(tmp_path_factory):
    """A trained 2-member set on 8gaussians, T = 20 (fixed_small, eps)."""
    from ddpm_tools.models import MLPConfig

    return make_trained_set(tmp_path_factory.mktemp("sets") / "g8", steps=150,
                            arch_config=MLPConfig(hidden=64, depth=2, time_dim=16))


@pytest.fixture(scope="session")
def tiny_set_digits(tmp_path_factory):
    """A trained 2-member learned_range set on digits, T = 24."""
    from ddpm_tools.models import UNetConfig

    return make_trained_set(tmp_path_factory.mktemp("sets") / "digits", data="digits",
                            T=24, steps=40, variance="learned_range", batch_size=32,
                            arch_config=UNetConfig(base_channels=16, channel_mult=(1, 2),
                                                   num_res_blocks=1,
                                                   attention_resolutions=()))


def pytest_configure(config):
    """Tiny test networks gain nothing from intra-op threads; one thread avoids contention."""
    import torch

    torch.set_num_threads(1)
