"""Training settings of a checkpoint set, saved in its manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ddpm_tools.core.limits import MAX_SEED
from ddpm_tools.errors import BadInputError


@dataclass(frozen=True)
class TrainConfig:
    """How every member of a set is trained (stored in ``ddpm_set.json``)."""

    steps: int = 5000  # optimizer steps per member
    batch_size: int = 128  # examples per step
    lr: float = 2e-4  # Adam learning rate
    ema: float = 0.999  # EMA decay of the saved weights; 0 saves the raw weights
    checkpoint_every: int = 500  # steps between resumable checkpoints
    seed: int = 0  # base seed; member i uses an independent stream derived from (seed, i)
    vlb_weight: float = 0.001  # lambda of the hybrid loss (learned_range only)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, "--steps must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (0 <= self.ema < 1, "--ema must be in [0, 1)"),
            (self.checkpoint_every >= 1, "--checkpoint-every must be at least 1"),
            (self.vlb_weight >= 0, "the vlb weight must be non-negative"),
            (self.grad_clip >= 0, "the gradient clip must be non-negative"),
            (0 <= self.seed <= MAX_SEED, f"--seed {self.seed} is out of range; pass an "
                                         f"integer from 0 to {MAX_SEED} (2**63 - 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise BadInputError(msg)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
