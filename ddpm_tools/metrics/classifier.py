"""The classifiers whose feature spaces score image samples.

Built in: a small CNN trained on the digits train split. Frechet distance, KID and
precision/recall of 8x8 digit samples are computed in its penultimate-layer features, the
way FID uses Inception-v3 for natural images. The weights ship inside the package as
safetensors (``ddpm_tools/assets/digits_classifier.safetensors``, metadata:
``test_accuracy``, ``seed``, ``version``, ``arch``);
``benchmarks/train_digits_classifier.py`` rebuilds them. Every result computed with it
carries its test accuracy and the sha256 of that file.

Optional: the standard FID Inception-v3 of torch-fidelity or pytorch-fid, built from a
local weights file (:func:`inception_features_fn`); nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ddpm_tools.errors import BadInputError, CheckpointError, MissingExtraError
from ddpm_tools.io.files import atomic_write_safetensors, sha256_file, torch_load_weights_only
from ddpm_tools.progress import ProgressFn, report

CLASSIFIER_VERSION = "1"  # format/architecture version written to the weights' metadata
CLASSIFIER_ARCH = "digits-cnn-v1"  # architecture name written to the weights' metadata
N_FEATURES = 64  # width of the penultimate layer (the feature space)
N_CLASSES = 10
INCEPTION_BATCH = 50  # images per Inception forward pass
ASSET_PATH = Path(__file__).resolve().parent.parent / "assets" / "digits_classifier.safetensors"


class DigitsCNN(torch.nn.Module):
    """Three 3x3 conv layers and two linear layers for ``x: [N, 1, 8, 8]`` in [-1, 1].

    ``features(x) -> [N, 64]`` (post-ReLU penultimate layer), ``forward(x) -> [N, 10]`` logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)  # 8x8
        self.conv2 = torch.nn.Conv2d(32, 64, 3, padding=1)  # 8x8, then pool to 4x4
        self.conv3 = torch.nn.Conv2d(64, 128, 3, padding=1)  # 4x4, then pool to 2x2
        self.fc1 = torch.nn.Linear(128 * 2 * 2, N_FEATURES)
        self.fc2 = torch.nn.Linear(N_FEATURES, N_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``[N, 64]`` of ``x: [N, 1, 8, 8]``."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, 10]`` of ``x: [N, 1, 8, 8]``."""
        return self.fc2(self.features(x))


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """How the shipped weights were trained (deterministic on CPU for a given seed)."""

    epochs: int = 40  # passes over the 1,437 train images
    batch_size: int = 64  # images per Adam step
    lr: float = 2e-3  # Adam learning rate, cosine-annealed to 0
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    max_shift: int = 1  # augmentation: random translation by up to this many pixels


@dataclass(frozen=True)
class ClassifierInfo:
    """What identifies the feature network behind a result."""

    path: str  # weights file read
    sha256: str  # hex sha256 of that file's bytes
    test_accuracy: float  # accuracy on the fixed digits test split (360 images), in [0, 1]
    seed: int  # seed the weights were trained with
    version: str  # CLASSIFIER_VERSION of the file
    n_features: int  # feature dimension F


def _init_weights(model: DigitsCNN, generator: torch.Generator) -> None:
    """PyTorch's default Conv/Linear initialization, drawn from ``generator``."""
    layers: tuple[torch.nn.Conv2d | torch.nn.Linear, ...] = (
        model.conv1, model.conv2, model.conv3, model.fc1, model.fc2)
    for layer in layers:
        torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(layer.weight[0].numel())  # 1 / sqrt(fan_in)
        assert layer.bias is not None  # every layer is built with a bias
        torch.nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x: [B, 1, 8, 8]`` by up to ``max_shift`` pixels (fill -1)."""
    if max_shift == 0:
        return x
    s, (h, w) = max_shift, x.shape[2:]
    padded = F.pad(x, (s, s, s, s), value=-1.0)
    offsets = torch.randint(0, 2 * s + 1, (x.shape[0], 2), generator=generator)
    out = torch.empty_like(x)
    for dy in range(2 * s + 1):
        for dx in range(2 * s + 1):
            sel = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
            out[sel] = padded[sel, :, dy:dy + h, dx:dx + w]
    return out


@torch.no_grad()
def classifier_accuracy(model: DigitsCNN, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x: [N, 1, 8, 8]`` whose argmax logit equals the label ``y: [N]``."""
    model.eval()
    logits = model(torch.as_tensor(np.asarray(x, dtype=np.float32)))
    return float((logits.argmax(1).numpy() == np.asarray(y)).mean())


def train_digits_classifier(
    seed: int,
    config: ClassifierTrainConfig = ClassifierTrainConfig(),
    progress: ProgressFn | None = None,
) -> tuple[DigitsCNN, float]:
    """Train :class:`DigitsCNN` on the digits train split only; return it and its test accuracy.

    Deterministic on CPU: initialization, shuffling and augmentation all draw from one
    ``torch.Generator`` seeded with ``seed``. Loss: cross-entropy; optimizer: AdamW with a
    cosine learning-rate schedule. The feature layer is then rescaled to RMS 1 on the
    train split; test accuracy is measured once, at the end.
    """
    from ddpm_tools.data.digits import load_digits_split

    x_train, y_train = load_digits_split("train")
    x_test, y_test = load_digits_split("test")
    gen = torch.Generator().manual_seed(seed)
    model = DigitsCNN()
    _init_weights(model, gen)
    xt, yt = torch.as_tensor(x_train), torch.as_tensor(y_train)
    steps_per_epoch = math.ceil(xt.shape[0] / config.batch_size)
    total = config.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(xt.shape[0], generator=gen)
        for b in range(steps_per_epoch):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            xb = _random_shift(xt[idx], config.max_shift, gen)
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        report(progress, "train classifier", epoch + 1, config.epochs, loss=loss.item())
    _normalize_features(model, x_train)
    return model, classifier_accuracy(model, x_test, y_test)


@torch.no_grad()
def _normalize_features(model: DigitsCNN, x_train: np.ndarray) -> None:
    """Rescale the feature layer so features have RMS 1 over the train split.

    fc1 is divided and fc2 multiplied by the RMS; ReLU is positively homogeneous, so the
    logits are unchanged while x.y / F is O(1), the scale the KID kernel (x.y/F + 1)^3
    expects (Inception pool3 features are on that scale too).
    """
    model.eval()
    rms = float(model.features(torch.as_tensor(x_train)).pow(2).mean().sqrt())
    model.fc1.weight.div_(rms)
    model.fc1.bias.div_(rms)
    model.fc2.weight.mul_(rms)


def save_digits_classifier(model: DigitsCNN, path: str | Path, test_accuracy: float,
                           seed: int) -> str:
    """Write the weights as safetensors with metadata, atomically; return the file's sha256."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "test_accuracy": repr(float(test_accuracy)),
        "seed": str(int(seed)),
        "version": CLASSIFIER_VERSION,
        "arch": CLASSIFIER_ARCH,
        "n_features": str(N_FEATURES),
        "trained_on": "digits train split (1437 images); accuracy on the test split (360)",
    }
    atomic_write_safetensors(path, save(state, metadata=meta))
    return sha256_file(path)


def load_digits_classifier(path: str | Path | None = None) -> tuple[DigitsCNN, ClassifierInfo]:
    """Load the shipped digits classifier (or the safetensors file at ``path``) in eval mode."""
    path = Path(path) if path is not None else ASSET_PATH
    if not path.is_file():
        raise CheckpointError(
            f"digits classifier weights {path} are missing; reinstall ddpm-tools or run "
            "benchmarks/train_digits_classifier.py"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        model = DigitsCNN()
        model.load_state_dict(state, strict=True)
        info = ClassifierInfo(
            path=str(path),
            sha256=sha256_file(path),
            test_accuracy=float(meta["test_accuracy"]),
            seed=int(meta["seed"]),
            version=meta["version"],
            n_features=N_FEATURES,
        )
    except (SafetensorError, OSError, RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"digits classifier weights {path} are unreadable or do not match {CLASSIFIER_ARCH} "
            f"({type(e).__name__}); reinstall ddpm-tools or retrain them"
        ) from None
    model.eval()
    return model, info


@torch.no_grad()
def digits_features(model: DigitsCNN, x: np.ndarray | torch.Tensor,
                    batch_size: int = 2048) -> np.ndarray:
    """Penultimate-layer features ``[N, 64]`` float64 of images ``x: [N, 1, 8, 8]`` in [-1, 1]."""
    xt = torch.as_tensor(x).to(torch.float32)
    if xt.ndim != 4 or tuple(xt.shape[1:]) != (1, 8, 8):
        raise BadInputError(
            f"the digits classifier takes images of shape [N, 1, 8, 8] (got {tuple(xt.shape)}); "
            "use --features inception for other image sizes"
        )
    model.eval()
    chunks = [model.features(xt[i:i + batch_size]) for i in range(0, xt.shape[0], batch_size)]
    if not chunks:
        return np.zeros((0, N_FEATURES))
    return torch.cat(chunks).double().numpy()


# ---------------------------------------------------------------- FID Inception-v3 (optional extra)


def _inception_backend() -> tuple[str, Any]:
    """(label, module) of the first importable FID Inception implementation."""
    for label, name in (("torch-fidelity", "torch_fidelity.feature_extractor_inceptionv3"),
                        ("pytorch-fid", "pytorch_fid.inception")):
        with contextlib.suppress(ImportError):
            return label, importlib.import_module(name)
    raise MissingExtraError(
        "--features inception needs torch-fidelity or pytorch-fid, and neither is installed; "
        "run `pip install torch-fidelity` (or pytorch-fid), or use --features digits")


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a .pth/.pt read with ``weights_only=True``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file as load_torch

            return load_torch(str(path))
        state = torch_load_weights_only(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(
            f"Inception weights {path} are unreadable as safetensors or a weights-only "
            f"PyTorch state dict ({type(e).__name__}); pass the FID Inception weights file"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"Inception weights {path} do not hold a state dict")
    return state


def inception_features_fn(
    weights: Path | None, progress: ProgressFn | None = None,
) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """(f, backend label) with f: images ``[N, C, H, W]`` in [-1, 1] (C = 1 or 3) -> ``[N, 2048]``.

    The standard FID Inception-v3 (pool3 features) of torch-fidelity or pytorch-fid, built
    with the state dict from the local ``weights`` file instead of their download.
    """
    if weights is None or not weights.is_file():
        raise BadInputError(f"--features inception needs --weights FILE, a local FID Inception "
                            f"weights file (got {weights}); nothing is downloaded")
    label, module = _inception_backend()
    state = _load_state_dict(weights)
    original = module.load_state_dict_from_url
    module.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        if label == "torch-fidelity":
            net = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        else:
            net = module.InceptionV3([module.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except RuntimeError as e:
        raise CheckpointError(f"Inception weights {weights} do not fit the {label} network "
                              f"({str(e).splitlines()[0]})") from None
    finally:
        module.load_state_dict_from_url = original
    net.eval()

    @torch.no_grad()
    def features(x: np.ndarray) -> np.ndarray:
        chunks = []
        for i in range(0, x.shape[0], INCEPTION_BATCH):
            x01 = torch.as_tensor((np.asarray(x[i:i + INCEPTION_BATCH], np.float32) + 1) / 2)
            x01 = x01.expand(-1, 3, -1, -1)
            if label == "torch-fidelity":  # takes uint8 images
                out = net(torch.round(x01 * 255).to(torch.uint8))[0]
            else:  # takes floats in [0, 1]
                out = net(x01)[0]
            chunks.append(out.reshape(x01.shape[0], -1).double().numpy())
            report(progress, "inception features", i + x01.shape[0], x.shape[0])
        return np.concatenate(chunks)

    return features, label
