"""ddpm-tools: train DDPMs as sets of per-interval networks, measure every denoising
step once (the KL cost table), find the ELBO-optimal K-step schedule exactly, and
evaluate likelihood and samples for any schedule.

Glossary (names follow the papers; docs/DESIGN.md fixes the conventions):
    T            number of diffusion steps; time t in {0, ..., T}, x_0 is data.
    beta_t       noise variance of step t (t = 1..T); ``betas[0] = 0`` is a placeholder.
    alpha_bar_t  prod_{i<=t} (1 - beta_i), with alpha_bar_0 = 1.
    beta_{t|s}   1 - alpha_bar_t / alpha_bar_s, the noise added from s to t (s < t).
    beta_tilde   beta_{t|s} (1 - alpha_bar_s) / (1 - alpha_bar_t), the posterior variance.
    x0_hat       the network's estimate of x_0 from x_t (eps-, x0- or v-prediction).
    tau          a K-step schedule 0 = tau_0 < tau_1 < ... < tau_K (= T).
    L[s, t]      expected cost (nats per example) of the step t -> s; row 0 is the decoder.
    prior[t]     cost of starting the chain at t (+inf where no prior exists).
    member       one network of a checkpoint set, owning times t_lo..t_hi (inclusive).
    bits/dim     nats / (D ln 2), only when reporting.
"""

__version__ = "0.1.0"

# The public API, importable from the top level (``from ddpm_tools import load_set``).
# Imported lazily so that ``import ddpm_tools`` stays cheap (no torch until needed).
_API = {
    "load_data": "ddpm_tools.data",
    "DataSplit": "ddpm_tools.data",
    "load_set": "ddpm_tools.sets.load",
    "CheckpointSet": "ddpm_tools.sets.checkpoint_set",
    "import_checkpoint": "ddpm_tools.sets.openai_import",
    "Denoiser": "ddpm_tools.sets.denoiser",
    "train": "ddpm_tools.training.api",
    "TrainConfig": "ddpm_tools.training.config",
    "SetSpec": "ddpm_tools.training.create",
    "CostSettings": "ddpm_tools.costs.estimate",
    "build_cost_table": "ddpm_tools.costs.build",
    "cached_cost_table": "ddpm_tools.costs.build",
    "CostTable": "ddpm_tools.costs.table_file",
    "read_cost_table": "ddpm_tools.costs.table_file",
    "write_cost_table": "ddpm_tools.costs.table_file",
    "solve_schedules": "ddpm_tools.core.dp",
    "solve_all_budgets": "ddpm_tools.core.dp",
    "optimize_table": "ddpm_tools.schedules.optimize",
    "Schedule": "ddpm_tools.schedules.schedule_file",
    "eval_bpd": "ddpm_tools.likelihood.elbo",
    "sample": "ddpm_tools.sampling.ancestral",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    """``ddpm_tools.<name>`` for the names of the public API (imported on first use)."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ddpm_tools' has no attribute {name!r}")
