"""Routing each (x_t, t) to the member of a checkpoint set that owns t.

:class:`Denoiser` is the one way the rest of the tool calls a trained set: given
x_t ``[B, ...]`` and integer t ``[B]`` (mixed t in one batch), it groups the rows
by owning member, runs each member once on its rows, and returns x0_hat (and the
variance interpolation v for learned_range). Members are loaded lazily and kept in
a bounded LRU cache, so a set of T = 1000 one-step members runs in bounded memory.
The members of a multidecoder set share one encoder module (one copy of its weights
per device), loaded once by the :class:`~ddpm_tools.sets.checkpoint_set.CheckpointSet`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_tools.core.diffusion import x0_from_prediction
from ddpm_tools.errors import CheckpointError
from ddpm_tools.models import split_output
from ddpm_tools.sets.calls import check_precision, module_dtype, network_precision
from ddpm_tools.sets.checkpoint_set import CheckpointSet

DEFAULT_MAX_LOADED = 16  # members kept in memory at once by a Denoiser


@dataclass(frozen=True)
class DenoiserOutput:
    """What a set predicts at (x_t, t)."""

    x0_hat: torch.Tensor  # [B, ...] in x_t's dtype; clipped to [-1, 1] for discrete data
    v: torch.Tensor | None  # [B, ...] variance interpolation (out + 1)/2; learned_range only


class Denoiser:
    """Route x_t to the member owning each row's t; predict x0_hat (and v).

    Args:
        cset: the checkpoint set.
        device: where networks run; inputs are moved there and outputs come back
            on the input's device and dtype.
        max_loaded: members kept in memory (LRU); older ones are dropped.
        precision: ``fp32`` (the networks' own dtype), ``bf16`` or ``fp16`` autocast
            (:mod:`ddpm_tools.sets.calls`).

    Calls run under :func:`torch.inference_mode`: no autograd state is kept.
    """

    def __init__(self, cset: CheckpointSet, device: torch.device | str = "cpu",
                 max_loaded: int = DEFAULT_MAX_LOADED, precision: str = "fp32"):
        self.cset = cset
        self.device = torch.device(device)
        self.precision = check_precision(precision)
        self.max_loaded = max(1, max_loaded)
        self._cache: OrderedDict[int, torch.nn.Module] = OrderedDict()
        self.loads = 0  # how many member loads happened (for tests and diagnostics)

    def member(self, index: int) -> torch.nn.Module:
        """The loaded network of member ``index`` (LRU-cached)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        net = self.cset.load_member(index, self.device)
        self.loads += 1
        self._cache[index] = net
        while len(self._cache) > self.max_loaded:
            self._cache.popitem(last=False)
        return net

    @torch.inference_mode()
    def raw(self, x_t: torch.Tensor, t: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The networks' raw outputs ``[B, F*C, ...]`` for rows routed by ``t`` ``[B]``."""
        ta = np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t, dtype=np.int64)
        if ta.shape != (x_t.shape[0],):
            raise CheckpointError(f"t has shape {ta.shape}, expected ({x_t.shape[0]},)")
        self.cset.schedule.check_t(ta)
        owners = self.cset.owner[ta]
        x_dev = x_t.to(self.device)
        t_dev = torch.as_tensor(ta, device=self.device)
        out: torch.Tensor | None = None
        for idx in np.unique(owners):
            rows = np.flatnonzero(owners == idx)
            r = torch.as_tensor(rows, device=self.device)
            net = self.member(int(idx))
            with network_precision(self.device, self.precision):
                y = net(x_dev[r].to(module_dtype(net)), t_dev[r])
            if out is None:
                out = torch.empty((x_t.shape[0],) + tuple(y.shape[1:]), device=self.device,
                                  dtype=y.dtype)
            out[r] = y
        assert out is not None
        return out.to(x_t.device, x_t.dtype)

    @torch.inference_mode()
    def __call__(self, x_t: torch.Tensor, t: np.ndarray | torch.Tensor) -> DenoiserOutput:
        """x0_hat ``[B, ...]`` (and v) in x_t's dtype for integer times ``t`` ``[B]``."""
        ta = np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t, dtype=np.int64)
        out = self.raw(x_t, ta)
        man = self.cset.manifest
        pred, raw_var = split_output(out, x_t.shape[1], man.variance)
        v = None if raw_var is None else (raw_var + 1) / 2  # Nichol & Dhariwal 2021, eq. (15)
        x0_hat = x0_from_prediction(man.schedule, man.prediction, x_t, ta, pred)
        r = self.cset.clip_range
        if r is not None:
            x0_hat = x0_hat.clamp(-r, r)
        return DenoiserOutput(x0_hat=x0_hat, v=v)
