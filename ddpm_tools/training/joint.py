"""Joint training of a multidecoder set: one shared encoder, one decoder per stage.

Zhang et al. 2024 (CVPR 2024, Sec. 4.2) train the shared encoder and the stage decoders
together. Here every optimizer step takes a batch of examples and ONE stage k, drawn
uniformly (``stage_sampling = "uniform"``) or with probability proportional to its
number of timesteps (``"length"``: then t is uniform on [1, T] overall, as for a single
network), with t ~ U{t_lo_k..t_hi_k}; the loss of :mod:`ddpm_tools.training.losses`
trains the encoder and decoder k.

The loop, EMA and resumable checkpoint are those of :mod:`ddpm_tools.training.trainer`
(one file ``ckpt/multidecoder.ckpt.safetensors``; on the CPU a resumed run is
bit-identical to an uninterrupted one). At the end the (EMA) encoder is written once, to
the set's shared-encoder file, and each decoder to its member's file (which records the
encoder's sha256 too, so a member's hash changes whenever the encoder does); one
manifest update then records them all. Steps are joint steps (``TrainConfig.steps``), and
every member's record shows the joint steps, time and final loss (over all stages).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ddpm_tools.core.limits import derived_seed
from ddpm_tools.data import DataSplit
from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.models import MultiDecoderConfig, build_multidecoder
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sets.checkpoint_set import weights_damage
from ddpm_tools.sets.manifest import (
    MemberState,
    SetManifest,
    SharedWeights,
    read_manifest,
    update_manifest,
)
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.trainer import (
    SEED_STRIDE,
    MemberResult,
    TrainState,
    final_weights,
    load_checkpoint,
    member_result_from_manifest,
    new_state,
    run_steps,
    train_tensor,
    training_lock,
    write_weights,
)

STAGE_SAMPLING: tuple[str, ...] = ("uniform", "length")  # how each batch's stage is drawn
JOINT = "the multidecoder set"  # names the joint run in its checkpoint and in messages
JOINT_STREAM = SEED_STRIDE - 1  # seed * SEED_STRIDE + this: apart from every member's stream


def trains_jointly(set_dir: str | os.PathLike[str]) -> str:
    """The error message for training one member of a multidecoder set on its own."""
    return (f"{set_dir} is a multidecoder set: its members share one encoder and train "
            "jointly, not one at a time; run ddpm-tools train with the same --out and "
            "settings to train or resume it")


def checkpoint_path(set_dir: Path) -> Path:
    """Where the joint run's resumable training state lives."""
    return set_dir / "ckpt" / "multidecoder.ckpt.safetensors"


def stage_probabilities(ranges: list[tuple[int, int]], sampling: str) -> torch.Tensor:
    """``[K]`` float64: the probability of drawing each stage (inclusive t ranges) for a
    batch; equal ("uniform") or proportional to t_hi - t_lo + 1 ("length")."""
    if sampling not in STAGE_SAMPLING:
        raise BadInputError(f"unknown stage sampling {sampling!r}; choose "
                            f"{' or '.join(STAGE_SAMPLING)}")
    w = torch.tensor([hi - lo + 1 if sampling == "length" else 1 for lo, hi in ranges],
                     dtype=torch.float64)
    return w / w.sum()


def _stages(man: SetManifest, set_dir: Path
            ) -> tuple[list[MultiDecoderConfig], SharedWeights]:
    """The members' configs and the shared-encoder entry of a multidecoder set."""
    configs = [m.arch for m in man.members if isinstance(m.arch, MultiDecoderConfig)]
    if man.shared_encoder is None or len(configs) != len(man.members):
        raise BadInputError(f"{set_dir} is not a multidecoder set; its members train one at "
                            "a time (ddpm-tools train or train-interval)")
    return configs, man.shared_encoder


def train_multidecoder(
    set_dir: str | os.PathLike[str],
    steps: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    data: DataSplit | None = None,
    stop_after: int | None = None,
) -> list[MemberResult]:
    """Train the multidecoder set at ``set_dir`` jointly up to ``steps`` joint steps
    (default: the set's), resuming from its checkpoint; one MemberResult per member.

    ``data`` may pass the already-loaded train split; ``stop_after`` stops (with a
    checkpoint) after that many steps of this call -- used to test resumption.
    """
    set_dir = Path(set_dir)
    man = read_manifest(set_dir)
    configs, shared = _stages(man, set_dir)
    cfg = TrainConfig.from_json(man.training)
    target = steps if steps is not None else cfg.steps
    if target < 1:
        raise BadInputError("--steps must be at least 1")
    if _trained(man, shared, target) and _damage(set_dir, man, shared) is None:
        return [member_result_from_manifest(man, m.index) for m in man.members]
    ckpt = checkpoint_path(set_dir)
    writes = [set_dir / shared.weights] + [set_dir / m.weights for m in man.members]
    with training_lock(ckpt, f"{JOINT} {set_dir}", writes):
        man = read_manifest(set_dir)  # another run may just have ended
        configs, shared = _stages(man, set_dir)
        damage = _damage(set_dir, man, shared) if _trained(man, shared, target) else None
        if _trained(man, shared, target) and damage is None:
            return [member_result_from_manifest(man, m.index) for m in man.members]
        return _train_locked(set_dir, man, configs, shared, cfg, target, ckpt, device,
                             progress, data, stop_after, damage)


