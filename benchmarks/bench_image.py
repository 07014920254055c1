"""Benchmark an imported improved-diffusion network at 32x32x3: the cost table vs its floor.

Issue 15, part 5. An improved-diffusion ``UNetModel`` for ``--image_size 32`` (its own
channel multipliers 1, 2, 2, 2) with the width reduced to run on 2 CPU cores in minutes
(``--num_channels 32 --num_res_blocks 1 --attention_resolutions 8``, about 1.6 M
parameters), learned sigmas, cosine schedule, T = 1000 (``--full``: T = 4000). Its weights
are initialised as improved-diffusion initialises them (output layers zero: the untrained
model predicts eps = 0 and v = 0.5; the network's cost is the same as a trained one's),
saved with ``torch.save`` and read through ``import-checkpoint``. Data: random 8-bit
32x32 RGB images (the numbers measure speed; the bits/dim are those of this model).

(a) the cost table (``build_cost_table``: T network calls per example plus the KL terms
    of every step s < t, learned_range in chunks) against the floor: exactly the same
    network calls (same batches and times) made plainly under ``torch.inference_mode``.
    The KL part = table / floor - 1; above 25 % it is flagged (a later issue speeds it up).
(b) examples/s of both, the process's peak resident memory after each phase.
(c) eval-bpd (test split) of the DP schedule vs the even stride at K = 16 and 32.

    python benchmarks/bench_image.py [--quick] [--full] [--json] [--threads N]
"""

from __future__ import annotations

import resource
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import base_parser, finish, machine, print_table, timed, torch_threads, yes_no

from ddpm_tools.core.strides import even_stride
from ddpm_tools.costs.build import build_cost_table
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.data import load_data
from ddpm_tools.likelihood.elbo import eval_bpd
from ddpm_tools.models.openai_unet import OpenAIUNet
from ddpm_tools.schedules.optimize import optimize_table
from ddpm_tools.sets import CheckpointSet, load_set
from ddpm_tools.sets.openai_flags import parse_flags, unet_config
from ddpm_tools.sets.openai_import import import_checkpoint

KL_OVERHEAD_FLAG = 0.25  # the KL part above this fraction of the floor is flagged
ZERO_INIT = ("out.2.", ".out_layers.3.", ".proj_out.")  # improved-diffusion's zero_module layers


@dataclass(frozen=True)
class Sizes:
    """One benchmark run."""

    flags: str  # improved-diffusion MODEL_FLAGS + DIFFUSION_FLAGS
    samples: int  # train examples of the cost table
    batch_size: int  # examples per network call
    eval_samples: int  # test examples of eval-bpd
    budgets: tuple[int, ...]  # K of the DP vs even comparison


def unet_flags(size: int, T: int) -> str:
    """improved-diffusion flags of the benchmark U-Net for ``size`` x ``size`` images."""
    return (f"--image_size {size} --num_channels 32 --num_res_blocks 1 --attention_resolutions "
            f"{size // 4} --learn_sigma True --noise_schedule cosine --diffusion_steps {T}")


def random_images(path: Path, size: int, n_train: int, n_test: int) -> None:
    """An npz of random 8-bit RGB images (train and test splits, at least 2 each)."""
    rng = np.random.default_rng(0)
    np.savez(path, train=rng.integers(0, 256, (max(n_train, 2), size, size, 3), np.uint8),
             test=rng.integers(0, 256, (max(n_test, 2), size, size, 3), np.uint8))


DEFAULT = Sizes(unet_flags(32, 1000), samples=4, batch_size=4,
                eval_samples=8, budgets=(16, 32))
FULL = Sizes(unet_flags(32, 4000), samples=4, batch_size=4,
             eval_samples=8, budgets=(16, 32))
QUICK = Sizes(unet_flags(32, 40), samples=2, batch_size=2, eval_samples=2,
              budgets=(4, 8))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux: ru_maxrss in KB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def make_set(tmp: Path, flags: str) -> CheckpointSet:
    """A checkpoint saved as improved-diffusion saves one, imported as a set."""
    net = OpenAIUNet(unet_config("improved-diffusion", parse_flags("improved-diffusion", flags)))
    state = {k: (torch.zeros_like(v) if any(z in k for z in ZERO_INIT) else v)
             for k, v in net.state_dict().items()}
    torch.save(state, tmp / "model.pt")
    import_checkpoint("improved-diffusion", tmp / "model.pt", flags, tmp / "set")
    return load_set(tmp / "set")


def floor_calls(cset: CheckpointSet, n: int, batch_size: int) -> None:
    """The cost table's network calls alone: for t = 1..T, ceil(n / batch) calls."""
    net = cset.load_member(0)
    shape = cset.manifest.data.shape
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for t in range(1, cset.T + 1):
            for a in range(0, n, batch_size):
                b = min(batch_size, n - a)
                net(torch.randn((b, *shape), generator=g), torch.full((b,), t))


