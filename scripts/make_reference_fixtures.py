"""Write the golden fixtures of improved-diffusion / guided-diffusion into tests/fixtures/openai.

Run by hand, never in CI: it needs local copies of the original repositories (their
code is not part of ddpm-tools and is never committed here):

    git clone https://github.com/openai/improved-diffusion /tmp/improved-diffusion
    git clone https://github.com/openai/guided-diffusion /tmp/guided-diffusion
    python scripts/make_reference_fixtures.py /tmp/improved-diffusion /tmp/guided-diffusion

The originals need only torch and numpy for their model and diffusion modules (mpi4py
and blobfile are stubbed if an import chain asks for them).

For each tiny configuration it builds the original ``UNetModel``, fills every entry of
its ``state_dict()`` by :func:`fill_weights` (a seeded rule, so the fixture stores the
keys, shapes and dtypes instead of megabytes of numbers; values are float16-exact, so a
float16 checkpoint holds them without loss), and records inputs x_t, our times t in
[1, T] and the original's outputs through the diffusion's own time wrapping
(``SpacedDiffusion._wrap_model``: index t - 1, rescaled when ``rescale_timesteps``).
For one configuration it also records ``SpacedDiffusion._vb_terms_bpd`` (bits/dim) of
every step of a respaced schedule, for a given x_0 and noise. Files written:
``<name>.json`` (flags, keys, meta) and ``<name>.safetensors`` (x, t, out, vb arrays).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "openai"
WEIGHT_SEED = 20210218  # base seed of fill_weights
BATCH = 3  # examples per fixture

# name -> (project, flags, original UNetModel override or None, vb schedule or None).
# The 16x16 configs build the original UNetModel directly (improved-diffusion's flags
# know only 32, 64 and 256); the flag-built ones go through create_model_and_diffusion.
CONFIGS: dict[str, tuple[str, str, dict | None, list[int] | None]] = {
    "improved16_eps": (
        "improved-diffusion",
        "--image_size 16 --num_channels 32 --num_res_blocks 1 --num_heads 2 "
        "--attention_resolutions 8 --use_scale_shift_norm False --diffusion_steps 50",
        {"channel_mult": (1, 2)}, None),
    "improved32_learned": (
        "improved-diffusion",
        "--image_size 32 --num_channels 32 --num_res_blocks 1 --num_heads 2 "
        "--attention_resolutions 8 --learn_sigma True --diffusion_steps 40 "
        "--noise_schedule cosine",
        None, [0, 1, 5, 12, 24, 39]),
    "improved32_x0_small": (
        "improved-diffusion",
        "--image_size 32 --num_channels 32 --num_res_blocks 1 --num_heads 1 "
        "--attention_resolutions 4 --predict_xstart True --sigma_small True "
        "--rescale_timesteps False --diffusion_steps 30",
        None, None),
    "guided16_updown": (
        "guided-diffusion",
        "--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 "
        "--num_head_channels 16 --attention_resolutions 16,8 --resblock_updown True "
        "--use_new_attention_order True --learn_sigma True --diffusion_steps 50",
        None, None),
    "guided32_fp16": (
        "guided-diffusion",
        "--image_size 32 --num_channels 32 --num_res_blocks 1 --channel_mult 1,1,2 "
        "--num_heads 2 --attention_resolutions 16 --use_fp16 True --learn_sigma True "
        "--rescale_timesteps True --noise_schedule cosine --diffusion_steps 60",
        None, None),
}


def fill_weights(shapes: list[tuple[str, list[int]]], seed: int = WEIGHT_SEED
                 ) -> dict[str, np.ndarray]:
    """Seeded float16-exact float32 values for every state-dict entry (name, shape).

    Matrices and kernels: N(0, 1/fan_in); 1-D entries named ``*.weight`` (norm gains):
    1 + N(0, 0.1^2); other 1-D entries (biases): N(0, 0.1^2). Each entry draws from its
    own generator, seeded by (seed, sha256 of its name).
    """
    out = {}
    for name, shape in shapes:
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        rng = np.random.default_rng([seed, key])
        z = rng.standard_normal(shape)
        if len(shape) >= 2:
            z = z / np.sqrt(np.prod(shape[1:]))
        elif name.endswith(".weight"):
            z = 1 + 0.1 * z
        else:
            z = 0.1 * z
        out[name] = z.astype(np.float16).astype(np.float32)
    return out


def _import_original(path: Path, package: str) -> types.ModuleType:
    for stub in ("mpi4py", "blobfile"):
        sys.modules.setdefault(stub, types.ModuleType(stub))
    sys.path.insert(0, str(path))
    try:
        __import__(f"{package}.script_util")
        return sys.modules[f"{package}.script_util"]
    finally:
        sys.path.pop(0)


def _parse(su: types.ModuleType, flags: str) -> dict:
    """The flags over the project's model_and_diffusion_defaults(), via its own parser."""
    parser = argparse.ArgumentParser()
    su.add_dict_to_argparser(parser, su.model_and_diffusion_defaults())
    return vars(parser.parse_args(flags.split()))


