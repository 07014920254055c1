"""The schedule file: one K-step schedule as JSON, with its forms for other libraries.

Format (docs/DESIGN.md, "Schedule")::

    {"T": 1000, "budget": 4, "timesteps": [0, 112, 403, 761, 1000],
     "predicted_bpd": 1.23, "method": "dp", "source": {"costs": "costs.safetensors", ...},
     "diffusers_timesteps": [999, 760, 402, 111],
     "improved_diffusion_use_timesteps": [111, 402, 760, 999]}

``timesteps`` are ddpm-tools times (0 is the data, the network is called at tau_1..tau_K).
The two export forms count from 0 (index t - 1):

* ``diffusers_timesteps``: descending, for ``DDPMScheduler.set_timesteps(timesteps=...)``;
* ``improved_diffusion_use_timesteps``: the sorted set for improved-diffusion's
  ``space_timesteps`` / ``SpacedDiffusion(use_timesteps=...)``.

They are derived from ``timesteps`` on writing and checked against them on reading.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ddpm_tools.core.noise_schedule import MAX_T
from ddpm_tools.core.strides import check_timesteps
from ddpm_tools.errors import BadInputError, DdpmToolsError
from ddpm_tools.io.files import atomic_write_text, read_json

Method = Literal["dp", "even", "quadratic", "given"]
METHODS: tuple[str, ...] = ("dp", "even", "quadratic", "given")
SourceValue = str | int | float


@dataclass(frozen=True, eq=False)
class Schedule:
    """A K-step schedule 0 = tau_0 < ... < tau_K (tau_K = T, or < T with a truncated prior)."""

    T: int  # diffusion steps of the model the schedule is for
    budget: int  # K, the number of steps (network calls); len(timesteps) - 1
    timesteps: np.ndarray  # [K+1] int64, 0 = tau_0 < ... < tau_K <= T
    predicted_bpd: float | None  # bits/dim the cost table predicts; None if unknown
    method: Method  # "dp" (the DP), "even"/"quadratic" (strides), "given" (by the user)
    source: dict[str, SourceValue] = field(default_factory=dict)  # provenance (table, set)

    def __post_init__(self) -> None:
        if not isinstance(self.T, (int, np.integer)) or isinstance(self.T, bool) or self.T < 1:
            raise BadInputError(f"schedule T must be an integer >= 1 (got {self.T!r})")
        object.__setattr__(self, "T", int(self.T))
        tau = check_timesteps(self.timesteps, self.T, truncated_ok=True)
        object.__setattr__(self, "timesteps", tau)
        if self.budget != tau.size - 1:
            raise BadInputError(
                f"schedule budget {self.budget!r} does not match its {tau.size - 1} steps "
                f"(timesteps {_short(tau)}); budget must be len(timesteps) - 1"
            )
        object.__setattr__(self, "budget", int(self.budget))
        if self.method not in METHODS:
            raise BadInputError(
                f"schedule method {self.method!r} is not one of {', '.join(METHODS)}"
            )
        p = self.predicted_bpd
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p)
        ):
            raise BadInputError(
                f"schedule predicted_bpd must be a finite number or null (got {p!r})"
            )
        for key, value in self.source.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(
                value, (str, int, float)
            ):
                raise BadInputError(
                    f"schedule source entry {key!r}: {value!r} is not a string or number; "
                    "source holds only strings and numbers"
                )

    @property
    def variance(self) -> str | None:
        """The reverse variance the schedule was optimized for (``source.variance``:
        fixed_small, fixed_large, learned_range, analytic or mse), None if not recorded."""
        v = self.source.get("variance")
        return v if isinstance(v, str) else None

    @property
    def diffusers_timesteps(self) -> list[int]:
        """0-based, descending: ``DDPMScheduler.set_timesteps(timesteps=...)``."""
        return [int(t) - 1 for t in self.timesteps[:0:-1]]

    @property
    def improved_diffusion_use_timesteps(self) -> list[int]:
        """0-based, ascending: improved-diffusion's ``use_timesteps`` set."""
        return [int(t) - 1 for t in self.timesteps[1:]]


def schedule_to_dict(s: Schedule) -> dict[str, Any]:
    """The JSON object of a schedule file, export forms included."""
    return {
        "T": s.T,
        "budget": s.budget,
        "timesteps": [int(t) for t in s.timesteps],
        "predicted_bpd": s.predicted_bpd,
        "method": s.method,
        "source": dict(s.source),
        "diffusers_timesteps": s.diffusers_timesteps,
        "improved_diffusion_use_timesteps": s.improved_diffusion_use_timesteps,
    }


def write_schedule(path: str | os.PathLike[str], s: Schedule) -> None:
    """Write a schedule file atomically: JSON, one key per line, each list on one line."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in schedule_to_dict(s).items()]
    body = ",\n".join(lines)
    atomic_write_text(path, "{\n" + body + "\n}\n")


def read_schedule(path: str | os.PathLike[str]) -> Schedule:
    """Read and validate a schedule file; every problem is one BadInputError naming it."""
    where = f"schedule file {path}"
    obj = read_json(path, "schedule file")
    if not isinstance(obj, dict):
        raise BadInputError(f"{where} holds a {type(obj).__name__}, not a JSON object")
    missing = [k for k in ("T", "budget", "timesteps", "method") if k not in obj]
    if missing:
        raise BadInputError(
            f"{where} lacks {', '.join(missing)}; a schedule file needs T, budget, timesteps "
            "and method"
        )
    tau = obj["timesteps"]
    if not isinstance(tau, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and abs(t) <= MAX_T for t in tau
    ):
        raise BadInputError(f"{where}: timesteps must be a list of integers in [0, {MAX_T}]")
    source = obj.get("source", {})
    if not isinstance(source, dict):
        raise BadInputError(f"{where}: source must be a JSON object")
    try:
        s = Schedule(
            T=obj["T"], budget=obj["budget"], timesteps=np.asarray(tau, dtype=np.int64),
            predicted_bpd=obj.get("predicted_bpd"), method=obj["method"], source=source,
        )
    except DdpmToolsError as e:
        raise BadInputError(f"{where}: {e}") from None
    for key in ("diffusers_timesteps", "improved_diffusion_use_timesteps"):
        if key in obj and obj[key] != getattr(s, key):
            raise BadInputError(
                f"{where}: {key} {_short(obj[key])} disagrees with timesteps "
                f"{_short(tau)}; fix timesteps and delete {key} (it is derived)"
            )
    return s


def _short(xs: Any, n: int = 8) -> str:
    """A list for messages, cut after ``n`` items."""
    xs = [int(x) if isinstance(x, (int, np.integer)) else x for x in list(xs)]
    return str(xs) if len(xs) <= n else f"[{', '.join(map(str, xs[:n]))}, ...]"
