"""Training one member of a checkpoint set, resumably (parallel score matching).

Haxholli & Lorenzi 2023: each member is an independent network trained only on its
own times t in [t_lo, t_hi]; members never communicate, so they train in parallel.

Resumability: every ``checkpoint_every`` steps (and at the end) the whole training
state -- weights, EMA weights, Adam moments, the data/noise generator, torch's global
RNG (dropout), the step and the loss window -- is written atomically to one
safetensors file ``ckpt/member_XXXX.ckpt.safetensors``. A rerun restores it and
continues; on the CPU the result is bit-identical to an uninterrupted run.

The state, checkpoint, EMA and loop helpers are public: the joint training of a
multidecoder set (:mod:`ddpm_tools.training.joint`) runs on them too.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ddpm_tools.core.diffusion import q_sample
from ddpm_tools.core.limits import SEED_MODULUS, derived_seed
from ddpm_tools.data import DataSplit, load_data
from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.io.files import atomic_write_safetensors, file_lock, sha256_file
from ddpm_tools.progress import ProgressFn, report
from ddpm_tools.sets.checkpoint_set import build_member, refuse_imported, weights_damage
from ddpm_tools.sets.manifest import (
    Member,
    MemberState,
    SetManifest,
    read_manifest,
    update_manifest,
    with_member,
)
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.losses import diffusion_loss

CKPT_FORMAT = "ddpm-tools/train-checkpoint"
LOSS_WINDOW = 100  # steps averaged into the reported final loss
SEED_STRIDE = 1_000_003  # member i's stream: (seed * SEED_STRIDE + i) mod 2**64


@dataclass(frozen=True)
class MemberResult:
    """Outcome of training one member."""

    index: int  # member index
    t_lo: int  # first time owned
    t_hi: int  # last time owned
    steps_done: int  # steps completed in total (over resumed runs)
    final_loss: float | None  # mean loss over the last LOSS_WINDOW steps
    seconds: float  # wall-clock time in total (over resumed runs)
    skipped: bool  # True if the member was already trained to its target
    repaired: str = ""  # how damaged recorded weights were rebuilt ("" if they were not)


def checkpoint_path(set_dir: Path, index: int) -> Path:
    """Where member ``index``'s resumable training state lives."""
    return set_dir / "ckpt" / f"member_{index:04d}.ckpt.safetensors"


@dataclass
class TrainState:
    """Everything a resumable training run carries from step to step."""

    net: torch.nn.Module
    ema: dict[str, torch.Tensor]
    opt: torch.optim.Adam
    gen: torch.Generator
    global_rng: torch.Tensor
    step: int
    losses: list[float]
    seconds: float


def new_state(net: torch.nn.Module, cfg: TrainConfig, seed: int) -> TrainState:
    """A fresh state: EMA = the initial weights, Adam, generators seeded from ``seed``."""
    return TrainState(net=net, ema={k: v.detach().clone() for k, v in net.state_dict().items()},
                      opt=torch.optim.Adam(net.parameters(), lr=cfg.lr, foreach=True),
                      gen=torch.Generator(device="cpu").manual_seed(seed % SEED_MODULUS),
                      global_rng=torch.Generator().manual_seed((seed + 1) % SEED_MODULUS
                                                               ).get_state(),
                      step=0, losses=[], seconds=0.0)


