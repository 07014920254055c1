"""Device selection: ``auto`` picks CUDA when available, else the CPU."""

from __future__ import annotations

import torch

from ddpm_tools.errors import BadInputError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> a usable torch.device, or a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BadInputError(
            f"unknown device {name!r}; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(
            f"device {name!r} was requested but this machine has no usable CUDA GPU; "
            "use --device cpu or --device auto"
        )
    if dev.type not in ("cpu", "cuda"):
        raise BadInputError(f"device type {dev.type!r} is not supported; use cpu or cuda")
    return dev
