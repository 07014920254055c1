"""Tests of ddpm_tools.models: shapes, time conditioning, configs and their JSON form."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.models import (
    MLPConfig,
    UNetConfig,
    arch_name,
    build_network,
    config_from_dict,
    config_to_dict,
    count_parameters,
    default_config,
    split_output,
)
from ddpm_tools.models.embedding import timestep_embedding
from ddpm_tools.models.unet import norm_groups

CASES = [
    (MLPConfig(), (2,)),
    (MLPConfig(hidden=16, depth=1, time_dim=7), (5,)),
    (UNetConfig(), (1, 8, 8)),
    # the default structures for 28x28 and 32x32 (test_default_config), narrower for speed
    (UNetConfig(base_channels=8, channel_mult=(1, 2, 2), attention_resolutions=(7,)),
     (1, 28, 28)),
    (UNetConfig(base_channels=8, channel_mult=(1, 2, 2), attention_resolutions=(8,)),
     (3, 32, 32)),
    (UNetConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=2,
                attention_resolutions=(), dropout=0.1), (1, 8, 8)),
    (UNetConfig(base_channels=12, channel_mult=(1, 2), attention_resolutions=(8, 4)), (2, 8, 8)),
    (UNetConfig(base_channels=8, channel_mult=(1, 2)), (1, 8, 12)),
]


def _randomize(net: nn.Module) -> None:
    """Give the zero-initialised layers random weights, so the output depends on inputs."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("out_factor", [1, 2])
@pytest.mark.parametrize(("config", "shape"), CASES)
def test_output_shape(config, shape, out_factor):
    net = build_network(config, shape, out_factor)
    x = torch.randn(3, *shape)
    out = net(x, torch.tensor([1, 7, 1000]))
    assert out.shape == (3, out_factor * shape[0], *shape[1:])
    assert out.dtype == torch.float32
    assert torch.all(out == 0)  # zero-initialised output layer: an untrained net predicts 0
    _randomize(net)
    out = net(x, torch.tensor([1, 7, 1000]))
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize(("config", "shape"), [CASES[0], CASES[2]])
def test_network_depends_on_t(config, shape):
    net = build_network(config, shape, 1).eval()
    _randomize(net)
    x = torch.randn(1, *shape).expand(3, *shape)
    out = net(x, torch.tensor([5, 6, 900]))
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert (out[0] - out[2]).abs().max() > 1e-4


def test_time_embedding_distinct_for_distinct_t():
    t = torch.arange(1, 1001)
    emb = timestep_embedding(t, 64)
    assert emb.shape == (1000, 64)
    assert emb.abs().max() <= 1.0
    d = torch.cdist(emb, emb) + torch.eye(1000) * 1e9
    assert d.min() > 0.1
    # cosines first, frequency 1 at index 0 (improved-diffusion's form)
    assert torch.allclose(emb[:, 0], torch.cos(t.float()))
    assert torch.allclose(emb[:, 32], torch.sin(t.float()))
    odd = timestep_embedding(t[:3], 7)
    assert odd.shape == (3, 7) and torch.all(odd[:, -1] == 0)


def test_default_config():
    assert default_config("mlp", (2,)) == MLPConfig()
    assert default_config("auto", (2,)) == MLPConfig()
    assert default_config("auto", (1, 8, 8)) == UNetConfig(channel_mult=(1, 2),
                                                           attention_resolutions=(4,))
    assert default_config("unet", (1, 28, 28)) == UNetConfig(channel_mult=(1, 2, 2),
                                                             attention_resolutions=(7,))
    assert default_config("unet", (3, 32, 32)) == UNetConfig(channel_mult=(1, 2, 2),
                                                             attention_resolutions=(8,))
    assert default_config("unet", (1, 7, 7)).channel_mult == (1,)
    assert default_config("unet", (3, 128, 128)).attention_resolutions == ()
    with pytest.raises(BadInputError, match="unknown architecture"):
        default_config("resnet", (2,))
    with pytest.raises(BadInputError, match="images"):
        default_config("unet", (2,))


