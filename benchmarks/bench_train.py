"""Benchmark parallel training of a checkpoint set: 1 vs W workers, member vs baseline.

Issue 3, part 8 (targets for a 2-core machine):

(a) members/hour on the same work: one set (same members, seeds, steps, batch) trained
    by ``train_set`` with 1 worker and with ``--workers W`` (default 2) worker
    processes. Target: speed-up >= 1.7x with 2 workers on 2 cores. "1 worker" runs in
    this process with all cores as torch threads (what ``ddpm-tools train --workers 1``
    does); a 1-worker, 1-thread run is shown too: the pure process scaling, whose ideal
    is W x. Wall clock, since the parallel run's work happens in other processes.
    Each run's overhead is its wall time minus its training-loop time / W: data loading,
    network construction, weight files and, with W > 1, spawning W Python processes that
    import torch (the worker start-up cost, paid once per run). "Training loops only"
    compares members/hour with that overhead removed: the speed-up of a long run.
    Each run also says whether it ends with the same weights as the 1-thread run (the
    W-worker run must: same seeds, one thread each; more threads may change the order
    of float sums).
(b) it/s of one member trained on its own interval vs the single-network baseline
    (``--intervals 1``) of the same architecture and batch, with the threads of one
    worker, on CPU time (and the wall clock): they should be about equal (same network,
    same batch); the point of a set is that its N members train in parallel. Best of
    ``--repeat`` interleaved runs (the order alternates between rounds).

Defaults: digits, 4 members of a small U-Net (16 base channels, no attention), 100 steps
each, batch 128; 2-D data (``--data 8gaussians``) uses MLP members and 1,000 steps.

    python benchmarks/bench_train.py [--quick] [--json] [--steps N] [--workers W]
        [--data NAME] [--members N] [--repeat R]
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from _common import base_parser, finish, machine, print_table, timed, torch_threads, yes_no

from ddpm_tools.data import DataSplit, load_data
from ddpm_tools.models import ArchConfig, MLPConfig, UNetConfig, arch_name, config_to_dict
from ddpm_tools.sets import read_manifest
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.create import SetSpec, build_manifest, create_set
from ddpm_tools.training.parallel import train_set
from ddpm_tools.training.trainer import train_member

SPEEDUP_TARGET = 1.7  # issue 3: members/hour with 2 workers vs 1, on 2 cores
T = 1000  # diffusion steps of the benchmark sets (the cost of a step does not depend on T)


@dataclass(frozen=True)
class Sizes:
    """How much work one benchmark run does."""

    data: str  # data spec (digits: U-Net members; 2-D sets: MLP members)
    arch: ArchConfig  # every member's architecture
    members: int  # members of the set in part (a)
    steps: int  # optimizer steps per member
    batch_size: int  # examples per step


def choose_sizes(quick: bool, data: str, members: int | None, steps: int | None) -> Sizes:
    """The default work for ``data``; ``--quick`` shrinks it to a seconds-long smoke test."""
    split_shape = load_data(data, "train").shape
    image = len(split_shape) == 3
    if image:
        arch: ArchConfig = UNetConfig(base_channels=8 if quick else 16, channel_mult=(1, 2),
                                      num_res_blocks=1, attention_resolutions=())
    else:
        arch = MLPConfig(hidden=32, depth=2, time_dim=16) if quick else MLPConfig()
    default_steps = (5 if image else 20) if quick else (100 if image else 1000)
    return Sizes(data=data, arch=arch, members=members or (2 if quick else 4),
                 steps=steps or default_steps, batch_size=16 if quick else 128)


def new_set(out: Path, split: DataSplit, sizes: Sizes, intervals: int) -> Path:
    """An untrained set of ``intervals`` members; one checkpoint, at the end."""
    cfg = TrainConfig(steps=sizes.steps, batch_size=sizes.batch_size, lr=1e-3, ema=0.999,
                      checkpoint_every=sizes.steps, seed=0)
    spec = SetSpec(intervals=intervals, T=T)
    create_set(out, build_manifest(spec, split, cfg, arch_config=sizes.arch))
    return out


def train_run(root: Path, split: DataSplit, sizes: Sizes, workers: int, threads: int
              ) -> dict[str, Any]:
    """Train a fresh set with ``train_set``; wall time, members/hour, overhead, weights."""
    out = new_set(root / f"workers{workers}_threads{threads}", split, sizes, sizes.members)
    with torch_threads(threads):  # workers > 1: each worker sets cpu_count // W itself
        took, results = timed(lambda: train_set(out, workers=workers))
    seconds = took.wall  # wall clock: the parallel run's work is in other processes
    busy = min(workers, sizes.members)
    loop = sum(r.seconds for r in results)
    return {
        "workers": workers,
        "threads_per_worker": threads,
        "seconds": seconds,
        "members_per_hour": sizes.members / seconds * 3600.0,
        "loop_seconds": loop,
        "overhead_seconds": seconds - loop / busy,
        "loop_members_per_hour": sizes.members / (loop / busy) * 3600.0,
        "sha256": [m.sha256 for m in read_manifest(out).members],
    }


def warm_up(root: Path, split: DataSplit, sizes: Sizes, threads: list[int]) -> None:
    """Pay this process's one-time costs (lazy init, thread pools) before any timing.

    Worker processes pay theirs inside the parallel run: that is part of its start-up.
    """
    for n in sorted(set(threads)):
        with torch_threads(n):
            train_member(new_set(root / f"warmup{n}", split, sizes, 1), 0, steps=2, data=split)


def member_vs_baseline(root: Path, split: DataSplit, sizes: Sizes, threads: int, repeat: int
                       ) -> dict[str, Any]:
    """Best it/s of member 0 of an N-member set and of the one-member baseline.

    Two measures: wall clock of the training loop (``MemberResult.seconds``) and CPU
    time of the whole ``train_member`` call (robust to other processes on the machine;
    it also counts loading the set and writing the weights, a small part).
    """
    best = {k: 0.0 for k in ("member", "baseline", "member_cpu", "baseline_cpu")}
    t_range = {}
    kinds = [("baseline", 1), ("member", sizes.members)]
    with torch_threads(threads):
        for r in range(repeat):
            for kind, intervals in kinds[:: 1 if r % 2 == 0 else -1]:  # alternate the order
                out = new_set(root / f"{kind}{r}", split, sizes, intervals)
                took, res = timed(partial(train_member, out, 0, data=split))
                best[kind] = max(best[kind], res.steps_done / res.seconds)
                best[kind + "_cpu"] = max(best[kind + "_cpu"], res.steps_done / took.cpu)
                t_range[kind] = [res.t_lo, res.t_hi]
    return {"threads": threads, "steps": sizes.steps, "repeat": repeat,
            "member_t_range": t_range["member"], "baseline_t_range": t_range["baseline"],
            "member_it_s": best["member"], "baseline_it_s": best["baseline"],
            "member_it_s_cpu": best["member_cpu"], "baseline_it_s_cpu": best["baseline_cpu"],
            "ratio": best["member_cpu"] / best["baseline_cpu"],
            "ratio_wall": best["member"] / best["baseline"]}


def run(sizes: Sizes, workers: int, repeat: int, quick: bool) -> dict[str, Any]:
    cpus = os.cpu_count() or 1
    res: dict[str, Any] = {"benchmark": "train", "machine": machine()}
    split = load_data(sizes.data, "train", seed=0)
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-train-") as tmp:
        root = Path(tmp)
        warm_up(root, split, sizes, [cpus, 1])
        serial = train_run(root, split, sizes, 1, cpus)
        parallel = train_run(root, split, sizes, workers, max(1, cpus // workers))
        serial1 = train_run(root, split, sizes, 1, 1) if cpus > 1 else serial
        mvb = member_vs_baseline(root, split, sizes, max(1, cpus // workers), repeat)
    runs = [dict(serial, run="1 worker, all threads"), dict(serial1, run="1 worker, 1 thread"),
            dict(parallel, run=f"{workers} workers")]
    ref = serial1["sha256"]
    for r in runs:
        r["same_weights_as_1_thread"] = r.pop("sha256") == ref
    # speed-up of the parallel run over each 1-worker run: wall clock (what a user
    # waits) and training loops only (members/hour with the start-up cost excluded)
    speedups = [{"over": r["run"], "wall": r["seconds"] / parallel["seconds"],
                 "loops_only": parallel["loop_members_per_hour"] / r["loop_members_per_hour"],
                 "ok": r["seconds"] / parallel["seconds"] >= SPEEDUP_TARGET}
                for r in runs[:2]]
    res.update({
        "settings": {"quick": quick, "data": sizes.data,
                     "arch": arch_name(sizes.arch), "arch_config": config_to_dict(sizes.arch),
                     "members": sizes.members, "steps": sizes.steps,
                     "batch_size": sizes.batch_size, "T": T, "workers": workers},
        "runs": runs,
        "speedups": speedups,
        "speedup": speedups[0]["wall"],  # the number: W workers vs --workers 1
        "speedup_target": SPEEDUP_TARGET,
        "speedup_ok": speedups[0]["wall"] >= SPEEDUP_TARGET,
        "worker_startup_seconds": parallel["overhead_seconds"] - serial1["overhead_seconds"],
        "member_vs_baseline": mvb,
    })
    return res


def print_human(res: dict[str, Any]) -> None:
    s = res["settings"]
    print(f"(a) the same work, {s['members']} members x {s['steps']} steps ({s['data']}, "
          f"{s['arch']}, batch {s['batch_size']}), 1 worker vs {s['workers']} workers")
    print_table(
        ("run", "workers", "threads/worker", "seconds", "members/hour", "loop s (sum)",
         "overhead s", "same weights"),
        [(r["run"], r["workers"], r["threads_per_worker"], f"{r['seconds']:.2f}",
          f"{r['members_per_hour']:.0f}", f"{r['loop_seconds']:.2f}",
          f"{r['overhead_seconds']:.2f}", yes_no(r["same_weights_as_1_thread"]))
         for r in res["runs"]])
    print()
    print_table((f"speed-up of {s['workers']} workers over", "wall clock",
                 f"wall >= {res['speedup_target']}x", "training loops only"),
                [(x["over"], f"{x['wall']:.2f}x", yes_no(x["ok"]), f"{x['loops_only']:.2f}x")
                 for x in res["speedups"]])
    print(f"the issue's target is the first row (--workers 1 uses all threads); worker "
          f"start-up (the {s['workers']}-worker run's overhead beyond the 1-thread run's): "
          f"{res['worker_startup_seconds']:.2f} s")
    m = res["member_vs_baseline"]
    print(f"\n(b) it/s of one member vs the single-network baseline (same {s['arch']}, batch "
          f"{s['batch_size']}, {m['threads']} thread(s), best of {m['repeat']})")
    print_table(("network", "t range", "steps", "it/s (CPU)", "it/s (wall)"), [
        (f"member 0 of {s['members']}", "{}..{}".format(*m["member_t_range"]), m["steps"],
         f"{m['member_it_s_cpu']:.1f}", f"{m['member_it_s']:.1f}"),
        ("single network (--intervals 1)", "{}..{}".format(*m["baseline_t_range"]),
         m["steps"], f"{m['baseline_it_s_cpu']:.1f}", f"{m['baseline_it_s']:.1f}")])
    print(f"member / baseline it/s: {m['ratio']:.2f} on CPU time, {m['ratio_wall']:.2f} on the "
          f"wall clock (expected about 1: same network and batch; the {s['members']} members "
          "train in parallel)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table (or ``--json``), return the results."""
    parser = base_parser(__doc__)
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per member (default 100 for images, 1000 for "
                             "2-D data; --quick: 5 / 20)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the "
                        "parallel run (default 2)")
    parser.add_argument("--data", default="digits", help="digits (U-Net members) or a 2-D "
                        "set such as 8gaussians (MLP members)")
    parser.add_argument("--members", type=int, default=None,
                        help="members of the set (default 4; --quick: 2)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="interleaved runs of part (b), best kept (default 3; --quick: 1)")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2 (the comparison is 1 vs W workers)")
    if (args.steps is not None and args.steps < 1) or (args.members is not None
                                                       and args.members < 1):
        parser.error("--steps and --members must be at least 1")
    sizes = choose_sizes(args.quick, args.data, args.members, args.steps)
    repeat = max(1, args.repeat or (1 if args.quick else 3))
    res = run(sizes, args.workers, repeat, args.quick)
    return finish(res, args.json, print_human)


if __name__ == "__main__":
    main()
    sys.exit(0)