def run(sizes: Sizes, label: str, threads: int) -> dict[str, Any]:
    res: dict[str, Any] = {"benchmark": "image", "machine": machine()}
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="ddpm-bench-img-") as d:
        tmp = Path(d)
        random_images(tmp / "img.npz", 32, sizes.samples, sizes.eval_samples)
        cset = make_set(tmp, sizes.flags)
        params = sum(p.numel() for p in cset.load_member(0).parameters())
        train = load_data(f"npz:{tmp / 'img.npz'}", "train")
        test = load_data(f"npz:{tmp / 'img.npz'}", "test")
        settings = CostSettings(samples=sizes.samples, batch_size=sizes.batch_size)
        floor_calls(cset, 1, 1)  # warm-up
        rss0 = peak_rss_mb()
        floor, _ = timed(lambda: floor_calls(cset, sizes.samples, sizes.batch_size))
        rss_floor = peak_rss_mb()
        table, run_ = timed(lambda: build_cost_table(cset, train, tmp / "c.safetensors",
                                                     settings))
        rss_table = peak_rss_mb()
        assert run_.table is not None
        opt = optimize_table(run_.table, list(sizes.budgets))
        scheds: list[tuple[str, np.ndarray]] = []
        for r in opt.results:
            K = r.schedule.budget
            scheds += [(f"dp:{K}", r.schedule.timesteps), (f"even:{K}", even_stride(cset.T, K))]
        evals, rows = eval_bpd(cset, test, scheds, samples=sizes.eval_samples, seed=0,
                               batch_size=sizes.batch_size), []
        for ev in evals:
            rows.append({"schedule": ev.label, "K": ev.budget, "bpd": ev.bpd,
                         "bpd_se": ev.bpd_se})
    calls = cset.T * sizes.samples
    overhead = table.wall / floor.wall - 1.0
    res.update({
        "settings": {"size": label, "flags": sizes.flags, "T": cset.T,
                     "parameters": params,
                     "samples": sizes.samples, "batch_size": sizes.batch_size,
                     "eval_samples": sizes.eval_samples, "threads": threads},
        "network_calls": calls,
        "table_seconds": table.wall, "floor_seconds": floor.wall,
        "table_cpu_seconds": table.cpu, "floor_cpu_seconds": floor.cpu,
        "table_examples_per_s": calls / table.wall, "floor_examples_per_s": calls / floor.wall,
        "kl_overhead": overhead, "kl_overhead_flagged": overhead > KL_OVERHEAD_FLAG,
        "peak_rss_mb": {"before": rss0, "after_floor": rss_floor, "after_table": rss_table},
        "eval_bpd": rows,
    })
    return res


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The cost table against its plain network calls; eval-bpd of each schedule."""
    s = res["settings"]
    rows = [{"measured": f"cost table, improved-diffusion U-Net 32x32, T={s['T']}, "
                         f"{s['samples']} examples (wall)",
             "ours": f"{res['table_seconds']:.1f} s",
             "anchor": f"plain network calls {res['floor_seconds']:.1f} s",
             "ratio": f"KL part {res['kl_overhead']:+.0%}",
             "target": f"flagged above {KL_OVERHEAD_FLAG:.0%}",
             "met": not res["kl_overhead_flagged"]}]
    rows += [{"measured": f"eval-bpd, {r['schedule']}", "ours":
              f"{r['bpd']:.4f} +- {r['bpd_se']:.4f} bits/dim", "anchor": "-", "ratio": "-",
              "target": "-", "met": None} for r in res["eval_bpd"]]
    return rows


def print_human(res: dict[str, Any]) -> None:
    s = res["settings"]
    print(f"improved-diffusion U-Net 32x32x3, {s['parameters']:,} parameters, T = {s['T']}, "
          f"learned sigmas; cost table on {s['samples']} examples, batch {s['batch_size']}, "
          f"{s['threads']} thread(s)")
    print_table(("phase", "network calls", "wall s", "CPU s", "examples/s", "peak RSS MB"),
                [("floor (plain calls)", res["network_calls"], f"{res['floor_seconds']:.1f}",
                  f"{res['floor_cpu_seconds']:.1f}", f"{res['floor_examples_per_s']:.1f}",
                  f"{res['peak_rss_mb']['after_floor']:.0f}"),
                 ("cost table", res["network_calls"], f"{res['table_seconds']:.1f}",
                  f"{res['table_cpu_seconds']:.1f}", f"{res['table_examples_per_s']:.1f}",
                  f"{res['peak_rss_mb']['after_table']:.0f}")])
    flag = yes_no(res["kl_overhead_flagged"])
    print(f"KL part on top of the network calls: {res['kl_overhead']:+.1%} "
          f"(above {KL_OVERHEAD_FLAG:.0%}: {flag})")
    print_table(("schedule", "K", "bits/dim (test)"),
                [(r["schedule"], r["K"], f"{r['bpd']:.4f} +- {r['bpd_se']:.4f}")
                 for r in res["eval_bpd"]])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table (or ``--json``), return the results."""
    parser = base_parser(__doc__)
    parser.add_argument("--full", action="store_true", help="T = 4000 instead of 1000")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine more threads "
                             "thrash)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    label = "quick" if args.quick else ("full" if args.full else "default")
    sizes = QUICK if args.quick else (FULL if args.full else DEFAULT)
    return finish(run(sizes, label, args.threads), args.json, print_human)


if __name__ == "__main__":
    main()
    sys.exit(0)
