"""Checkpoint sets: the manifest, loading a set and its members, and the routing Denoiser."""

from ddpm_tools.sets.checkpoint_set import CheckpointSet
from ddpm_tools.sets.denoiser import Denoiser, DenoiserOutput
from ddpm_tools.sets.load import load_set
from ddpm_tools.sets.manifest import (
    DataInfo,
    Member,
    MemberState,
    SetManifest,
    read_manifest,
    update_manifest,
    write_manifest,
)

__all__ = [
    "CheckpointSet",
    "DataInfo",
    "Denoiser",
    "DenoiserOutput",
    "Member",
    "MemberState",
    "SetManifest",
    "load_set",
    "read_manifest",
    "update_manifest",
    "write_manifest",
]
