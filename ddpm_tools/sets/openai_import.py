"""A checkpoint set from an improved-diffusion or guided-diffusion checkpoint.

The checkpoint is a PyTorch ``state_dict`` saved with ``torch.save`` (``model*.pt``, or
``ema_<rate>_<step>.pt``, which has the same form) and described by its script's flags
(:mod:`ddpm_tools.sets.openai_flags`). It is read with ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers: nothing is unpickled. Its keys
and shapes must match the network the flags describe exactly; the first mismatch is
reported with the flag that most likely differs.

The set written is an ordinary ddpm-tools set of one member owning t = 1..T: the
weights as safetensors (in the checkpoint's dtypes: float16 stays float16), the
manifest with the betas of ``--noise_schedule`` and ``--diffusion_steps``, the variance
(``learn_sigma`` -> learned_range with v = (out + 1)/2; else ``sigma_small`` ->
fixed_small, else fixed_large), the prediction (``predict_xstart`` -> x0, else eps), the
time convention (index t - 1, times 1000 / T with ``rescale_timesteps``), 8-bit data
(256 levels) of shape (3, image_size, image_size), and in ``training.imported`` the
project, the flags as given and parsed, and the source file's sha256.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from ddpm_tools.core.noise_schedule import make_schedule
from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.io.files import (
    atomic_write_bytes,
    sha256_bytes,
    sha256_file,
    torch_load_weights_only,
)
from ddpm_tools.models.openai_unet import OpenAIUNet, OpenAIUNetConfig
from ddpm_tools.sets.manifest import DataInfo, Member, SetManifest, write_manifest
from ddpm_tools.sets.openai_flags import (
    check_likelihood_flags,
    parse_flags,
    unet_config,
    variance_and_prediction,
)

WEIGHTS_NAME = "member_0000.safetensors"  # the one member's weights in the set
IMAGE_LEVELS = 256  # both projects train on 8-bit images scaled to [-1, 1]
DATA_NAME = "unknown"  # the checkpoint does not record its training data


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_checkpoint` wrote."""

    out: Path  # the new checkpoint set
    project: str  # improved-diffusion or guided-diffusion
    T: int  # diffusion steps
    schedule: str  # linear or cosine
    variance: str  # learned_range, fixed_small or fixed_large
    prediction: str  # eps or x0
    image_shape: tuple[int, int, int]  # (C, H, W)
    parameters: int  # scalar parameters of the network
    dtypes: tuple[str, ...]  # the weights' dtypes as stored ("float32", "float16")
    source_sha256: str  # sha256 of the checkpoint file


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` state dict from a ``torch.save`` file, tensors only."""
    if not path.is_file():
        raise BadInputError(f"checkpoint {path} does not exist or is not a file; pass the "
                            "model .pt file downloaded from the project")
    try:
        state = torch_load_weights_only(path)
    except pickle.UnpicklingError as e:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] != b"\x80" and head != b"PK":  # neither a pickle nor torch's zip
            raise CheckpointError(f"{path} is not a torch.save file (it starts with "
                                  f"{head!r}); pass the model .pt checkpoint") from None
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?: was not|\n|$)", str(e))
        detail = f" ({found.group(1).strip()})" if found and found.group(1).strip() else ""
        raise CheckpointError(
            f"{path} holds Python objects other than tensors{detail}; ddpm-tools never "
            "unpickles them: load it in the original project and save model.state_dict()"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is truncated or not a torch.save file ({first}); "
                              "download the checkpoint again") from None
    return _tensors_only(state, path)


def _tensors_only(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and {"state", "param_groups"} <= set(state):
        raise CheckpointError(f"{path} is an optimizer state (opt*.pt), not model weights; "
                              "import the model*.pt or ema_*.pt file instead")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of "
                              "tensors; import the model*.pt or ema_*.pt file")
    nested = [k for k, v in state.items() if isinstance(v, dict)]
    if nested:
        raise CheckpointError(
            f"{path} is a dict of dicts (keys {', '.join(map(str, list(state)[:4]))}), not a "
            f"model state dict; save the weights alone, e.g. torch.save(ckpt[{nested[0]!r}], "
            "'model.pt')")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path}: entry {bad[0] if bad else '?'!r} is not a tensor; "
                              "import a model state dict (model*.pt or ema_*.pt)")
    return state


def _flag_hint(key: str, cfg: OpenAIUNetConfig, state: dict[str, torch.Tensor],
               expected: dict[str, torch.Tensor]) -> str:
    """The flag that most likely differs, judged from the first mismatching key."""
    if key.startswith("label_emb"):
        return "--class_cond True? (only unconditional checkpoints are supported)"
    if key.startswith("time_embed.0") and key in state:
        return f"--num_channels {state[key].shape[1]}?"
    if key.startswith("out.2") and key in state:
        return f"--learn_sigma {state[key].shape[0] == 2 * cfg.in_channels}?"
    if "emb_layers" in key and key in state and key in expected:
        ratio = state[key].shape[0] / expected[key].shape[0]
        if ratio in (2.0, 0.5):
            return f"--use_scale_shift_norm {ratio == 2.0}?"
    n_in, n_expected = _count_blocks(state), _count_blocks(expected)
    levels = len(cfg.channel_mult)
    if n_in == 0:
        return "is it an improved-/guided-diffusion UNetModel at all?"
    if n_in != n_expected:
        if n_in % levels == 0 and n_in // levels - 1 >= 1:
            return f"--num_res_blocks {n_in // levels - 1}?"
        return "--image_size or --channel_mult?"
    if any(s in key for s in (".qkv.", ".proj_out.", ".norm.")):
        return "--attention_resolutions (or --num_heads)?"
    if ".op." in key or ".in_layers." in key or ".conv." in key:
        return "--resblock_updown?"
    return "--num_channels, --channel_mult or --image_size?"


def _count_blocks(state: dict[str, torch.Tensor]) -> int:
    """Number of ``input_blocks.N`` entries (1 + the largest N; 0 without any)."""
    found = [int(m.group(1)) for k in state if (m := re.match(r"input_blocks\.(\d+)\.", k))]
    return 1 + max(found) if found else 0


def check_state(net: OpenAIUNet, state: dict[str, torch.Tensor], path: Path) -> None:
    """Keys and shapes of ``state`` must equal the network's; else one sentence naming the
    first missing, unexpected or mis-shaped key and the likely flag."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or shaped):
        return
    if shaped:
        k = shaped[0]
        what = (f"{k} has shape {list(state[k].shape)} where the flags give "
                f"{list(expected[k].shape)}")
    elif unexpected:
        k = unexpected[0]
        what = f"it has {k}, which the flags' network lacks"
    else:
        k = missing[0]
        what = f"it lacks {k}, which the flags' network has"
    hint = _flag_hint(k, net.cfg, state, expected)
    raise CheckpointError(f"{path} does not fit --flags: {what} "
                          f"({len(missing)} missing, {len(unexpected)} unexpected, "
                          f"{len(shaped)} mis-shaped keys); {hint}")


def import_checkpoint(project: str, model_path: str | os.PathLike[str], flags: str,
                      out: str | os.PathLike[str],
                      channel_mult: tuple[float, ...] | None = None) -> ImportResult:
    """Write the checkpoint set ``out`` (a new or empty folder) from an improved-diffusion
    or guided-diffusion checkpoint described by its ``flags`` (MODEL_FLAGS and
    DIFFUSION_FLAGS in one string). ``channel_mult`` overrides the per-size rule."""
    values = parse_flags(project, flags)
    check_likelihood_flags(project, values)
    cfg = unet_config(project, values, channel_mult)
    schedule = make_schedule(str(values["noise_schedule"]), cfg.num_timesteps)
    out_dir = Path(out)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BadInputError(f"--out {out_dir} exists and is not an empty folder; choose a new "
                            "folder for the set")
    src = Path(model_path)
    state = read_state_dict(src)
    net = OpenAIUNet(cfg)
    check_state(net, state, src)
    net.load_state_dict(state, strict=True)  # the dtype casts only; keys are checked above
    blob = save({k: v.contiguous() for k, v in state.items()})
    variance, prediction = variance_and_prediction(values)
    source_sha = sha256_file(src)
    member = Member(index=0, t_lo=1, t_hi=schedule.T, arch=cfg, weights=WEIGHTS_NAME,
                    sha256=sha256_bytes(blob))
    size = cfg.image_size
    manifest = SetManifest(
        schedule=schedule, data=DataInfo(DATA_NAME, (3, size, size), IMAGE_LEVELS),
        prediction=prediction, variance=variance, members=(member,), clip_x0=True,
        training={"imported": {"project": project, "source": str(src), "sha256": source_sha,
                               "flags": flags, "parsed_flags": values}})
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / WEIGHTS_NAME, blob)
    write_manifest(out_dir, manifest)  # last: a set without its manifest is no set
    return ImportResult(out_dir, project, schedule.T, schedule.name, variance, prediction,
                        (3, size, size), sum(p.numel() for p in net.parameters()),
                        tuple(sorted({str(v.dtype).removeprefix("torch.")
                                      for v in state.values()})), source_sha)

