"""``ddpm-tools train-prior``: auxiliary priors p_aux(x_t) for chains that start below T."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import JsonOpt, SetOpt, console, fmt, fmt_se, print_json, rich_progress
from ddpm_tools.priors import AuxPrior, FitSettings, make_config, train_priors


@app.command("train-prior")
def train_prior_cmd(
    set_dir: SetOpt,
    data: Annotated[str, typer.Option(help="Data the set was trained on; its train split is "
                                           "diffused to time t and fitted.")],
    at: Annotated[list[int] | None, typer.Option(
        "--at", help="Time t (1 <= t < T) to fit a prior at; repeat for several.")] = None,
    kind: Annotated[str, typer.Option(help="gmm (Gaussian mixture, EM) or flow (affine "
                                           "coupling flow).")] = "gmm",
    components: Annotated[int, typer.Option(min=1, help="gmm: mixture components.")] = 8,
    covariance: Annotated[str, typer.Option(help="gmm: full or diag covariances.")] = "full",
    flow_steps: Annotated[int, typer.Option(min=1, help="flow: Adam steps.")] = 2000,
    samples: Annotated[int, typer.Option(min=2, help="Diffused points fitted on per t.")
                       ] = 20_000,
    seed: Annotated[int, typer.Option(help="Picks the held-out examples, the noise and the "
                                           "fit.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Fit p_aux(x_t) at each --at t on the diffused train split and store it with the set
    (<set>/priors). The cost table's prior column then holds, at each such t, the cost of
    starting the chain there; optimize-schedule --truncate lets the DP choose the start.
    Units: nats per example (log-likelihoods), bits/dim (prior cost)."""
    config = make_config(kind, components=components, covariance=covariance,
                         flow_steps=flow_steps)
    with rich_progress(enabled=not json_out) as progress:
        priors = train_priors(set_dir, data, at or [], config,
                              FitSettings(samples=samples, seed=seed), progress=progress)
    if json_out:
        print_json([_json(p) for p in priors])
        return
    _print(priors, set_dir, data)


def _json(p: AuxPrior) -> dict[str, object]:
    bpd, bpd_se = p.prior_bpd
    return {"t": p.t, "kind": p.kind, "train_ll": p.info.train_ll,
            "heldout_ll": p.info.heldout_ll, "prior_nats": p.info.prior_nats,
            "prior_se": p.info.prior_se, "prior_bpd": bpd, "prior_bpd_se": bpd_se,
            "n_train": p.info.n_train, "n_heldout": p.info.n_heldout,
            "seconds": p.info.seconds}


def _print(priors: list[AuxPrior], set_dir: Path, data: str) -> None:
    table = Table(title=f"auxiliary priors of {set_dir} (stored in its priors folder); "
                        "± is one standard error")
    for col in ("t", "kind", "train log-lik", "held-out log-lik", "prior cost (nats)",
                "prior cost (bits/dim)"):
        table.add_column(col, justify="right")
    for p in priors:
        bpd, bpd_se = p.prior_bpd
        table.add_row(str(p.t), p.kind, fmt(p.info.train_ll), fmt(p.info.heldout_ll),
                      fmt_se(p.info.prior_nats, p.info.prior_se), fmt_se(bpd, bpd_se))
    console.print(table)
    console.print("log-lik: mean log p_aux(x_t), nats per example (held out: train-split "
                  "examples not fitted on); prior cost: E log q(x_t|x_0) - E log p_aux(x_t), "
                  "the prior term of a chain starting at t")
    console.print(f"  next: ddpm-tools optimize-schedule --set {set_dir} --data {data} "
                  "--budget 10 --truncate")