def _build(su: types.ModuleType, args: dict, override: dict | None):
    if override is None:
        return su.create_model_and_diffusion(**args)
    unet = sys.modules[su.__name__.replace("script_util", "unet")]
    model = unet.UNetModel(
        in_channels=3, model_channels=args["num_channels"],
        out_channels=6 if args["learn_sigma"] else 3, num_res_blocks=args["num_res_blocks"],
        attention_resolutions=tuple(args["image_size"] // int(r)
                                    for r in args["attention_resolutions"].split(",")),
        num_heads=args["num_heads"], use_scale_shift_norm=args["use_scale_shift_norm"],
        **override)
    keys = ("diffusion_steps", "learn_sigma", "sigma_small", "noise_schedule", "use_kl",
            "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas",
            "timestep_respacing")
    kw = {k: args[k] for k in keys if k in args}
    kw["steps"] = kw.pop("diffusion_steps")
    return model, su.create_gaussian_diffusion(**kw)


def make_fixture(name: str, su: types.ModuleType, out: Path) -> None:
    project, flags, override, vb_schedule = CONFIGS[name]
    args = _parse(su, flags)
    model, diffusion = _build(su, args, override)
    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    values = fill_weights(shapes)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()}, strict=True)
    model.eval()
    T = int(args["diffusion_steps"])
    size = int(args["image_size"])
    g = torch.Generator().manual_seed(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
    x = torch.randn(BATCH, 3, size, size, generator=g)
    t = torch.tensor([1, T // 2, T])  # ddpm-tools times; the original index is t - 1
    if hasattr(model, "dtype"):
        model.dtype = torch.float32  # guided-diffusion: the float32 reference first
    with torch.no_grad():
        ref = diffusion._wrap_model(model)(x, t - 1)
    arrays = {"x": x, "t": t, "out": ref.float()}
    if args.get("use_fp16"):
        model.convert_to_fp16()  # what the original saves after training in fp16
        model.dtype = torch.float16
        with torch.no_grad():  # half convolutions where the CPU supports them
            try:
                arrays["out_fp16"] = diffusion._wrap_model(model)(x, t - 1).float()
            except RuntimeError:
                pass
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in model.state_dict().items()}
    meta = {"project": project, "flags": flags, "T": T, "weight_seed": WEIGHT_SEED,
            "state_dict": [[k, s, dtypes[k]] for k, s in shapes]}
    if vb_schedule is not None:
        arrays.update(_vb_terms(su, args, model, vb_schedule, g))
        meta["vb_schedule_0based"] = vb_schedule
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in arrays.items()}, str(out / f"{name}.safetensors"))
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{name}: {len(shapes)} tensors, output {tuple(ref.shape)}")


def _vb_terms(su: types.ModuleType, args: dict, model, use_timesteps: list[int],
              g: torch.Generator) -> dict[str, torch.Tensor]:
    """``_vb_terms_bpd`` of each step of the respaced schedule ``use_timesteps`` (0-based):
    ``vb[k]`` [B] bits/dim for the step from index use_timesteps[k] (k = 0: decoder)."""
    respace = sys.modules[su.__name__.replace("script_util", "respace")]
    gd = sys.modules[su.__name__.replace("script_util", "gaussian_diffusion")]
    base = su.create_gaussian_diffusion(
        steps=args["diffusion_steps"], learn_sigma=args["learn_sigma"],
        noise_schedule=args["noise_schedule"], predict_xstart=args["predict_xstart"],
        rescale_timesteps=args["rescale_timesteps"])
    spaced = respace.SpacedDiffusion(
        use_timesteps=set(use_timesteps), betas=gd.get_named_beta_schedule(
            args["noise_schedule"], args["diffusion_steps"]),
        model_mean_type=base.model_mean_type, model_var_type=base.model_var_type,
        loss_type=base.loss_type, rescale_timesteps=args["rescale_timesteps"])
    size = int(args["image_size"])
    levels = torch.randint(0, 256, (BATCH, 3, size, size), generator=g)
    x0 = levels.float() * 2 / 255 - 1
    noise = torch.randn(len(use_timesteps), BATCH, 3, size, size, generator=g)
    vb, x_t = [], []
    with torch.no_grad():
        for k in range(len(use_timesteps)):
            tk = torch.full((BATCH,), k, dtype=torch.long)
            xt = spaced.q_sample(x0, tk, noise=noise[k])
            vb.append(spaced._vb_terms_bpd(spaced._wrap_model(model), x0, xt, tk,
                                           clip_denoised=True)["output"])
            x_t.append(xt)
    return {"vb_x0_levels": levels.to(torch.uint8), "vb_x_t": torch.stack(x_t),
            "vb_bpd": torch.stack(vb).double()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("improved_diffusion", type=Path, help="checkout of openai/improved-diffusion")
    p.add_argument("guided_diffusion", type=Path, help="checkout of openai/guided-diffusion")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    for project, path, package in (("improved-diffusion", a.improved_diffusion,
                                    "improved_diffusion"),
                                   ("guided-diffusion", a.guided_diffusion, "guided_diffusion")):
        for m in [m for m in sys.modules if m.split(".")[0] in ("improved_diffusion",
                                                                  "guided_diffusion")]:
            del sys.modules[m]
        su = _import_original(path, package)
        for name, cfg in CONFIGS.items():
            if cfg[0] == project:
                make_fixture(name, su, a.out)


if __name__ == "__main__":
    main()