def test_wrong_data_shapes_are_bad_input():
    with pytest.raises(BadInputError, match="divisible by 8"):
        build_network(UNetConfig(channel_mult=(1, 2, 2, 2)), (1, 28, 28), 1)
    flat = build_network(MLPConfig(hidden=16, depth=1), (1, 8, 8), 2)  # images flattened
    assert flat(torch.zeros(3, 1, 8, 8), torch.tensor([1, 2, 3])).shape == (3, 2, 8, 8)
    with pytest.raises(BadInputError, match="use the mlp"):
        build_network(UNetConfig(), (2,), 1)
    with pytest.raises(BadInputError, match="out_factor"):
        build_network(MLPConfig(), (2,), 3)
    net = build_network(MLPConfig(), (2,), 1)
    with pytest.raises(BadInputError, match="built for inputs"):
        net(torch.randn(4, 3), torch.ones(4, dtype=torch.int64))
    with pytest.raises(BadInputError, match="integer tensor"):
        net(torch.randn(4, 2), torch.ones(4))
    with pytest.raises(BadInputError, match="integer tensor"):
        net(torch.randn(4, 2), torch.ones(3, dtype=torch.int64))


@pytest.mark.parametrize("config", [MLPConfig(), MLPConfig(hidden=7, depth=1, time_dim=3),
                                    UNetConfig(), UNetConfig(channel_mult=(1, 2, 4),
                                                             attention_resolutions=(),
                                                             dropout=0.25)])
def test_json_round_trip(config):
    d = json.loads(json.dumps(config_to_dict(config)))
    back = config_from_dict(arch_name(config), d)
    assert back == config and type(back) is type(config)
    if isinstance(back, UNetConfig):
        assert isinstance(back.channel_mult, tuple)
        assert isinstance(back.attention_resolutions, tuple)
    assert config_from_dict(arch_name(config), {}) == type(config)()  # missing -> default


@pytest.mark.parametrize(("name", "d"), [
    ("resnet", {}),
    ("mlp", {"width": 3}),
    ("mlp", {"hidden": "128"}),
    ("mlp", {"hidden": 12.5}),
    ("mlp", {"depth": True}),
    ("mlp", {"hidden": 0}),
    ("mlp", [1, 2]),
    ("unet", {"channel_mult": 2}),
    ("unet", {"channel_mult": []}),
    ("unet", {"channel_mult": ["1"]}),
    ("unet", {"attention_resolutions": [4.0]}),
    ("unet", {"dropout": "0.1"}),
    ("unet", {"dropout": 1.5}),
])
def test_bad_config_is_checkpoint_error(name, d):
    with pytest.raises(CheckpointError) as info:
        config_from_dict(name, d)
    assert "\n" not in str(info.value)


def test_config_validation_and_lists():
    c = UNetConfig(channel_mult=[1, 2], attention_resolutions=[4])  # type: ignore[arg-type]
    assert c.channel_mult == (1, 2) and hash(c) == hash(UNetConfig())
    assert UNetConfig(dropout=0).dropout == 0.0
    with pytest.raises(BadInputError, match="depth"):
        MLPConfig(depth=0)


def test_count_parameters():
    assert count_parameters(nn.Linear(3, 4)) == 16
    net = build_network(MLPConfig(hidden=8, depth=2, time_dim=4), (2,), 2)
    # time MLP (4*8+8 + 8*8+8) + layers (2*8+8 + 8*8+8) + time projections 2*(8*8+8) + head
    assert count_parameters(net) == (40 + 72) + (24 + 72) + 2 * 72 + (8 * 4 + 4)


def test_split_output():
    out = torch.randn(2, 6, 4, 4)
    pred, raw = split_output(out, 3, "learned_range")
    assert raw is not None and torch.equal(pred, out[:, :3]) and torch.equal(raw, out[:, 3:])
    pred, raw = split_output(out, 6, "fixed_small")
    assert raw is None and pred is out
    with pytest.raises(BadInputError, match="out_factor=2"):
        split_output(out, 6, "learned_range")


@pytest.mark.parametrize("channels", [1, 3, 12, 32, 36, 96, 160])
def test_norm_groups_divide(channels):
    g = norm_groups(channels)
    assert channels % g == 0 and 1 <= g <= 8
