"""The documented upper bounds on what the tool accepts (README, "Limits").

Inputs beyond them would overflow a random generator, exhaust memory or run for hours
with no output, so they are refused at once with one sentence:

- ``MAX_T`` (100,000): diffusion steps of a set, a schedule or a cost table; ``--intervals``
  is at most T, hence at most ``MAX_T`` too.
- ``MAX_SEED`` (2**63 - 1): every ``--seed`` is an integer in [0, MAX_SEED].
- samples of one ``sample`` run must fit in this machine's memory
  (:func:`ddpm_tools.sampling.sample_file.check_fits`).
"""

from __future__ import annotations

from ddpm_tools.core.noise_schedule import MAX_T
from ddpm_tools.errors import BadInputError

MAX_SEED = 2**63 - 1  # the largest --seed: every generator (torch, numpy) takes it
SEED_MODULUS = 2**64  # derived seeds (seed * stride + stream) are reduced modulo this

__all__ = ["MAX_SEED", "MAX_T", "SEED_MODULUS", "check_seed", "derived_seed"]


def check_seed(seed: int, option: str = "--seed") -> int:
    """``seed`` if it is an integer in [0, MAX_SEED], else one sentence."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise BadInputError(f"{option} {seed} is out of range; pass an integer from 0 to "
                            f"{MAX_SEED} (2**63 - 1)")
    return seed


def derived_seed(seed: int, stride: int, stream: int) -> int:
    """``(seed * stride + stream) mod 2**64``: a per-stream seed every generator accepts
    (unchanged for the seeds below 2**64 / stride that fit without reduction)."""
    return (seed * stride + stream) % SEED_MODULUS
