"""The command-line flags of improved-diffusion and guided-diffusion, read as they read them.

Each project describes a checkpoint by the flags of its scripts, over the defaults of its
``model_and_diffusion_defaults()`` (reproduced in :data:`DEFAULTS`). :func:`parse_flags`
reads a ``--flags`` string (``--name value`` or ``--name=value``; booleans as their
``str2bool``: yes/no, true/false, t/f, y/n, 1/0); :func:`unet_config` turns the values
into an :class:`~ddpm_tools.models.openai_unet.OpenAIUNetConfig` with the projects' own
rules (channel multipliers per image size, attention resolutions -> downsampling rates).
"""

from __future__ import annotations

import difflib
import shlex
from typing import Any

from ddpm_tools.errors import BadInputError
from ddpm_tools.models.openai_unet import OpenAIUNetConfig

PROJECTS = ("improved-diffusion", "guided-diffusion")
_COMMON: dict[str, Any] = {
    "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4,
    "num_heads_upsample": -1, "attention_resolutions": "16,8", "dropout": 0.0,
    "learn_sigma": False, "class_cond": False, "diffusion_steps": 1000,
    "noise_schedule": "linear", "timestep_respacing": "", "use_kl": False,
    "predict_xstart": False, "rescale_learned_sigmas": True, "use_checkpoint": False,
    "use_scale_shift_norm": True,
}
# each project's model_and_diffusion_defaults()
DEFAULTS: dict[str, dict[str, Any]] = {
    "improved-diffusion": {**_COMMON, "sigma_small": False, "rescale_timesteps": True},
    "guided-diffusion": {**_COMMON, "num_head_channels": -1, "channel_mult": "",
                         "resblock_updown": False, "use_fp16": False,
                         "use_new_attention_order": False, "rescale_timesteps": False,
                         "rescale_learned_sigmas": False},
}
# image size -> channel multipliers, when --channel_mult is not given
CHANNEL_MULT: dict[str, dict[int, tuple[float, ...]]] = {
    "improved-diffusion": {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)},
    "guided-diffusion": {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4),
                         128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)},
}
_TRUE, _FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")


def _check_project(project: str) -> None:
    if project not in PROJECTS:
        raise BadInputError(f"unknown project {project!r}; choose improved-diffusion or "
                            "guided-diffusion")


def _value(project: str, name: str, text: str) -> Any:
    default = DEFAULTS[project][name]
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low not in _TRUE + _FALSE:
                raise ValueError
            return low in _TRUE
        return type(default)(text)
    except ValueError:
        kind = "True or False" if isinstance(default, bool) else f"a {type(default).__name__}"
        raise BadInputError(f"--flags: --{name} {text!r} is not {kind}; give e.g. --{name} "
                            f"{default}") from None


def parse_flags(project: str, flags: str) -> dict[str, Any]:
    """Every flag of ``project``'s defaults, overridden by the ``flags`` string."""
    _check_project(project)
    values = dict(DEFAULTS[project])
    try:
        tokens = shlex.split(flags)
    except ValueError as e:
        raise BadInputError(f"--flags cannot be split into words ({e}); check the quotes") \
            from None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise BadInputError(f"--flags: expected a flag like --image_size, got {tok!r}; "
                                'pass "--name value" pairs as in MODEL_FLAGS')
        name, eq, text = tok[2:].partition("=")
        if name not in values:
            close = difflib.get_close_matches(name, list(values), n=1)
            hint = f"did you mean --{close[0]}?" if close else \
                f"{project} knows {', '.join('--' + k for k in sorted(values))}"
            raise BadInputError(f"--flags: {project} has no flag --{name}; {hint}")
        if not eq:
            if i + 1 >= len(tokens):
                raise BadInputError(f"--flags: --{name} has no value; give e.g. --{name} "
                                    f"{DEFAULTS[project][name]}")
            i += 1
            text = tokens[i]
        values[name] = _value(project, name, text)
        i += 1
    return values


def check_likelihood_flags(project: str, v: dict[str, Any]) -> None:
    """Refuse what ddpm-tools cannot score: class-conditional models, respaced imports,
    unknown noise schedules."""
    if v["class_cond"]:
        raise BadInputError("--flags has --class_cond True: only unconditional checkpoints are "
                            "supported; import an unconditional model")
    if v["timestep_respacing"]:
        raise BadInputError(
            f"--flags has --timestep_respacing {v['timestep_respacing']}: a likelihood needs "
            "the full-T model; drop the flag (ddpm-tools finds the short schedule itself)")
    if v["noise_schedule"] not in ("linear", "cosine"):
        raise BadInputError(f"--flags: unknown --noise_schedule {v['noise_schedule']!r}; "
                            "choose linear or cosine")


def unet_config(project: str, v: dict[str, Any],
                channel_mult: tuple[float, ...] | None = None) -> OpenAIUNetConfig:
    """The network the flags ``v`` describe (``channel_mult`` overrides the per-size rule,
    for tiny test networks of improved-diffusion, whose flags know only 32, 64, 256)."""
    size = int(v["image_size"])
    if channel_mult is None and v.get("channel_mult"):
        try:
            channel_mult = tuple(float(m) for m in str(v["channel_mult"]).split(","))
        except ValueError:
            raise BadInputError(f"--flags: --channel_mult {v['channel_mult']!r} is not a "
                                "comma-separated list of numbers, e.g. 1,2,2,2") from None
    if channel_mult is None:
        table = CHANNEL_MULT[project]
        if size not in table:
            raise BadInputError(
                f"--flags: {project} builds no network for --image_size {size} (it knows "
                f"{', '.join(map(str, sorted(table)))}"
                + ("; or give --channel_mult)" if project == "guided-diffusion" else ")"))
        channel_mult = table[size]
    try:
        ds = tuple(size // int(r) for r in str(v["attention_resolutions"]).split(","))
    except (ValueError, ZeroDivisionError):
        raise BadInputError(f"--flags: --attention_resolutions {v['attention_resolutions']!r} "
                            "is not a comma-separated list of resolutions, e.g. 16,8") from None
    return OpenAIUNetConfig(
        project=project, image_size=size, in_channels=3,
        model_channels=int(v["num_channels"]), out_channels=6 if v["learn_sigma"] else 3,
        num_res_blocks=int(v["num_res_blocks"]), attention_ds=ds, channel_mult=channel_mult,
        num_heads=int(v["num_heads"]), num_head_channels=int(v.get("num_head_channels", -1)),
        num_heads_upsample=int(v["num_heads_upsample"]),
        use_scale_shift_norm=bool(v["use_scale_shift_norm"]),
        resblock_updown=bool(v.get("resblock_updown", False)),
        use_new_attention_order=bool(v.get("use_new_attention_order", False)),
        use_fp16=bool(v.get("use_fp16", False)), num_timesteps=int(v["diffusion_steps"]),
        rescale_timesteps=bool(v["rescale_timesteps"]))


def variance_and_prediction(v: dict[str, Any]) -> tuple[str, str]:
    """(variance type, prediction) as the projects' ``create_gaussian_diffusion`` picks them."""
    if v["learn_sigma"]:
        variance = "learned_range"
    else:
        variance = "fixed_small" if v.get("sigma_small") else "fixed_large"
    return variance, "x0" if v["predict_xstart"] else "eps"