def _trained(man: SetManifest, shared: SharedWeights, target: int) -> bool:
    return shared.sha256 is not None and all(
        m.sha256 is not None and m.state.steps_done >= target for m in man.members)


def _damage(set_dir: Path, man: SetManifest, shared: SharedWeights) -> str | None:
    """Why one of a trained set's weights files is unusable (None: all are intact)."""
    files = [(shared.weights, shared.sha256)] + [(m.weights, m.sha256) for m in man.members]
    for name, sha in files:
        if (damage := weights_damage(set_dir / name, sha)) is not None:
            return damage
    return None


def _train_locked(set_dir: Path, man: SetManifest, configs: list[MultiDecoderConfig],
                  shared: SharedWeights, cfg: TrainConfig, target: int, ckpt: Path,
                  device: torch.device | str, progress: ProgressFn | None,
                  data: DataSplit | None, stop_after: int | None,
                  damage: str | None = None) -> list[MemberResult]:
    """The body of :func:`train_multidecoder`, run under the set's training lock;
    ``damage`` (a weights file is unusable) retrains from the checkpoint when it is intact,
    else from scratch."""
    dev = torch.device(device)
    x_all = train_tensor(man, cfg, data, dev)

    seed = derived_seed(cfg.seed, SEED_STRIDE, JOINT_STREAM)

    def fresh() -> TrainState:
        with torch.random.fork_rng(devices=[]):  # initial weights from the joint run's seed
            torch.manual_seed(seed)
            net = build_multidecoder(configs, [m.t_hi for m in man.members], man.data.shape,
                                     man.out_factor).to(dev)
        return new_state(net, cfg, seed)

    st = fresh()
    if ckpt.exists():
        try:
            load_checkpoint(ckpt, st, JOINT)
        except CheckpointError:
            if damage is None:
                raise
            st = fresh()
    st.ema = {k: v.to(dev) for k, v in st.ema.items()}
    ranges = [(m.t_lo, m.t_hi) for m in man.members]
    p = stage_probabilities(ranges, str(man.training.get("stage_sampling", "uniform")))
    task = f"multidecoder [{len(ranges)} stages, t 1..{man.T}]"
    run_steps(man, ranges, cfg, st, x_all, target, ckpt, JOINT, task, progress, stop_after, p)
    if st.step < target:  # stopped early on request: checkpoint saved, manifest untouched
        return [MemberResult(m.index, m.t_lo, m.t_hi, st.step, None, st.seconds, False)
                for m in man.members]
    return _finish(set_dir, man, shared, cfg, st, target)


def _finish(set_dir: Path, man: SetManifest, shared: SharedWeights, cfg: TrainConfig,
            st: TrainState, target: int) -> list[MemberResult]:
    """Write the encoder once and each stage's decoder to its member's file (EMA weights if
    enabled), atomically, then record every sha256 in one manifest update."""
    weights = final_weights(cfg, st)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}

    encoder_sha = write_weights(set_dir / shared.weights, part("encoder."),
                                {"shared_encoder": True, "steps": st.step})
    digests = [write_weights(set_dir / m.weights, part(f"decoders.{m.index}."),
                             {"member": m.index, "steps": st.step,
                              "shared_encoder_sha256": encoder_sha})
               for m in man.members]
    final_loss = float(np.mean(st.losses)) if st.losses else None
    state = MemberState(steps_done=st.step, steps_target=target, final_loss=final_loss,
                        seconds=st.seconds)

    def record(m: SetManifest) -> SetManifest:
        members = tuple(replace(mb, sha256=d, state=state)
                        for mb, d in zip(m.members, digests, strict=True))
        return replace(m, members=members,
                       shared_encoder=replace(shared, sha256=encoder_sha))

    update_manifest(set_dir, record)
    return [MemberResult(m.index, m.t_lo, m.t_hi, st.step, final_loss, st.seconds, False)
            for m in man.members]
