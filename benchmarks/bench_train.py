"""Benchmark parallel training of a checkpoint set: 1 vs W workers, member vs baseline.

Issue 3, part 8 (targets for a 2-core machine):

(a) members/hour on the same work, 1 worker vs ``--workers W`` (default 2), for three
    workloads of 4 members each (same seeds, steps and batch 128):

      2d-mlp       8gaussians, --arch auto (MLP, 128 units x 3)
      digits-mlp   digits, --arch mlp (256 units x 3): the README's train example
      digits-unet  digits, --arch auto (U-Net, 32 channels, attention at 4x4): the
                   issue's example command

    Every run is the command a user types, ``python -m ddpm_tools.cli.main train ...
    --json``, in a fresh process, timed on the wall clock from outside (the work happens
    in other processes). Three configurations: ``--workers 1`` (all cores as torch
    threads: what a user gets), ``--workers 1`` with ``OMP_NUM_THREADS=1`` (one core: the
    reference for process scaling, whose ideal is W x) and ``--workers W`` (each worker
    ``cpu_count // W`` threads).

    A run costs start-up (the interpreter, importing torch, the fork server and its
    workers, creating the set, writing the weights) plus the training steps. Each
    configuration is run once with 1 step per member (start-up) and ``--rounds`` times
    with S steps per member (order alternating between rounds, median kept); the
    difference gives the seconds per step of all members, i.e. the members/hour of a
    long run. Target: members/hour of W workers >= 1.7 x that of ``--workers 1``.
    Reported alongside: the wall-clock speed-up of the S-step run itself (start-up
    included), how much one worker gains from all cores (thread speed-up) and how well
    W one-thread workers scale against one one-thread worker (efficiency, 1 = W x):
    speed-up = W x efficiency / thread speed-up, so a network that already keeps all
    cores busy by itself leaves the workers little to add. The W-worker run must end
    with the same weights as the one-thread run (same seeds, one thread each).
(b) it/s of one member trained on its own interval vs the single-network baseline
    (``--intervals 1``) of the same architecture and batch, one thread, on CPU time (and
    the wall clock): they should be about equal (same network, same batch); the point of
    a set is that its N members train in parallel. Best of ``--repeat`` interleaved runs.

    python benchmarks/bench_train.py [--quick] [--json] [--workload NAME ...] [--steps N]
        [--workers W] [--members N] [--rounds R] [--repeat R]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from _common import base_parser, finish, machine, print_table, timed, torch_threads, yes_no

from ddpm_tools.data import DataSplit, load_data
from ddpm_tools.models import UNetConfig
from ddpm_tools.sets import read_manifest
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.create import SetSpec, build_manifest, create_set
from ddpm_tools.training.trainer import train_member

SPEEDUP_TARGET = 1.7  # issue 3: members/hour with 2 workers vs 1, on 2 cores
T = 1000  # diffusion steps of the benchmark sets (the cost of a step does not depend on T)


@dataclass(frozen=True)
class Workload:
    """One ``train`` command, benchmarked with 1 and W workers."""

    name: str
    data: str
    arch: str  # the --arch flag
    what: str  # for the table
    steps: int  # steps per member of the long runs (about 20-30 s with 1 worker on 2 cores)
    quick_steps: int


WORKLOADS = {w.name: w for w in (
    Workload("2d-mlp", "8gaussians", "auto", "8gaussians, MLP 128x3", 1200, 20),
    Workload("digits-mlp", "digits", "mlp", "digits, MLP 256x3 (README example)", 800, 10),
    Workload("digits-unet", "digits", "auto", "digits, U-Net 32 ch (--arch auto)", 60, 2),
)}
# long-run rates are reported only where training is at least this share of the S-step
# run's wall time (else start-up dominates and the difference is noise: --quick)
MIN_TRAINING_SHARE = 0.5
CONFIGS = ("1 worker", "1 worker, 1 thread", "W workers")


def train_command(w: Workload, out: Path, steps: int, members: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "ddpm_tools.cli.main", "train", "--data", w.data,
            "--out", str(out), "--intervals", str(members), "--steps", str(steps),
            "--arch", w.arch, "--workers", str(workers), "--checkpoint-every", str(steps),
            "--batch-size", "128", "--seed", "0", "--device", "cpu", "--json"]


def run_cli(w: Workload, out: Path, steps: int, members: int, workers: int,
            one_thread: bool) -> dict[str, Any]:
    """One ``train`` command in a fresh process: wall seconds, loop seconds, weights."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    took, proc = timed(lambda: subprocess.run(
        train_command(w, out, steps, members, workers), capture_output=True, text=True,
        env=env))
    if proc.returncode != 0:
        raise RuntimeError(f"train failed: {proc.stderr.strip()[-500:]}")
    rep = json.loads(proc.stdout)
    return {"seconds": took.wall, "loop_seconds": sum(m["seconds"] for m in rep["members"]),
            "sha256": [m.sha256 for m in read_manifest(out).members]}


