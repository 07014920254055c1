"""Benchmark checkpoint-set designs on digits at equal training compute.

Issue 7, part 3. Five sets are trained here on the digits train split, all with MLP
layers over the flattened 8x8 images (T = 300 linear betas, eps prediction,
learned-range variances with the hybrid loss, batch 128, Adam 1e-3, EMA 0.999):

  single          one network on [1, T]                              S steps
  uniform-4       4 members, equal numbers of timesteps              S/4 steps each
  snr-4           4 members, equal log-SNR spans                     S/4 steps each
  cluster-4       4 members, optimal-denoiser timestep clustering    S/4 steps each
  multidecoder-3  shared encoder + 3 stage decoders (Zhang et al.    S joint steps, each
                  2024), stages from the same clustering             batch's stage drawn in
                                                                     proportion to its length

Equal training compute: every network call costs the same -- each member, and the
multidecoder's encoder + one decoder, is 3 hidden layers of W units with the same time
embedding, P parameters per call -- so every set gets S x P (steps x parameters per
call; printed). The multidecoder stores E + 3 D parameters but uses E + D = P per call.

For each set, on the digits test split (360 images): bits/dim of the full chain (T
steps) and of the DP-optimal K = 32 schedule (Watson et al. 2021; solved on the set's
train-split cost table), each +- one standard error (``eval_bpd``); and the Frechet
distance to the test split, in the features of the built-in digits classifier, of N
samples drawn ancestrally along the full chain and along the K = 32 schedule (no
standard error; biased up at small N: the "data" row scores N train images the same way).

    python benchmarks/bench_sets.py [--quick] [--json] [--steps S] [--threads N]
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import base_parser, finish, machine, print_table, timed, torch_threads

from ddpm_tools.core.dp import solve_schedules
from ddpm_tools.core.gaussian import nats_to_bpd
from ddpm_tools.costs.build import cached_cost_table
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.data import load_data
from ddpm_tools.likelihood.elbo import eval_bpd
from ddpm_tools.metrics.evaluate_samples import evaluate_samples
from ddpm_tools.models import ArchConfig, MLPConfig, MultiDecoderConfig, count_parameters
from ddpm_tools.sampling.ancestral import to_levels
from ddpm_tools.sampling.sample_file import draw_samples, write_samples_npz
from ddpm_tools.sets import CheckpointSet, load_set
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.create import SetSpec, build_manifest, create_set
from ddpm_tools.training.parallel import train_set

DATA = "digits"
TIME_DIM = 64  # sinusoids of the time embedding, every network


@dataclass(frozen=True)
class Sizes:
    """How much work one benchmark run does."""

    T: int  # diffusion steps
    steps: int  # S: steps of the single network; members get S / members each
    batch_size: int  # examples per step
    width: int  # W: hidden units of every layer
    ema: float  # EMA decay of the saved weights
    K: int  # budget of the DP schedule
    table_samples: int  # train examples behind each cost-table entry
    test_samples: int | None  # test examples scored (None: the whole split)
    n_samples: int  # samples drawn per schedule for the Frechet distance


FULL = Sizes(T=300, steps=6000, batch_size=128, width=256, ema=0.999, K=32,
             table_samples=512, test_samples=None, n_samples=1000)
QUICK = Sizes(T=40, steps=16, batch_size=32, width=32, ema=0.9, K=8, table_samples=16,
              test_samples=32, n_samples=20)


@dataclass(frozen=True)
class Design:
    """One checkpoint-set design of the comparison."""

    name: str  # row label
    members: int  # networks (multidecoder: stages)
    partition: str  # how [1, T] is cut: uniform, snr or cluster
    multidecoder: bool  # one shared encoder + a decoder per stage, trained jointly


DESIGNS = (
    Design("single", 1, "uniform", False),
    Design("uniform-4", 4, "uniform", False),
    Design("snr-4", 4, "snr", False),
    Design("cluster-4", 4, "cluster", False),
    Design("multidecoder-3", 3, "cluster", True),
)


def arch_for(design: Design, width: int) -> ArchConfig:
    """Every member: 3 hidden layers of ``width`` units (multidecoder: 2 shared + 1 own)."""
    if design.multidecoder:
        return MultiDecoderConfig(hidden=width, encoder_depth=2, decoder_width=width,
                                  decoder_depth=1, time_dim=TIME_DIM)
    return MLPConfig(hidden=width, depth=3, time_dim=TIME_DIM)


def train_design(out: Path, design: Design, sizes: Sizes, seed: int) -> CheckpointSet:
    """Create and train one set at equal compute: S joint steps or S / members each."""
    per_member = sizes.steps if design.multidecoder else sizes.steps // design.members
    cfg = TrainConfig(steps=per_member, batch_size=sizes.batch_size, lr=1e-3, ema=sizes.ema,
                      checkpoint_every=per_member, seed=seed)
    spec = SetSpec(intervals=design.members, partition=design.partition,
                   arch="multidecoder" if design.multidecoder else "mlp", T=sizes.T,
                   schedule="linear", prediction="eps", variance="learned_range",
                   stage_sampling="length" if design.multidecoder else "uniform")
    split = load_data(DATA, "train", seed=seed)
    create_set(out, build_manifest(spec, split, cfg, arch_config=arch_for(design, sizes.width)))
    train_set(out, workers=1)
    return load_set(out)


def parameters(cset: CheckpointSet) -> tuple[int, int]:
    """(parameters per network call, parameters stored by the set)."""
    nets = [cset.load_member(m.index) for m in cset.manifest.members]
    per_call = count_parameters(nets[0])
    if cset.manifest.shared_encoder is None:
        return per_call, sum(count_parameters(n) for n in nets)
    encoder = count_parameters(nets[0].encoder)
    return per_call, encoder + sum(count_parameters(n.decoder) for n in nets)


def frechet(path: Path, seed: int) -> float:
    """Frechet distance of the samples in ``path`` to the digits test split."""
    rep = evaluate_samples(path, DATA, "test", seed, features="digits")
    return rep.metric("frechet_distance").value


def evaluate_design(cset: CheckpointSet, sizes: Sizes, tmp: Path, seed: int
                    ) -> dict[str, Any]:
    """Bits/dim (full chain and DP K) with standard errors, and Frechet distances."""
    table, _ = cached_cost_table(cset, DATA, "train",
                                 CostSettings(samples=sizes.table_samples, seed=seed))
    sol = solve_schedules(table.L, table.prior, [sizes.K])[0]
    schedules = [("full", np.arange(sizes.T + 1)), (f"dp:{sizes.K}", sol.timesteps)]
    test = load_data(DATA, "test", seed=seed)
    full, dp = eval_bpd(cset, test, schedules, samples=sizes.test_samples, seed=seed)
    fds = []
    for label, tau in schedules:
        path = tmp / f"{cset.path.name}-{label.replace(':', '')}.npz"
        draw_samples(cset, label, tau, sizes.n_samples, path, seed=seed)
        fds.append(frechet(path, seed))
    to_bpd = float(nats_to_bpd(1.0, table.dims))
    return {
        "full": {"bpd": full.bpd, "se": full.bpd_se, "n": full.n},
        "dp": {"K": sizes.K, "bpd": dp.bpd, "se": dp.bpd_se, "n": dp.n,
               "predicted_bpd": sol.cost_nats * to_bpd,
               "timesteps": [int(v) for v in sol.timesteps]},
        "fd_full": fds[0], "fd_dp": fds[1],
    }


def reference_fd(sizes: Sizes, tmp: Path, seed: int) -> float:
    """The Frechet distance of N train images to the test split (the floor at this N)."""
    train = load_data(DATA, "train", seed=seed)
    x = torch.as_tensor(train.x[: sizes.n_samples])
    assert train.levels is not None
    path = tmp / "train-images.npz"
    write_samples_npz(path, to_levels(x, train.levels), train.levels, DATA)
    return frechet(path, seed)


def run(sizes: Sizes, quick: bool, threads: int, seed: int = 0) -> dict[str, Any]:
    res: dict[str, Any] = {"benchmark": "sets", "machine": machine()}
    rows = []
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="ddpm-bench-sets-") as t:
        tmp = Path(t)
        for design in DESIGNS:
            took, cset = timed(lambda d=design: train_design(tmp / d.name, d, sizes, seed))
            per_call, stored = parameters(cset)
            steps = sizes.steps if design.multidecoder else sizes.steps // design.members
            total_steps = steps if design.multidecoder else steps * design.members
            took_eval, ev = timed(lambda c=cset: evaluate_design(c, sizes, tmp, seed))
            rows.append({
                "name": design.name, "members": design.members,
                "partition": design.partition, "multidecoder": design.multidecoder,
                "ranges": [[m.t_lo, m.t_hi] for m in cset.manifest.members],
                "params_per_call": per_call, "params_stored": stored,
                "steps_per_member": steps, "total_steps": total_steps,
                "compute": total_steps * per_call,
                "train_seconds": took.wall, "eval_seconds": took_eval.wall, **ev})
        ref = reference_fd(sizes, tmp, seed)
    res.update({
        "settings": {"quick": quick, "data": DATA, "T": sizes.T, "schedule": "linear",
                     "prediction": "eps", "variance": "learned_range", "steps": sizes.steps,
                     "batch_size": sizes.batch_size, "width": sizes.width, "lr": 1e-3,
                     "ema": sizes.ema, "K": sizes.K, "table_samples": sizes.table_samples,
                     "test_samples": sizes.test_samples, "n_samples": sizes.n_samples,
                     "seed": seed, "threads": threads,
                     "compute": "optimizer steps x parameters per network call"},
        "reference_fd": ref, "sets": rows,
    })
    return res


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each set's bits/dim (full chain and DP schedule) against the single network."""
    K = res["settings"]["K"]
    sets = res["sets"]
    base = next((r for r in sets if r["members"] == 1 and not r["multidecoder"]), sets[0])
    rows = []
    for r in sets:
        rows.append({"measured": f"{r['name']}: bits/dim full chain, dp:{K} (equal compute)",
                     "ours": f"{r['full']['bpd']:.3f} +- {r['full']['se']:.3f}, "
                             f"{r['dp']['bpd']:.3f} +- {r['dp']['se']:.3f}",
                     "anchor": f"{base['name']} {base['full']['bpd']:.3f}, "
                               f"{base['dp']['bpd']:.3f}",
                     "ratio": f"{r['full']['bpd'] - base['full']['bpd']:+.3f}, "
                              f"{r['dp']['bpd'] - base['dp']['bpd']:+.3f} bits/dim",
                     "target": "-", "met": None})
    return rows