def save_checkpoint(path: Path, st: TrainState, index: int | str) -> None:
    """All training state in one safetensors file, written atomically; ``index`` (the
    member, or a name for a joint run) is recorded and checked on loading."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in st.net.state_dict().items():
        tensors[f"net/{k}"] = v.detach().cpu().clone().contiguous()
    for k, v in st.ema.items():
        tensors[f"ema/{k}"] = v.detach().cpu().clone().contiguous()
    for i, s in st.opt.state_dict()["state"].items():
        for k, v in s.items():
            tensors[f"opt/{i}/{k}"] = torch.as_tensor(v).detach().cpu().clone().contiguous()
    tensors["rng/gen"] = st.gen.get_state().clone()
    tensors["rng/global"] = st.global_rng.clone()
    meta = {"format": CKPT_FORMAT, "member": str(index), "step": str(st.step),
            "seconds": repr(st.seconds), "losses": json.dumps(st.losses)}
    atomic_write_safetensors(path, save(tensors, metadata=meta))


def load_checkpoint(path: Path, st: TrainState, index: int | str) -> None:
    """Restore ``st`` in place from a checkpoint written by :func:`save_checkpoint`."""
    who = f"member {index}" if isinstance(index, int) else index
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"training checkpoint {path} is unreadable ({e}); delete it to "
                              f"restart {who} from scratch") from None
    if meta.get("format") != CKPT_FORMAT or meta.get("member") != str(index):
        raise CheckpointError(f"{path} is not a training checkpoint of {who}; "
                              f"delete it to restart {who} from scratch")
    try:
        st.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net/")})
        st.ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("opt/"):
                _, i, name = k.split("/", 2)
                opt_state.setdefault(int(i), {})[name] = v
        groups = st.opt.state_dict()["param_groups"]
        st.opt.load_state_dict({"state": opt_state, "param_groups": groups})
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"training checkpoint {path} does not fit {who} ({e}); "
                              f"delete it to restart {who} from scratch") from None
    st.gen.set_state(tensors["rng/gen"])
    st.global_rng = tensors["rng/global"]
    st.step = int(meta["step"])
    st.seconds = float(meta["seconds"])
    st.losses = json.loads(meta["losses"])


def ema_update(ema: dict[str, torch.Tensor], net: torch.nn.Module, decay: float, step: int
               ) -> None:
    """ema <- d ema + (1 - d) theta, with d = min(decay, (1 + step) / (10 + step)) warm-up.

    Two multi-tensor (foreach) calls over all float tensors instead of two small ops per
    tensor: the same arithmetic, the same bits, a fraction of the per-step overhead."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        live = net.state_dict()
        floats = [k for k, v in live.items() if v.dtype.is_floating_point]
        avg = [ema[k] for k in floats]
        torch._foreach_mul_(avg, d)
        torch._foreach_add_(avg, [live[k].detach() for k in floats], alpha=1 - d)
        for k, v in live.items():
            if not v.dtype.is_floating_point:
                ema[k].copy_(v)


