"""Building, resuming, sharding, merging and caching cost tables (``ddpm-tools cost-table``).

The per-time work is in :mod:`ddpm_tools.costs.estimate`; this module decides which columns t
to compute, keeps partial results on disk so that an interrupted run resumes, lets a
cluster split t into shards (``--shard i/n`` takes t = i+1, i+1+n, ...: equal work per
shard) and merges them, and caches the train-split table next to its set.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from ddpm_tools.costs.estimate import (
    CostColumns,
    CostSettings,
    compute_columns,
    prior_costs,
    select_examples,
)
from ddpm_tools.costs.table_file import CostTable, read_cost_table, write_cost_table
from ddpm_tools.data import DataSplit, load_data
from ddpm_tools.errors import BadInputError
from ddpm_tools.io.files import atomic_write_bytes, ensure_writable_dir
from ddpm_tools.priors.store import load_priors, prior_fingerprint
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sets.checkpoint_set import CheckpointSet

PARTIAL_FORMAT = "ddpm-tools/cost-partial"
PARTIAL_EVERY_SECONDS = 30.0  # how often partial results are written during a run


def set_fingerprint(cset: CheckpointSet) -> str:
    """sha256 of what determines a set's predictions: schedule, outputs, members' weights
    and (when the set has any) its auxiliary priors."""
    m = cset.manifest
    key = {"betas": m.schedule.betas.tolist(), "prediction": m.prediction,
           "variance": m.variance, "clip_range": cset.clip_range, "levels": m.data.levels,
           "members": [(mb.t_lo, mb.t_hi, mb.sha256) for mb in m.members]}
    aux = prior_fingerprint(cset)  # auxiliary priors change the prior column
    if aux:
        key["priors"] = aux
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


@dataclass(frozen=True)
class Shard:
    """Shard i of n: the columns t with (t - 1) % n == i."""

    index: int  # 0-based shard number
    count: int  # number of shards

    @classmethod
    def parse(cls, text: str) -> Shard:
        m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise BadInputError(f"--shard must look like i/n with 0 <= i < n (got {text!r}), "
                                "e.g. --shard 0/4")
        return cls(int(m.group(1)), int(m.group(2)))

    def times(self, T: int) -> list[int]:
        return [t for t in range(1, T + 1) if (t - 1) % self.count == self.index]


def _meta(cset: CheckpointSet, data: DataSplit, s: CostSettings, n: int) -> dict[str, str]:
    return {"format": PARTIAL_FORMAT, "T": str(cset.T), "dims": str(data.dims),
            "n_samples": str(n), "split": data.split, "seed": str(s.seed),
            "variance": cset.manifest.variance, "set_sha256": set_fingerprint(cset),
            "data": data.name, "precision": s.precision}  # shards must not mix precisions


def _write_partial(path: Path, cols: CostColumns, prior: np.ndarray, prior_se: np.ndarray,
                   meta: dict[str, str]) -> None:
    arrays = {"L": cols.L, "L_se": cols.L_se, "done": cols.done.astype(np.uint8),
              "prior": prior, "prior_se": prior_se}
    atomic_write_bytes(path, save(arrays, metadata={"ddpm_tools": json.dumps(meta)}))


def _read_partial(path: Path) -> tuple[CostColumns, np.ndarray, np.ndarray, dict[str, str]]:
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("ddpm_tools", "{}"))
            a = {k: f.get_tensor(k) for k in f.keys()}
        cols = CostColumns(L=a["L"], L_se=a["L_se"], done=a["done"].astype(bool))
        prior, prior_se = a["prior"], a["prior_se"]
    except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise BadInputError(f"{path} is not a partial cost table ({e}); delete it and rerun "
                            "cost-table") from None
    if meta.get("format") != PARTIAL_FORMAT:
        raise BadInputError(f"{path} is not a partial cost table (a --shard output); pass "
                            "the files written by cost-table --shard")
    return cols, prior, prior_se, meta


def _table(cols: CostColumns, prior: np.ndarray, prior_se: np.ndarray,
           meta: dict[str, str]) -> CostTable:
    return CostTable(L=cols.L, prior=prior, T=int(meta["T"]), dims=int(meta["dims"]),
                     L_se=cols.L_se, prior_se=prior_se, n_samples=int(meta["n_samples"]),
                     split=meta["split"], seed=int(meta["seed"]), variance=meta["variance"],
                     set_sha256=meta["set_sha256"], data=meta["data"])


@dataclass(frozen=True)
class CostTableRun:
    """What a cost-table run produced."""

    path: Path  # the file written (table, or partial file for a shard)
    table: CostTable | None  # the complete table (None for a shard)
    columns_done: int  # columns t computed in total
    columns_total: int  # columns t this run is responsible for
    seconds: float  # wall-clock time of this run


def build_cost_table(cset: CheckpointSet, data: DataSplit, out: str | os.PathLike[str],
                     settings: CostSettings = CostSettings(), device: str = "cpu",
                     resume: bool = False, shard: Shard | None = None,
                     progress: ProgressFn | None = None) -> CostTableRun:
    """Compute the table (or one shard of it) and write it atomically to ``out``.

    While running, partial results go to ``out + ".partial"`` every 30 s; with
    ``resume`` an existing partial file of the same set and settings is continued.
    A shard writes its partial file to ``out`` itself (merge them with
    :func:`merge_cost_tables`).
    """
    t0 = time.perf_counter()
    out = Path(out)
    ensure_writable_dir(out.parent)
    if tuple(data.shape) != cset.manifest.data.shape:
        raise BadInputError(f"data {data.name} has shape {data.shape}, the set at {cset.path} "
                            f"was trained on {cset.manifest.data.shape}")
    x0 = select_examples(data, settings.samples, settings.seed)
    meta = _meta(cset, data, settings, x0.shape[0])
    times = (shard or Shard(0, 1)).times(cset.T)
    partial = out if shard is not None else out.with_name(out.name + ".partial")
    cols = CostColumns.empty(cset.T)
    if resume and partial.exists():
        old, _, _, old_meta = _read_partial(partial)
        if any(old_meta.get(k) != v for k, v in meta.items() if k != "format"):
            raise BadInputError(f"{partial} was computed with other settings or another set; "
                                "delete it or rerun without --resume")
        cols = old
    prior, prior_se = prior_costs(cset, x0, settings.seed, load_priors(cset))
    last = [time.perf_counter()]

    def checkpoint(c: CostColumns) -> None:
        if time.perf_counter() - last[0] >= PARTIAL_EVERY_SECONDS:
            _write_partial(partial, c, prior, prior_se, meta)
            last[0] = time.perf_counter()

    compute_columns(cset, x0.to(torch.device(device)), settings, times, cols, device=device,
                    progress=progress, checkpoint=checkpoint)
    done = int(cols.done[times].sum())
    if shard is not None:
        _write_partial(partial, cols, prior, prior_se, meta)
        return CostTableRun(out, None, done, len(times), time.perf_counter() - t0)
    table = _table(cols, prior, prior_se, meta)
    write_cost_table(out, table)
    if partial.exists():
        partial.unlink()
    return CostTableRun(out, table, done, len(times), time.perf_counter() - t0)


def merge_cost_tables(parts: list[str | os.PathLike[str]], out: str | os.PathLike[str]
                      ) -> CostTable:
    """Join shard files of one set and settings into a complete table at ``out``."""
    if not parts:
        raise BadInputError("give the shard files to merge")
    cols, prior, prior_se, meta = _read_partial(Path(parts[0]))
    for p in parts[1:]:
        c, _, _, m = _read_partial(Path(p))
        if any(m.get(k) != v for k, v in meta.items()):
            raise BadInputError(f"{p} was computed with other settings or another set than "
                                f"{parts[0]}; merge shards of one run only")
        overlap = np.flatnonzero(c.done & cols.done)
        if overlap.size:
            raise BadInputError(f"{p} repeats column t = {overlap[0]} of another shard; "
                                "pass each shard once")
        cols.L[:, c.done] = c.L[:, c.done]
        cols.L_se[:, c.done] = c.L_se[:, c.done]
        cols.done |= c.done
    missing = np.flatnonzero(~cols.done[1:]) + 1
    if missing.size:
        raise BadInputError(f"the shards do not cover t = {missing[0]} ({missing.size} columns "
                            "missing); run the missing --shard and merge again")
    table = _table(cols, prior, prior_se, meta)
    write_cost_table(out, table)
    return table


def cache_path(cset: CheckpointSet, data: str, split: str, settings: CostSettings) -> Path:
    """Where the set's cached table for (data, split, samples, seed) lives."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", data)
    return cset.cache_dir / f"{tag}-{split}-n{settings.samples}-seed{settings.seed}" \
        ".safetensors"


def cached_cost_table(cset: CheckpointSet, data: str, split: str = "train",
                      settings: CostSettings = CostSettings(), device: str = "cpu",
                      progress: ProgressFn | None = None) -> tuple[CostTable, Path]:
    """The table of a loaded set for these settings: reused from the set's cache when its
    weights are unchanged, else built (and cached) first. Returns (table, its path)."""
    path = cache_path(cset, data, split, settings)
    if path.exists():
        table = read_cost_table(path)
        if table.set_sha256 == set_fingerprint(cset):
            return table, path
    split_data = load_data(data, split, seed=settings.seed)
    run = build_cost_table(cset, split_data, path, settings, device=device, resume=True,
                           progress=progress)
    assert run.table is not None  # a run without a shard always returns its table
    return run.table, path