def bench_workload(root: Path, w: Workload, steps: int, members: int, workers: int,
                   rounds: int) -> dict[str, Any]:
    """Start-up and long runs of the three configurations; speed-ups and their parts."""
    setups = {"1 worker": (1, False), "1 worker, 1 thread": (1, True),
              "W workers": (workers, False)}
    n, cpus = 0, os.cpu_count() or 1

    def run(cfg: str, s: int) -> dict[str, Any]:
        nonlocal n
        n += 1
        return run_cli(w, root / f"{w.name}-{n}", s, members, *setups[cfg])

    startup = {cfg: run(cfg, 1)["seconds"] for cfg in CONFIGS}
    long: dict[str, list[dict[str, Any]]] = {cfg: [] for cfg in CONFIGS}
    long["1 worker, 1 thread"].append(run("1 worker, 1 thread", steps))
    for r in range(rounds):
        for cfg in ("1 worker", "W workers")[:: 1 if r % 2 == 0 else -1]:
            long[cfg].append(run(cfg, steps))
    runs = []
    for cfg in CONFIGS:
        wall = statistics.median(x["seconds"] for x in long[cfg])
        training = wall - startup[cfg]  # the S - 1 extra steps of every member
        measurable = training >= MIN_TRAINING_SHARE * wall
        runs.append({
            "run": cfg.replace("W", str(workers)), "workers": setups[cfg][0],
            "threads_per_worker": 1 if setups[cfg][1] else max(1, cpus // setups[cfg][0]),
            "startup_seconds": startup[cfg], "seconds": wall,
            "seconds_each": [x["seconds"] for x in long[cfg]],
            "loop_seconds": statistics.median(x["loop_seconds"] for x in long[cfg]),
            "members_per_hour": members / wall * 3600.0,
            "long_run_members_per_hour": (members * (steps - 1) / (training * steps) * 3600.0
                                          if measurable else None),
            "sha256": long[cfg][0]["sha256"]})
    one, one_t1, par = runs
    same = all(x["sha256"] == one_t1["sha256"] for x in long["W workers"])
    for r in runs:
        r.pop("sha256")
    rate = [r["long_run_members_per_hour"] for r in runs]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b is not None else None

    speedup = ratio(rate[2], rate[0])
    thread_speedup = ratio(rate[0], rate[1])
    efficiency = ratio(rate[2], None if rate[1] is None else workers * rate[1])
    return {"workload": w.name, "what": w.what, "data": w.data, "arch": w.arch,
            "members": members, "steps": steps, "rounds": rounds, "runs": runs,
            "speedup": speedup, "speedup_ok": None if speedup is None
            else speedup >= SPEEDUP_TARGET,
            "speedup_wall": one["seconds"] / par["seconds"],
            "speedup_over_1_thread": ratio(rate[2], rate[1]),
            "thread_speedup": thread_speedup, "worker_efficiency": efficiency,
            "same_weights_as_1_thread": same}


def member_vs_baseline(root: Path, split: DataSplit, quick: bool, repeat: int
                       ) -> dict[str, Any]:
    """Best it/s of member 0 of a 4-member set and of the one-member baseline (one thread).

    Two measures: wall clock of the training loop (``MemberResult.seconds``) and CPU
    time of the whole ``train_member`` call (robust to other processes on the machine;
    it also counts loading the set and writing the weights, a small part).
    """
    arch = UNetConfig(base_channels=8 if quick else 16, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=())
    steps, members = (5, 2) if quick else (100, 4)
    cfg = TrainConfig(steps=steps, batch_size=16 if quick else 128, lr=1e-3, ema=0.999,
                      checkpoint_every=steps, seed=0)

    def new_set(out: Path, intervals: int) -> Path:
        create_set(out, build_manifest(SetSpec(intervals=intervals, T=T), split, cfg,
                                       arch_config=arch))
        return out

    best = {k: 0.0 for k in ("member", "baseline", "member_cpu", "baseline_cpu")}
    t_range = {}
    kinds = [("baseline", 1), ("member", members)]
    with torch_threads(1):
        train_member(new_set(root / "warmup", 1), 0, steps=2, data=split)
        for r in range(repeat):
            for kind, intervals in kinds[:: 1 if r % 2 == 0 else -1]:  # alternate the order
                out = new_set(root / f"{kind}{r}", intervals)
                took, res = timed(partial(train_member, out, 0, data=split))
                best[kind] = max(best[kind], res.steps_done / res.seconds)
                best[kind + "_cpu"] = max(best[kind + "_cpu"], res.steps_done / took.cpu)
                t_range[kind] = [res.t_lo, res.t_hi]
    return {"threads": 1, "steps": steps, "members": members, "repeat": repeat,
            "arch": "unet", "base_channels": arch.base_channels,
            "member_t_range": t_range["member"], "baseline_t_range": t_range["baseline"],
            "member_it_s": best["member"], "baseline_it_s": best["baseline"],
            "member_it_s_cpu": best["member_cpu"], "baseline_it_s_cpu": best["baseline_cpu"],
            "ratio": best["member_cpu"] / best["baseline_cpu"],
            "ratio_wall": best["member"] / best["baseline"]}


def run(workloads: list[Workload], steps: int | None, members: int, workers: int,
        rounds: int, repeat: int, quick: bool) -> dict[str, Any]:
    res: dict[str, Any] = {"benchmark": "train", "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-train-") as tmp:
        root = Path(tmp)
        results = [bench_workload(root, w, steps or (w.quick_steps if quick else w.steps),
                                  members, workers, rounds) for w in workloads]
        mvb = member_vs_baseline(root, load_data("digits", "train", seed=0), quick, repeat)
    res.update({
        "settings": {"quick": quick, "members": members, "workers": workers,
                     "rounds": rounds, "batch_size": 128, "T": T},
        "workloads": results,
        "speedup_target": SPEEDUP_TARGET,
        "speedup_ok": {r["workload"]: r["speedup_ok"] for r in results},
        "member_vs_baseline": mvb,
    })
    return res


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per workload (members/hour, W workers vs 1) and one for member vs baseline."""
    s = res["settings"]
    rows = []
    for w in res["workloads"]:
        runs = {r["run"]: r for r in w["runs"]}
        one, many = runs["1 worker"], runs[f"{s['workers']} workers"]
        rate = "long_run_members_per_hour" if w["speedup"] is not None else "members_per_hour"
        rows.append({"measured": f"members/hour, {w['workload']} ({w['what']}), "
                                 f"{s['workers']} workers",
                     "ours": f"{many[rate] or many['members_per_hour']:.0f}/h",
                     "anchor": f"1 worker {one[rate] or one['members_per_hour']:.0f}/h",
                     "ratio": "-" if w["speedup"] is None else f"{w['speedup']:.2f}x",
                     "target": f">= {res['speedup_target']}x", "met": w["speedup_ok"]})
    m = res["member_vs_baseline"]
    rows.append({"measured": f"it/s of one member vs the single network (digits U-Net, "
                             f"{m['threads']} thread, CPU time)",
                 "ours": f"{m['member_it_s_cpu']:.1f} it/s",
                 "anchor": f"single network {m['baseline_it_s_cpu']:.1f} it/s",
                 "ratio": f"{m['ratio']:.2f}", "target": "about 1", "met": None})
    return rows


def print_human(res: dict[str, Any]) -> None:
    s = res["settings"]
    print(f"(a) members/hour, {s['members']} members, batch {s['batch_size']}: `ddpm-tools "
          f"train --workers 1` vs `--workers {s['workers']}` (fresh process each; median of "
          f"{s['rounds']} round(s))")
    def num(x: float | None, fmt: str, unit: str = "") -> str:
        return "-" if x is None else f"{x:{fmt}}{unit}"

    rows = []
    for w in res["workloads"]:
        for r in w["runs"]:
            rows.append((w["workload"], w["steps"], r["run"], f"{r['startup_seconds']:.1f}",
                         f"{r['seconds']:.1f}", f"{r['members_per_hour']:.0f}",
                         num(r["long_run_members_per_hour"], ".0f")))
    print_table(("workload", "steps", "run", "start-up s", "seconds", "members/h",
                 "members/h, long run"), rows)
    print()
    print_table(("workload", "what", "speed-up, long run",
                 f">= {res['speedup_target']}x", "speed-up, this run", "over 1 thread",
                 "thread speed-up of 1 worker", "worker efficiency", "same weights"),
                [(w["workload"], w["what"], num(w["speedup"], ".2f", "x"),
                  yes_no(w["speedup_ok"]), f"{w['speedup_wall']:.2f}x",
                  num(w["speedup_over_1_thread"], ".2f", "x"),
                  num(w["thread_speedup"], ".2f", "x"), num(w["worker_efficiency"], ".2f"),
                  yes_no(w["same_weights_as_1_thread"])) for w in res["workloads"]])
    print(f"speed-up = {s['workers']} x efficiency / thread speed-up: a network that keeps all "
          "cores busy by itself leaves the workers little to add; '-': start-up dominates "
          "these runs (--quick), no long-run rate")
    m = res["member_vs_baseline"]
    print(f"\n(b) it/s of one member vs the single-network baseline (digits U-Net "
          f"{m['base_channels']} ch, {m['threads']} thread, best of {m['repeat']})")
    print_table(("network", "t range", "steps", "it/s (CPU)", "it/s (wall)"), [
        (f"member 0 of {m['members']}", "{}..{}".format(*m["member_t_range"]), m["steps"],
         f"{m['member_it_s_cpu']:.1f}", f"{m['member_it_s']:.1f}"),
        ("single network (--intervals 1)", "{}..{}".format(*m["baseline_t_range"]),
         m["steps"], f"{m['baseline_it_s_cpu']:.1f}", f"{m['baseline_it_s']:.1f}")])
    print(f"member / baseline it/s: {m['ratio']:.2f} on CPU time, {m['ratio_wall']:.2f} on the "
          f"wall clock (expected about 1: same network and batch; the {m['members']} members "
          "train in parallel)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table (or ``--json``), return the results."""
    parser = base_parser(__doc__)
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS),
                        help="workload(s) of part (a) (default: all three; --quick: 2d-mlp)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per member of the long runs (default per workload)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the "
                        "parallel run (default 2)")
    parser.add_argument("--members", type=int, default=None,
                        help="members of each set (default 4; --quick: 2)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="long runs per configuration, median kept (default 2; "
                             "--quick: 1)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="interleaved runs of part (b), best kept (default 3; --quick: 1)")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2 (the comparison is 1 vs W workers)")
    for flag in ("steps", "members", "rounds", "repeat"):
        value = getattr(args, flag)
        if value is not None and value < (2 if flag == "steps" else 1):
            parser.error(f"--{flag} must be at least {2 if flag == 'steps' else 1}")
    names = args.workload or (["2d-mlp"] if args.quick else list(WORKLOADS))
    res = run([WORKLOADS[n] for n in names], args.steps,
              args.members or (2 if args.quick else 4), args.workers,
              args.rounds or (1 if args.quick else 2), args.repeat or (1 if args.quick else 3),
              args.quick)
    return finish(res, args.json, print_human)


if __name__ == "__main__":
    main()
    sys.exit(0)