@contextlib.contextmanager
def training_lock(ckpt: Path, what: str, writes: Sequence[Path] = ()) -> Iterator[None]:
    """Hold an exclusive lock next to checkpoint ``ckpt`` for a whole training run.

    A second process training the same member (a requeued job whose first copy still
    runs, a duplicated array index) stops with one sentence instead of interleaving its
    checkpoints with the first one's. The lock is released by the OS when its process
    ends, even when killed, so a resumed run never waits for a dead one. Holding it, the
    temporary files a killed run left half-written (next to ``ckpt`` and to each path in
    ``writes``) are removed: nobody else can be writing them.
    """
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    locked = False
    try:
        with file_lock(ckpt.parent / (ckpt.name.split(".")[0] + ".lock"), wait=False):
            locked = True
            for target in (ckpt, *writes):
                for debris in target.parent.glob(f".{target.name}.*.tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        debris.unlink()
            yield
    except BlockingIOError:
        if locked:  # raised by the training itself, not by the lock
            raise
        raise BadInputError(
            f"{what} is being trained by another process right now; wait for it to finish "
            "(or stop it), then rerun to continue from its checkpoint") from None


def train_member(
    set_dir: str | os.PathLike[str],
    index: int,
    steps: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    data: DataSplit | None = None,
    stop_after: int | None = None,
) -> MemberResult:
    """Train member ``index`` of the set at ``set_dir`` up to ``steps`` (default: the
    set's configured steps), resuming from its checkpoint if one exists.

    ``data`` may pass the already-loaded train split; ``stop_after`` stops (with a
    checkpoint) after that many steps of this call -- used to test resumption.
    """
    set_dir = Path(set_dir)
    man = read_manifest(set_dir)
    if not 0 <= index < len(man.members):
        raise BadInputError(f"--member {index} does not exist; {set_dir} has members "
                            f"0..{len(man.members) - 1}")
    member = man.members[index]
    refuse_imported(set_dir, index, man.training)
    cfg = TrainConfig.from_json(man.training)
    target = steps if steps is not None else cfg.steps
    if target < 1:
        raise BadInputError("--steps must be at least 1")
    weights = set_dir / member.weights
    if _trained(member, target) and weights_damage(weights, member.sha256) is None:
        return _skipped(member)
    ckpt = checkpoint_path(set_dir, index)
    with training_lock(ckpt, f"member {index} of {set_dir}", [set_dir / member.weights]):
        man = read_manifest(set_dir)  # another run may just have ended
        member = man.members[index]
        trained = _trained(member, target)
        damage = weights_damage(weights, member.sha256) if trained else None
        if trained and damage is None:
            return _skipped(member)
        return _train_member_locked(set_dir, man, index, cfg, target, ckpt, device,
                                    progress, data, stop_after, damage)


def _trained(member: Member, target: int) -> bool:
    return member.sha256 is not None and member.state.steps_done >= target


def _skipped(member: Member) -> MemberResult:
    return MemberResult(member.index, member.t_lo, member.t_hi, member.state.steps_done,
                        member.state.final_loss, member.state.seconds, skipped=True)


def _train_member_locked(set_dir: Path, man: SetManifest, index: int, cfg: TrainConfig,
                         target: int, ckpt: Path, device: torch.device | str,
                         progress: ProgressFn | None, data: DataSplit | None,
                         stop_after: int | None, damage: str | None = None) -> MemberResult:
    """The body of :func:`train_member`, run under the member's training lock.

    ``damage`` (why the recorded weights are unusable) repairs a trained member: from its
    training checkpoint when that is intact (the same weights again), else from scratch."""
    member = man.members[index]
    weights = set_dir / member.weights
    if damage is not None and weights.exists() and not weights.is_file():
        raise BadInputError(f"{damage}, so member {index} cannot be rewritten there; move "
                            "it away, then rerun to repair the member")
    dev = torch.device(device)
    x_all = train_tensor(man, cfg, data, dev)

    st = _fresh_state(man, index, cfg, dev)
    repaired = "" if damage is None else f"{damage}: rebuilt from its training checkpoint"
    if ckpt.exists() and damage is None:
        load_checkpoint(ckpt, st, index)
    elif ckpt.exists():
        try:
            load_checkpoint(ckpt, st, index)
        except CheckpointError:
            st = _fresh_state(man, index, cfg, dev)
            repaired = f"{damage}: retrained from scratch (its training checkpoint is unusable)"
    elif damage is not None:
        repaired = f"{damage}: retrained from scratch (it has no training checkpoint)"
    st.ema = {k: v.to(dev) for k, v in st.ema.items()}
    task = f"member {index} [t {member.t_lo}..{member.t_hi}]"
    run_steps(man, [(member.t_lo, member.t_hi)], cfg, st, x_all, target, ckpt, index, task,
              progress, stop_after)
    if st.step < target:  # stopped early on request: checkpoint saved, manifest untouched
        return MemberResult(index, member.t_lo, member.t_hi, st.step, None, st.seconds, False,
                            repaired)
    return replace(_finish(set_dir, man, index, cfg, st, target), repaired=repaired)


def _fresh_state(man: SetManifest, index: int, cfg: TrainConfig, dev: torch.device
                 ) -> TrainState:
    """Member ``index``'s untrained state: initial weights from the member's own seed."""
    member_seed = derived_seed(cfg.seed, SEED_STRIDE, index)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(member_seed)
        net = build_member(man, man.members[index]).to(dev)
    return new_state(net, cfg, member_seed)


def train_tensor(man: SetManifest, cfg: TrainConfig, data: DataSplit | None,
                 device: torch.device) -> torch.Tensor:
    """The set's train split (``data`` if already loaded) as float32 ``[N, ...]`` on
    ``device``, checked against the set's data shape."""
    if data is None:
        data = load_data(man.data.name, "train", seed=cfg.seed)
    if tuple(data.shape) != man.data.shape:
        raise BadInputError(f"data {data.name} has shape {data.shape}, the set was made for "
                            f"{man.data.shape}")
    return torch.as_tensor(data.x, dtype=torch.float32, device=device)


def run_steps(man: SetManifest, ranges: list[tuple[int, int]], cfg: TrainConfig,
              st: TrainState, x_all: torch.Tensor, target: int, ckpt: Path, index: int | str,
              task: str, progress: ProgressFn | None, stop_after: int | None,
              stage_p: torch.Tensor | None = None) -> None:
    """The optimisation loop: a batch of examples, a range k ~ ``stage_p`` (drawn only when
    there are several inclusive ``ranges`` (t_lo, t_hi); default uniform), t ~
    U{t_lo_k..t_hi_k}, x_t ~ q(x_t | x_0), loss, Adam, EMA; a checkpoint every
    ``cfg.checkpoint_every`` steps."""
    dev = x_all.device
    n = x_all.shape[0]
    p = stage_p if stage_p is not None else torch.ones(len(ranges), dtype=torch.float64)
    start_step, t0 = st.step, time.perf_counter()
    seconds0 = st.seconds
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(st.global_rng)
        st.net.train()
        while st.step < target:
            if stop_after is not None and st.step - start_step >= stop_after:
                break
            idx = torch.randint(n, (min(cfg.batch_size, n),), generator=st.gen)
            k = 0 if len(ranges) == 1 else int(torch.multinomial(p, 1, generator=st.gen))
            t_lo, t_hi = ranges[k]
            t = torch.randint(t_lo, t_hi + 1, (idx.shape[0],), generator=st.gen)
            x0 = x_all[idx.to(dev)]
            noise = torch.randn(x0.shape, generator=st.gen).to(dev)
            t_np = t.numpy()
            x_t = q_sample(man.schedule, x0, t_np, noise)
            out = st.net(x_t, t.to(dev))
            loss = diffusion_loss(man.schedule, out, x0, x_t, t_np, noise, man.prediction,
                                  man.variance, man.data.levels, cfg.vlb_weight).mean()
            st.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(st.net.parameters(), cfg.grad_clip)
            st.opt.step()
            ema_update(st.ema, st.net, cfg.ema, st.step)
            st.step += 1
            st.losses = (st.losses + [float(loss.detach())])[-LOSS_WINDOW:]
            if not np.isfinite(st.losses[-1]):
                raise BadInputError(f"training of {task} diverged (loss is "
                                    f"{st.losses[-1]}) at step {st.step}; lower --lr")
            elapsed = time.perf_counter() - t0
            st.seconds = seconds0 + elapsed
            if st.step % 10 == 0 or st.step == target:
                report(progress, task, st.step, target, loss=float(np.mean(st.losses)),
                       it_s=(st.step - start_step) / max(elapsed, 1e-9))
            if st.step % cfg.checkpoint_every == 0 or st.step == target:
                st.global_rng = torch.get_rng_state()
                save_checkpoint(ckpt, st, index)
        st.global_rng = torch.get_rng_state()
    if stop_after is not None and st.step < target:
        save_checkpoint(ckpt, st, index)


def final_weights(cfg: TrainConfig, st: TrainState) -> dict[str, torch.Tensor]:
    """The weights to save: the EMA weights if enabled, else the raw ones (CPU copies)."""
    final = st.ema if cfg.ema > 0 else st.net.state_dict()
    return {k: v.detach().cpu().clone().contiguous() for k, v in final.items()}


def write_weights(path: Path, weights: dict[str, torch.Tensor], info: dict[str, Any]) -> str:
    """Write a safetensors weights file atomically; returns its sha256.

    ``info`` is stored as ONE JSON metadata entry: safetensors orders several entries
    arbitrarily, which would make the file's sha256 differ between identical runs.
    """
    atomic_write_safetensors(path, save(weights, metadata={"ddpm_tools": json.dumps(info)}))
    return sha256_file(path)


def _finish(set_dir: Path, man: SetManifest, index: int, cfg: TrainConfig, st: TrainState,
            target: int) -> MemberResult:
    """Write the final weights (EMA if enabled) atomically and record them in the manifest."""
    member = man.members[index]
    digest = write_weights(set_dir / member.weights, final_weights(cfg, st),
                           {"member": index, "steps": st.step})
    final_loss = float(np.mean(st.losses)) if st.losses else None
    state = MemberState(steps_done=st.step, steps_target=target, final_loss=final_loss,
                        seconds=st.seconds)
    def record(m: SetManifest) -> SetManifest:
        return with_member(m, index, sha256=digest, state=state)

    update_manifest(set_dir, record)
    return MemberResult(index, member.t_lo, member.t_hi, st.step, final_loss, st.seconds,
                        skipped=False)


def member_result_from_manifest(man: SetManifest, index: int) -> MemberResult:
    """A MemberResult describing what the manifest records for member ``index``."""
    m = man.members[index]
    return MemberResult(index, m.t_lo, m.t_hi, m.state.steps_done, m.state.final_loss,
                        m.state.seconds, skipped=True)

