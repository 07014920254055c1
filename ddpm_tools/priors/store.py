"""Auxiliary priors on disk: ``<set>/priors/priors.json`` and one safetensors file each.

The set's ``ddpm_set.json`` is not touched. ``priors.json``::

    {"format": "ddpm-tools/aux-priors", "version": 1,
     "schedule_sha256": "...",            # the betas the priors were fitted for
     "data_shape": [2],
     "priors": [{"t": 200, "kind": "gmm", "file": "prior_t200_<sha12>.safetensors",
                 "sha256": "...", "config": {...}, "info": {...}}, ...]}

A fit writes its weights under a new name first, then swaps the index entry under a
lock (several ``train-prior`` runs may share a set), then deletes the file it replaced;
every write is atomic, so a crash leaves the old prior or the new one. Loading checks
the schedule, the data shape and each file's sha256. A diffusers folder (no
``ddpm_set.json``) keeps its priors next to its cached cost tables instead.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ddpm_tools.core.noise_schedule import NoiseSchedule
from ddpm_tools.errors import CheckpointError
from ddpm_tools.io.files import (
    atomic_write_bytes,
    atomic_write_json,
    canonical_safetensors,
    read_json,
    sha256_file,
)
from ddpm_tools.priors.model import KINDS, AuxPrior, PriorInfo, build_density, config_from_json
from ddpm_tools.sets.checkpoint_set import CheckpointSet
from ddpm_tools.sets.manifest import MANIFEST_NAME, manifest_lock

PRIORS_SUBDIR = "priors"
INDEX_NAME = "priors.json"
FORMAT = "ddpm-tools/aux-priors"
FORMAT_VERSION = 1


def priors_dir(cset: CheckpointSet) -> Path:
    """``<set>/priors``; for a diffusers folder ``<its cost cache>/priors``."""
    if (cset.path / MANIFEST_NAME).exists():
        return cset.path / PRIORS_SUBDIR
    return cset.cache_dir / PRIORS_SUBDIR


def schedule_sha256(schedule: NoiseSchedule) -> str:
    """sha256 of the float64 betas: priors model q(x_t), which depends on them alone."""
    return hashlib.sha256(np.ascontiguousarray(schedule.betas, dtype=np.float64).tobytes()
                          ).hexdigest()


@dataclass(frozen=True)
class PriorEntry:
    """One prior as listed in ``priors.json``."""

    t: int  # diffusion time modelled
    kind: str  # "gmm" or "flow"
    file: str  # safetensors file name inside the priors folder
    sha256: str  # sha256 of that file
    config: dict[str, Any]  # GMMConfig / FlowConfig fields (JSON)
    info: dict[str, Any]  # PriorInfo fields (JSON)


def read_index(cset: CheckpointSet) -> list[PriorEntry]:
    """The entries of the set's ``priors.json`` sorted by t; [] if the set has none.

    Raises CheckpointError (one sentence naming the file) for a malformed index, one
    fitted for another noise schedule or data shape, or t outside [1, T - 1].
    """
    path = priors_dir(cset) / INDEX_NAME
    if not path.exists():
        return []
    obj = read_json(path, "auxiliary-prior index")
    where = str(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT \
            or obj.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{where} is not a version-{FORMAT_VERSION} auxiliary-prior "
                              "index; delete the priors folder and run train-prior again")
    if obj.get("schedule_sha256") != schedule_sha256(cset.schedule):
        raise CheckpointError(f"{where}: the priors were fitted for another noise schedule "
                              "than this set's; delete the priors folder and run train-prior")
    if list(obj.get("data_shape") or []) != list(cset.manifest.data.shape):
        raise CheckpointError(f"{where}: the priors model data of shape {obj.get('data_shape')}"
                              f", the set's data has shape {list(cset.manifest.data.shape)}; "
                              "delete the priors folder and run train-prior")
    entries = []
    for i, e in enumerate(obj.get("priors") or []):
        try:
            entry = PriorEntry(**e)
        except TypeError:
            raise CheckpointError(f"{where}: entry {i} is incomplete; delete it and run "
                                  "train-prior again") from None
        ok = (isinstance(entry.t, int) and 1 <= entry.t < cset.T and entry.kind in KINDS
              and isinstance(entry.file, str) and Path(entry.file).name == entry.file
              and isinstance(entry.sha256, str))
        if not ok:
            raise CheckpointError(f"{where}: entry {i} (t = {entry.t!r}, kind {entry.kind!r}) "
                                  f"is invalid (need 1 <= t < T = {cset.T}, kind gmm or flow, "
                                  "a plain file name); delete it and run train-prior again")
        entries.append(entry)
    if len({e.t for e in entries}) != len(entries):
        raise CheckpointError(f"{where} lists a time t twice; delete the priors folder and run "
                              "train-prior again")
    return sorted(entries, key=lambda e: e.t)


def prior_fingerprint(cset: CheckpointSet) -> list[list[Any]]:
    """[[t, kind, sha256], ...] of the set's priors (what a cost table's prior depends on)."""
    return [[e.t, e.kind, e.sha256] for e in read_index(cset)]


def save_prior(cset: CheckpointSet, prior: AuxPrior) -> Path:
    """Store ``prior`` with the set (replacing any prior at the same t); returns its file."""
    if tuple(prior.data_shape) != tuple(cset.manifest.data.shape):
        raise CheckpointError(f"a prior of shape {prior.data_shape} does not fit the set at "
                              f"{cset.path} (data shape {cset.manifest.data.shape})")
    folder = priors_dir(cset)
    state = {k: v.detach().contiguous() for k, v in prior.density.state_dict().items()}
    blob = canonical_safetensors(save(state, metadata={"kind": prior.kind, "t": str(prior.t)}))
    sha = hashlib.sha256(blob).hexdigest()
    path = folder / f"prior_t{prior.t}_{sha[:12]}.safetensors"
    atomic_write_bytes(path, blob)
    entry = PriorEntry(prior.t, prior.kind, path.name, sha, asdict(prior.config),
                       prior.info.to_json())
    with manifest_lock(folder):
        entries = read_index(cset)
        old = [e for e in entries if e.t != prior.t]
        replaced = [e.file for e in entries if e.t == prior.t and e.file != path.name]
        index = {"format": FORMAT, "version": FORMAT_VERSION,
                 "schedule_sha256": schedule_sha256(cset.schedule),
                 "data_shape": list(cset.manifest.data.shape),
                 "priors": [asdict(e) for e in sorted(old + [entry], key=lambda e: e.t)]}
        atomic_write_json(folder / INDEX_NAME, index)
    for name in replaced:
        (folder / name).unlink(missing_ok=True)
    return path


def load_priors(cset: CheckpointSet) -> dict[int, AuxPrior]:
    """Every stored prior of the set, by t (empty if none), each checked against its
    recorded sha256 before it is read."""
    folder = priors_dir(cset)
    out = {}
    for e in read_index(cset):
        where = f"{folder / INDEX_NAME}, prior at t = {e.t}"
        config = config_from_json(e.kind, e.config, where)
        info = PriorInfo.from_json(e.info, where)
        path = folder / e.file
        if not path.exists():
            raise CheckpointError(f"{where}: file {path} is missing; run train-prior --at "
                                  f"{e.t} again")
        if sha256_file(path) != e.sha256:
            raise CheckpointError(f"{where}: file {path} does not match its recorded sha256 "
                                  f"(changed or corrupt); run train-prior --at {e.t} again")
        density = build_density(config, math.prod(cset.manifest.data.shape))
        try:
            density.load_state_dict(load_file(str(path)), strict=True)
        except (SafetensorError, RuntimeError, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else "mismatch"
            raise CheckpointError(f"{where}: file {path} does not hold a {e.kind} prior of "
                                  f"this shape ({first}); run train-prior --at {e.t} again"
                                  ) from None
        for p in density.parameters():
            p.requires_grad_(False)
        out[e.t] = AuxPrior(e.t, config, tuple(cset.manifest.data.shape), density.eval(), info)
    return out
