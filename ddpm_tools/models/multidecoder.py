"""Multi-decoder networks: one shared encoder with the time embedding, one decoder per stage.

Zhang et al. 2024 ("Improving Efficiency of Diffusion Models via Multi-Stage Framework
and Tailored Multi-Decoder Architectures", CVPR 2024, Sec. 4.2) cut [1, T] into stages
and train one network whose encoder (with the time embedding) is shared by all stages
while each stage has a decoder of its own. In a checkpoint set, member k is stage k: its
network is the shared encoder followed by decoder k (:class:`StageNet`), called as
``net(x, t)`` like every other network, and the set stores the encoder once.

Zhang et al. split a U-Net into its encoder and decoder halves. Here both halves are
MLPs over the flattened input (images ``[C, H, W]`` or vectors ``[D]``), built like
:class:`~ddpm_tools.models.mlp.MLPNet`: on a CPU a U-Net is far too slow for the sets
this tool trains, and what the architecture tests -- a shared part trained on every
stage and a per-stage part -- does not depend on the layer type. There are no skip
connections (an MLP has no resolutions to skip across).

    encoder: emb = TimeEmbedding(t); h_0 = flatten(x); h_l = SiLU(W_l h_{l-1} + P_l(emb))
    decoder k: g_0 = h; g_l = SiLU(V_l g_{l-1} + Q_l(emb)); out = head(g) (zero-initialised)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ddpm_tools.errors import BadInputError
from ddpm_tools.models.embedding import TimeEmbedding, check_input


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _TimeMLP(nn.Module):
    """``depth`` layers h <- SiLU(W h + P(emb)) from ``d_in`` to ``width`` units."""

    def __init__(self, d_in: int, width: int, depth: int, emb_dim: int) -> None:
        super().__init__()
        widths = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.time_proj = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, width)) for _ in range(depth))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer, proj in zip(self.layers, self.time_proj, strict=True):
            h = nn.functional.silu(layer(h) + proj(emb))
        return h


class SharedEncoder(nn.Module):
    """(x ``[B, *data_shape]``, t ``[B]``) -> (features ``[B, hidden]``, emb ``[B, hidden]``)."""

    def __init__(self, data_shape: tuple[int, ...], hidden: int, depth: int, time_dim: int
                 ) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.hidden = hidden
        self.time = TimeEmbedding(time_dim, hidden)
        self.mlp = _TimeMLP(_prod(self.data_shape), hidden, depth, hidden)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, t, self.data_shape)
        emb = self.time(t.to(x.device))
        return self.mlp(x.reshape(x.shape[0], -1), emb), emb


class StageDecoder(nn.Module):
    """(features ``[B, hidden]``, emb ``[B, hidden]``) -> ``[B, out_factor*C, ...]``
    (vectors ``[B, out_factor*D]``); starts at zero like MLPNet's output layer."""

    def __init__(self, data_shape: tuple[int, ...], out_factor: int, hidden: int, width: int,
                 depth: int) -> None:
        super().__init__()
        self.out_shape = (out_factor * data_shape[0],) + tuple(data_shape[1:])
        self.mlp = _TimeMLP(hidden, width, depth, hidden)
        self.head = nn.Linear(width, out_factor * _prod(tuple(data_shape)))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(h, emb)).reshape((h.shape[0],) + self.out_shape)


class StageNet(nn.Module):
    """One member of a multidecoder set: the shared encoder, then this stage's decoder.

    forward(x: ``[B, *data_shape]`` float32, t: ``[B]`` int64 in [1, T]) -> as MLPNet.
    The ``encoder`` module may be the same object in several StageNets (shared weights).
    """

    def __init__(self, encoder: SharedEncoder, decoder: StageDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.decoder(*self.encoder(x, t))


class MultiDecoderNet(nn.Module):
    """The whole network trained jointly: the encoder and every stage's decoder.

    ``t_hi``: the last time of each stage, increasing (stage k owns
    ``t_hi[k-1] + 1 .. t_hi[k]``). forward(x ``[B, ...]``, t ``[B]``) runs the encoder once
    and each row through the decoder of the stage owning its t. State-dict keys:
    ``encoder.*`` and ``decoders.<k>.*``.
    """

    def __init__(self, encoder: SharedEncoder, decoders: Sequence[StageDecoder],
                 t_hi: Sequence[int]) -> None:
        super().__init__()
        ends = [int(v) for v in t_hi]
        if len(decoders) != len(ends) or any(b <= a for a, b in zip(ends, ends[1:],
                                                                       strict=False)):
            raise BadInputError(f"a multidecoder needs one decoder per stage and increasing "
                                f"stage ends (got {len(decoders)} decoders, ends {list(t_hi)})")
        self.encoder = encoder
        self.decoders = nn.ModuleList(decoders)
        self.t_hi = ends

    def stage(self, k: int) -> StageNet:
        """Member k's network, sharing this network's modules (and weights)."""
        return StageNet(self.encoder, self.decoders[k])  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, emb = self.encoder(x, t)
        stage = torch.bucketize(t.to(h.device), torch.tensor(self.t_hi, device=h.device))
        if int(stage.max()) >= len(self.decoders) or int(t.min()) < 1:
            raise BadInputError(f"t must lie in [1, {self.t_hi[-1]}] (got {int(t.min())}.."
                                f"{int(t.max())})")
        ks = torch.unique(stage).tolist()
        if len(ks) == 1:  # a training batch: every row from one stage
            return self.decoders[ks[0]](h, emb)  # type: ignore[no-any-return]
        parts = [(stage == k).nonzero().squeeze(1) for k in ks]
        outs = [self.decoders[k](h[r], emb[r]) for k, r in zip(ks, parts, strict=True)]
        out = outs[0].new_empty((x.shape[0],) + tuple(outs[0].shape[1:]))
        for r, o in zip(parts, outs, strict=True):
            out[r] = o
        return out
