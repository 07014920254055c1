"""The cost-table file: read, write, validate, and what a table predicts for a schedule
(its negative ELBO).

Format (docs/DESIGN.md, "Cost table"): one safetensors file holding

* ``L``: [T+1, T+1] float64, ``L[s, t]`` the expected cost in nats per example of the
  step t -> s for s < t (row s = 0 is the decoder term); entries with s >= t are ignored;
* ``prior``: [T+1] float64, the cost of starting the chain at t (+inf: no prior there);
* optional ``L_se`` [T+1, T+1] and ``prior_se`` [T+1] float64: Monte Carlo standard
  errors of each entry;
* optional ``gamma``, ``gamma_se``, ``mse``, ``mse_se`` [T+1] float64: per time t the
  statistics of the reverse variances (:mod:`ddpm_tools.core.variances`) measured in the
  same pass, Gamma_t = E||eps_hat(x_t, t)||^2 / D and E||x_0 - x0_hat(x_t)||^2 / D (per
  dimension), with standard errors; entry 0 unused. Tables written before they existed
  still load (the fields are None) and serve every variance but analytic and mse;
* metadata (all strings, as safetensors requires): ``T``, ``dims`` (D, for bits/dim),
  ``n_samples``, ``split``, ``seed``, ``variance`` (the reverse variance the steps were
  costed with: fixed_small, fixed_large, learned_range, analytic or mse), ``set_sha256``,
  ``version`` (the file format version, "1"), ``data``, ``decoder`` ("discrete": row 0 is
  the negative log-likelihood of discrete data, >= 0; "continuous": of a density, any
  sign). Only ``T`` and ``dims`` are required when reading.

The negative ELBO of a schedule is prior[tau_K] + sum_i L[tau_{i-1}, tau_i] (Watson et
al. 2021, Sec. 3); bits/dim = nats / (D ln 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from ddpm_tools.core.dp import check_table, path_cost
from ddpm_tools.core.gaussian import nats_to_bpd
from ddpm_tools.errors import BadInputError, DdpmToolsError
from ddpm_tools.io.files import atomic_write_safetensors

COST_TABLE_VERSION = "1"  # format version written to and accepted from the metadata
_INT_META = ("n_samples", "seed")
_STR_META = ("split", "variance", "set_sha256", "data", "decoder")
NEGATIVE_TOLERANCE = 1e-4  # nats: an entry that must be >= 0 may be this negative (rounding)
_CONTINUOUS_DATA = ("8gaussians", "checkerboard", "moons", "swissroll", "pinwheel",
                    "2spirals")  # the built-in 2-D sets (tables written before ``decoder``)
STAT_FIELDS = ("gamma", "gamma_se", "mse", "mse_se")  # optional [T+1] statistics


@dataclass(frozen=True, eq=False)
class CostTable:
    """A KL cost table and what it was measured on (docs/DESIGN.md, "Cost table")."""

    L: np.ndarray  # [T+1, T+1] float64, nats per example of step t -> s (s < t)
    prior: np.ndarray  # [T+1] float64, nats per example of starting at t; +inf: no prior
    T: int  # number of diffusion steps
    dims: int  # D, dimensions per example (bits/dim = nats / (D ln 2))
    L_se: np.ndarray | None = None  # [T+1, T+1] float64 standard error of L, or None
    prior_se: np.ndarray | None = None  # [T+1] float64 standard error of prior, or None
    n_samples: int | None = None  # examples averaged per entry
    split: str | None = None  # data split measured on: "train" | "test"
    seed: int | None = None  # seed of the noise draws
    variance: str | None = None  # reverse variance of the steps: fixed_small, ..., analytic, mse
    set_sha256: str | None = None  # sha256 of the checkpoint set's manifest
    version: str = COST_TABLE_VERSION  # file format version
    data: str | None = None  # data spec measured on, e.g. "digits"
    decoder: str | None = None  # row 0's kind: "discrete" (>= 0), "continuous", None: unknown
    gamma: np.ndarray | None = None  # [T+1] float64, E||eps_hat||^2 / D per t, or None
    gamma_se: np.ndarray | None = None  # [T+1] float64, its standard error
    mse: np.ndarray | None = None  # [T+1] float64, E||x_0 - x0_hat||^2 / D per t, or None
    mse_se: np.ndarray | None = None  # [T+1] float64, its standard error

    @property
    def has_stats(self) -> bool:
        """Whether the table carries the statistics of the analytic and mse variances."""
        return self.gamma is not None and self.mse is not None

    def __post_init__(self) -> None:
        if int(self.T) != self.T or self.T < 1 or int(self.dims) != self.dims or self.dims < 1:
            raise BadInputError(
                f"a cost table needs integers T >= 1 and dims >= 1 (got T = {self.T}, "
                f"dims = {self.dims})"
            )
        n = self.T + 1
        for name, shape in (("L", (n, n)), ("prior", (n,)), ("L_se", (n, n)),
                            ("prior_se", (n,)), *((k, (n,)) for k in STAT_FIELDS)):
            a = getattr(self, name)
            if a is None:
                continue
            if not isinstance(a, np.ndarray) or a.dtype != np.float64 or a.shape != shape:
                got = (a.dtype, a.shape) if isinstance(a, np.ndarray) else type(a).__name__
                raise BadInputError(
                    f"cost table field {name} must be a float64 array of shape {shape} "
                    f"for T = {self.T} (got {got})"
                )


def write_cost_table(path: str | os.PathLike[str], table: CostTable) -> None:
    """Write ``table`` as one safetensors file at ``path``, atomically."""
    tensors = {"L": table.L, "prior": table.prior}
    if table.L_se is not None:
        tensors["L_se"] = table.L_se
    for key in ("prior_se", *STAT_FIELDS):
        if getattr(table, key) is not None:
            tensors[key] = getattr(table, key)
    meta = {"T": str(table.T), "dims": str(table.dims), "version": table.version}
    for key in _INT_META + _STR_META:
        value = getattr(table, key)
        if value is not None:
            meta[key] = str(value)
    atomic_write_safetensors(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                                  metadata=meta))


def read_cost_table(path: str | os.PathLike[str]) -> CostTable:
    """Read and validate a cost table; every problem is one BadInputError naming the file.

    Checks: a safetensors file; ``L`` and ``prior`` present; every array float64 of the
    shape metadata ``T`` implies; ``T``/``dims`` integers; no NaN or -inf in the used part
    of L (s < t) or in prior; at least one finite-cost schedule.
    """
    path = Path(path)
    where = f"cost table {path}"
    if not path.exists():
        raise BadInputError(f"{where} does not exist; check the path or build it with cost-table")
    if not path.is_file():
        raise BadInputError(f"{where} is a folder, not a file; pass the .safetensors table")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInputError(
            f"{where} is not a safetensors cost table ({e}); build one with cost-table"
        ) from None
    for key in ("L", "prior"):
        if key not in arrays:
            raise BadInputError(
                f"{where} has no tensor '{key}' (found {sorted(arrays)}); it is not a cost "
                "table, build one with cost-table"
            )
    version = meta.get("version", COST_TABLE_VERSION)
    if version != COST_TABLE_VERSION:
        raise BadInputError(
            f"{where} has format version {version!r}, this ddpm-tools reads version "
            f"{COST_TABLE_VERSION!r}; upgrade ddpm-tools or rebuild the table"
        )
    T = _required_int(meta, "T", where)
    dims = _required_int(meta, "dims", where)
    for name, a in arrays.items():
        if name in ("L", "L_se", "prior", "prior_se", *STAT_FIELDS):
            _check_array(name, a, T, where)
    try:
        table = CostTable(
            L=arrays["L"], prior=arrays["prior"], T=T, dims=dims,
            L_se=arrays.get("L_se"), prior_se=arrays.get("prior_se"),
            **{k: arrays.get(k) for k in STAT_FIELDS},
            n_samples=_meta_int(meta, "n_samples", where),
            seed=_meta_int(meta, "seed", where),
            version=version,
            **{k: meta.get(k) for k in _STR_META},
        )
    except DdpmToolsError as e:
        raise BadInputError(f"{where}: {e}") from None
    check_table(table.L, table.prior, where)
    check_signs(table, where)
    return table


def decoder_kind(table: CostTable) -> str | None:
    """What row 0 of ``table`` holds: "discrete" or "continuous" (its ``decoder`` metadata,
    else inferred from ``data`` for older tables); None when the table does not say."""
    if table.decoder in ("discrete", "continuous"):
        return table.decoder
    if table.data in _CONTINUOUS_DATA:
        return "continuous"
    if table.data == "digits" or (table.data or "").startswith("folder:"):
        return "discrete"
    return None


def check_signs(table: CostTable, where: str) -> None:
    """Entries that cannot be negative are not: every KL term L[s, t] for 1 <= s < t
    (Watson et al. 2021, eq. 4: a KL divergence is >= 0) and, for discrete data, the decoder
    row L[0, t] (a probability is <= 1); the prior is a KL too (or, with an auxiliary
    prior, a negative log-likelihood that may have either sign: not checked). A density's
    decoder term (continuous data) may be negative."""
    lowest = 0 if decoder_kind(table) == "discrete" else 1
    worst: tuple[float, int, int] | None = None
    for s in range(lowest, table.T):  # row by row: no [T+1, T+1] temporary
        row = table.L[s, s + 1:]
        t = int(np.argmin(row))
        if row[t] < -NEGATIVE_TOLERANCE and (worst is None or row[t] < worst[0]):
            worst = (float(row[t]), s, s + 1 + t)
    if worst is not None:
        value, s, t = worst
        what = "a decoder negative log-likelihood of discrete data" if s == 0 else "a KL"
        raise BadInputError(f"{where} has L[{s}, {t}] = {value:.6g} nats, negative, but "
                            f"{what} is >= 0; the table is corrupt, rebuild it with cost-table")


def _meta_int(meta: dict[str, str], key: str, where: str) -> int | None:
    """Integer metadata ``key`` (a string in the file), None if absent."""
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadInputError(
            f"{where} has metadata {key} = {raw!r}, not an integer; rebuild the table"
        ) from None


def _required_int(meta: dict[str, str], key: str, where: str) -> int:
    """Integer metadata ``key`` that every cost table must carry."""
    value = _meta_int(meta, key, where)
    if value is None:
        raise BadInputError(
            f"{where} has no '{key}' in its metadata; it is not a complete cost table, "
            "rebuild it with cost-table"
        )
    return value


def _check_array(name: str, a: np.ndarray, T: int, where: str) -> None:
    """dtype float64 and the shape metadata T implies, else one sentence."""
    shape = (T + 1, T + 1) if name.startswith("L") else (T + 1,)
    if a.dtype != np.float64:
        raise BadInputError(
            f"{where} stores {name} as {a.dtype}, but cost tables are float64; rebuild it"
        )
    if a.shape != shape:
        raise BadInputError(
            f"{where} has {name} of shape {tuple(a.shape)} but its metadata says T = {T}, "
            f"so {name} must be {shape}; the file is inconsistent, rebuild it"
        )


def predicted_nats(table: CostTable, timesteps: np.ndarray | list[int]) -> float:
    """The table's negative ELBO of a schedule, nats per example (+inf if a step is +inf).

    prior[tau_K] + sum_i L[tau_{i-1}, tau_i] (Watson et al. 2021, Sec. 3).
    timesteps: [K+1] from 0, strictly increasing, ending at T or (truncated prior) earlier.
    """
    return path_cost(table.L, table.prior, timesteps)


def predicted_bpd(table: CostTable, timesteps: np.ndarray | list[int]) -> float:
    """:func:`predicted_nats` in bits/dim: nats / (dims ln 2)."""
    return float(nats_to_bpd(predicted_nats(table, timesteps), table.dims))
