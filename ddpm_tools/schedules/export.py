"""A schedule in the form another library takes: the 0-based timesteps (index t - 1) of
diffusers (descending, ``scheduler.set_timesteps(timesteps=...)``) or improved-diffusion
(the ``use_timesteps`` set of ``SpacedDiffusion``), as a line of Python to paste.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ddpm_tools.errors import BadInputError
from ddpm_tools.schedules.schedule_file import Schedule, read_schedule

TARGETS = ("diffusers", "improved-diffusion")


@dataclass(frozen=True, eq=False)
class ScheduleExport:
    """One schedule file exported for one library."""

    schedule: Schedule  # the schedule read
    to: str  # the library: one of TARGETS
    timesteps: list[int]  # the 0-based times in that library's order
    code: str  # a line of Python assigning them, ready to paste
    note: str | None  # what to do differently (a truncated start), or None


def export_schedule(path: str | os.PathLike[str], to: str) -> ScheduleExport:
    """Read the schedule file at ``path`` and convert it for the library ``to``."""
    s = read_schedule(path)
    if to == "diffusers":
        values = s.diffusers_timesteps
        code = f"timesteps = {values}"
    elif to == "improved-diffusion":
        values = s.improved_diffusion_use_timesteps
        code = "use_timesteps = {" + ", ".join(map(str, values)) + "}"
    else:
        raise BadInputError(f"cannot export a schedule to {to!r}; choose one of "
                            f"{', '.join(TARGETS)}")
    start = int(s.timesteps[-1])
    note = None if start == s.T else (
        f"the schedule starts at t = {start} < T = {s.T} (a truncated prior): start the "
        "loop from a sample of the auxiliary prior at that time, not from N(0, I)")
    return ScheduleExport(s, to, values, code, note)
