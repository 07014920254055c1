"""Checkpoint sets: the manifest, partitions of [1, T], and the routing Denoiser."""

from ddpm_tools.sets.denoiser import CheckpointSet, Denoiser, DenoiserOutput, load_set
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