def print_human(res: dict[str, Any]) -> None:
    s = res["settings"]
    print(f"digits, T = {s['T']} ({s['schedule']}, {s['prediction']}, {s['variance']}), MLP "
          f"layers of {s['width']} units, batch {s['batch_size']}, {s['threads']} thread(s); "
          f"compute = {s['compute']}; bits/dim on the test split +- one standard error; "
          f"FD of {s['n_samples']} samples to the test split (digits-classifier features)")
    K = s["K"]
    print_table(
        ("set", "t ranges", "params/call", "steps", "compute", "train s",
         "bpd full", f"bpd dp:{K}", "FD full", f"FD dp:{K}"),
        [(r["name"], " ".join(f"{lo}-{hi}" for lo, hi in r["ranges"]),
          f"{r['params_per_call']:,}", f"{r['members']}x{r['steps_per_member']}"
          if not r["multidecoder"] else f"{r['total_steps']} joint",
          f"{r['compute']:.3g}", f"{r['train_seconds']:.0f}",
          f"{r['full']['bpd']:.3f} +- {r['full']['se']:.3f}",
          f"{r['dp']['bpd']:.3f} +- {r['dp']['se']:.3f}",
          f"{r['fd_full']:.2f}", f"{r['fd_dp']:.2f}") for r in res["sets"]]
        + [("data (train images)", "", "", "", "", "", "", "", f"{res['reference_fd']:.2f}",
            "")])
    md = [r for r in res["sets"] if r["multidecoder"]]
    if md:
        print(f"{md[0]['name']}: {md[0]['params_stored']:,} parameters stored, "
              f"{md[0]['params_per_call']:,} per call")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table (or ``--json``), return the results."""
    parser = base_parser(__doc__)
    parser.add_argument("--steps", type=int, default=None,
                        help=f"S, steps of the single network (default {FULL.steps}; "
                             f"--quick: {QUICK.steps}); a multiple of 4")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.steps is not None:
        if args.steps < 4 or args.steps % 4:
            parser.error("--steps must be a positive multiple of 4")
        sizes = Sizes(**{**sizes.__dict__, "steps": args.steps})
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return finish(run(sizes, args.quick, args.threads), args.json, print_human)


if __name__ == "__main__":
    main()
    sys.exit(0)
