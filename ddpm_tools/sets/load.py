"""Reading a checkpoint set from a folder: a ddpm-tools set (``ddpm_set.json``) or a
diffusers folder read as a one-member set (:mod:`ddpm_tools.sets.diffusers_set`)."""

from __future__ import annotations

import os

from ddpm_tools.sets.checkpoint_set import CheckpointSet
from ddpm_tools.sets.diffusers_set import find_diffusers_folder, load_diffusers_set
from ddpm_tools.sets.manifest import read_manifest


def load_set(path: str | os.PathLike[str], require_trained: bool = True) -> CheckpointSet:
    """Read and validate a checkpoint set; by default every member must be trained.

    A diffusers folder (``diffusers:PATH``, or a folder without ``ddpm_set.json`` in a
    diffusers layout) is read as a one-member set: :mod:`ddpm_tools.sets.diffusers_set`.
    """
    folder = find_diffusers_folder(path)
    if folder is not None:
        return load_diffusers_set(folder)
    cset = CheckpointSet(path, read_manifest(path))
    if require_trained:
        cset.check_trained()
    return cset
