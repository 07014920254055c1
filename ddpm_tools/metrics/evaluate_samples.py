"""Score a file of samples against a held-out data split (``ddpm-tools eval-samples``).

Images are compared in the feature space of a fixed network: the built-in digits
classifier (:mod:`ddpm_tools.metrics.classifier`) or, with ``features="inception"``, the
standard FID Inception-v3 from a local weights file. Continuous data (the 2-D sets) is
compared on raw coordinates. Reference features of each (data, split, feature network)
are computed once and cached on disk under ``$DDPM_TOOLS_CACHE/refstats`` (default
``~/.cache/ddpm-tools/refstats``). The samples file is the .npz ``ddpm-tools sample``
writes: key ``samples`` (images: uint8 level indices ``[N, C, H, W]``; continuous data:
float ``[N, D]``), optional ``levels`` (int) and ``data`` (str).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from ddpm_tools.core.stats import mean_and_se
from ddpm_tools.data import DATA_NAMES, DataSplit, has_true_density, load_data, true_log_density
from ddpm_tools.errors import BadInputError, DdpmToolsError
from ddpm_tools.io.files import atomic_write_safetensors, cache_root, sha256_bytes, sha256_file
from ddpm_tools.metrics import distances, two_sample
from ddpm_tools.metrics.classifier import (
    digits_features,
    inception_features_fn,
    load_digits_classifier,
)
from ddpm_tools.progress import ProgressFn

FEATURES = ("digits", "inception")  # feature networks for image data
MIN_SAMPLES = 10  # fewest samples scored (KID subsets and 3-NN balls need a few each)
REFERENCE_SEED = 0  # data seed of the reference split (2-D sets): fixed, so runs compare
RBF_SCALES = (0.05, 0.1, 0.2, 0.5, 1.0)  # MMD bandwidths as multiples of the reference RMS radius
CACHE_VERSION = "1"  # bump when the cached reference statistics change meaning


@dataclass(frozen=True)
class Metric:
    """One number of a sample report."""

    name: str  # machine name, e.g. "frechet_distance", "kid", "mmd2_rbf[h=0.1]"
    value: float  # the estimate (units in ``meaning``)
    se: float | None  # its standard error, where one exists, else None
    meaning: str  # what it measures and which direction is better


@dataclass(frozen=True)
class SampleReport:
    """Everything ``eval-samples`` measured, with what it was measured against."""

    samples_path: str  # the .npz file scored
    data: str  # data spec of the reference
    split: str  # reference split ("train" | "test")
    kind: str  # "images" (feature-space metrics) | "points" (continuous data, raw coordinates)
    n_samples: int  # samples scored
    n_reference: int  # reference examples
    seed: int  # seed of KID subsets / sliced-Wasserstein directions
    features: str | None  # "digits" | "inception/torch-fidelity" | "inception/pytorch-fid" | None
    classifier_accuracy: float | None  # digits classifier test accuracy in [0, 1] (digits only)
    classifier_sha256: str | None  # sha256 of the feature network's weights file
    reference_cache: str | None  # cache file of the reference statistics (None: not cached)
    metrics: tuple[Metric, ...]  # in display order

    def metric(self, name: str) -> Metric:
        """The metric called ``name`` (KeyError if absent)."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)


# ---------------------------------------------------------------- reading the samples file


def read_samples(path: Path) -> tuple[np.ndarray, int | None, str | None]:
    """The samples file: (``samples`` array, ``levels`` or None, ``data`` or None)."""
    if path.is_dir():
        raise BadInputError(f"samples file {path} is a folder; pass the .npz file that "
                            "ddpm-tools sample wrote (--samples FILE.npz)")
    if not path.is_file():
        raise BadInputError(f"samples file {path} does not exist; check --samples")
    fix = "write it with `ddpm-tools sample` or numpy.savez(path, samples=...)"
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise BadInputError(f"samples file {path} is not a readable .npz archive; {fix}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise BadInputError(f"samples file {path} is a single .npy array, not an .npz; {fix}")
    with npz:
        if "samples" not in npz.files:
            keys = ", ".join(npz.files) or "none"
            raise BadInputError(f"samples file {path} has no 'samples' array (keys: {keys}); {fix}")
        try:
            arrays = {k: np.asarray(npz[k]) for k in ("samples", "levels", "data")
                      if k in npz.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error):
            raise BadInputError(
                f"samples file {path} holds a damaged or object (pickled) array; {fix}"
            ) from None
    levels = None
    if "levels" in arrays:
        lv = arrays["levels"]
        if lv.size != 1 or lv.dtype.kind not in "iu":
            raise BadInputError(f"'levels' in {path} must be one integer (got {lv.dtype} "
                                f"{lv.shape}); re-save the samples")
        levels = int(lv.item())
    data = str(arrays["data"].item()) if "data" in arrays and arrays["data"].size == 1 else None
    return arrays["samples"], levels, data


def _check_samples(s: np.ndarray, file_levels: int | None, data: DataSplit,
                   path: Path) -> np.ndarray:
    """Validate samples against ``data``; return them as float64 in the data's units."""
    where = f"samples in {path}"
    want = "[N, " + ", ".join(str(d) for d in data.shape) + "]"
    if s.ndim != 1 + len(data.shape) or tuple(s.shape[1:]) != data.shape:
        raise BadInputError(
            f"{where} have shape {list(s.shape)} but {data.name} needs {want}; "
            "evaluate them against the data they were drawn for"
        )
    if s.shape[0] < MIN_SAMPLES:
        raise BadInputError(f"{where} are only {s.shape[0]}; draw at least {MIN_SAMPLES}")
    if data.levels is None:
        if s.dtype.kind != "f":
            raise BadInputError(f"{where} have dtype {s.dtype}; {data.name} needs float {want}")
        x = s.astype(np.float64)
        if not np.all(np.isfinite(x)):
            raise BadInputError(f"{where} contain NaN or infinite values; re-draw them")
        return x
    top = data.levels - 1
    if s.dtype != np.uint8:
        raise BadInputError(
            f"{where} have dtype {s.dtype}; {data.name} samples must be uint8 level indices "
            f"0..{top} of shape {want}"
        )
    if file_levels is not None and file_levels != data.levels:
        raise BadInputError(
            f"{where} were saved with levels={file_levels} but {data.name} has {data.levels} "
            "levels; evaluate them against the data they were drawn for"
        )
    if int(s.max()) > top:
        raise BadInputError(
            f"{where} hold level index {int(s.max())} but {data.name} has levels 0..{top}; "
            "save level indices, not pixel values"
        )
    return 2.0 * s.astype(np.float64) / top - 1.0


# ---------------------------------------------------------------- reference cache


def refstats_dir() -> Path:
    """Folder of cached reference statistics: ``$DDPM_TOOLS_CACHE/refstats`` or the default."""
    return cache_root() / "refstats"


def _cached(data: DataSplit, stats_id: str, names: tuple[str, ...],
            compute: Callable[[], dict[str, np.ndarray]],
            cache_dir: Path) -> tuple[dict[str, np.ndarray], str | None]:
    """Statistics ``names`` of the reference ``data``: read from the cache, or computed and cached.

    The key covers the cache version, data spec, split, ``stats_id`` (feature network and
    its sha256, or the 2-D statistics) and the sha256 of the reference array itself. A
    damaged or foreign file is recomputed; an unwritable folder just skips caching.
    Returns (arrays, cache file or None).
    """
    key_src = json.dumps([CACHE_VERSION, data.name, data.split, stats_id,
                          sha256_bytes(np.ascontiguousarray(data.x).tobytes())])
    key = hashlib.sha256(key_src.encode()).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9]+", "_", data.name)[-40:]
    path = cache_dir / f"{slug}-{data.split}-{stats_id.split('-')[0]}-{key[:16]}.safetensors"
    try:
        stored = load_file(str(path))
        if stored["key"].tobytes().decode() == key and set(names) <= stored.keys():
            return {k: stored[k] for k in names}, str(path)
    except (OSError, SafetensorError, KeyError, ValueError, UnicodeDecodeError):
        pass  # absent or damaged: recompute and overwrite
    arrays = compute()
    tensors = {**arrays, "key": np.frombuffer(key.encode(), dtype=np.uint8)}
    try:
        atomic_write_safetensors(path, save(tensors, metadata={"source": key_src}))
    except (DdpmToolsError, OSError):
        return arrays, None  # caching is an optimization: a read-only home still gets numbers
    return arrays, str(path)


def _feature_stats(features: np.ndarray) -> dict[str, np.ndarray]:
    """Reference features rounded to float32 (cached or not, the same numbers) and their fit."""
    f32 = np.ascontiguousarray(features, dtype=np.float32)
    mu, sigma = distances.gaussian_fit(f32)
    return {"features": f32, "mu": mu, "sigma": sigma}


# ---------------------------------------------------------------- the metrics


def _image_metrics(stats: dict[str, np.ndarray], feats: np.ndarray,
                   rng: np.random.Generator) -> tuple[Metric, ...]:
    ref = stats["features"].astype(np.float64)
    fd = distances.frechet_distance(stats["mu"], stats["sigma"], *distances.gaussian_fit(feats))
    kid, kid_se = distances.kid(ref, feats, rng)
    precision, recall = distances.precision_recall(ref, feats)
    k, b = distances.PR_NEIGHBOURS, distances.KID_SUBSETS
    return (
        Metric("frechet_distance", fd, None,
               "Frechet distance^2 of Gaussian fits to data and sample features (FID-style; "
               "0 = same mean and covariance; biased up at small N; lower is better)"),
        Metric("kid", kid, kid_se,
               f"unbiased MMD^2, cubic kernel, ± jackknife SE over {b} subsets (KID; ~0 "
               "when the distributions match; lower is better)"),
        Metric("precision", precision, None,
               f"share of samples on the data's {k}-NN feature manifold (fidelity; higher "
               "is better)"),
        Metric("recall", recall, None,
               f"share of data on the samples' {k}-NN feature manifold (coverage; higher is "
               "better)"),
    )


def _log_density_metrics(name: str, who: str, x: np.ndarray) -> tuple[Metric, ...]:
    logp = true_log_density(name, x)
    finite = np.isfinite(logp)
    v = logp[finite]
    m, s = mean_and_se(v) if v.size else (-np.inf, 0.0)
    mean, se = float(m), float(s)
    out = [Metric(f"{who}_mean_log_density", mean, se,
                  f"mean log p_true of the {who} (nats; p = 0 points left out); "
                  + ("best near the reference's; above it = too concentrated" if who == "samples"
                     else "what the data itself scores"))]
    if not finite.all():
        out.append(Metric(f"{who}_off_support", float(1.0 - finite.mean()), None,
                          f"share of the {who} where p_true = 0 (lower is better)"))
    return tuple(out)


def _point_metrics(data: DataSplit, x: np.ndarray, rng: np.random.Generator,
                   cache_dir: Path) -> tuple[tuple[Metric, ...], str | None]:
    ref = data.x.astype(np.float64)
    rms = float(np.sqrt(ref.var(axis=0).sum()))
    hs = tuple(float(f"{c * rms:.3g}") for c in RBF_SCALES)

    def compute() -> dict[str, np.ndarray]:
        rbf, dist = two_sample.within_sums(ref, np.asarray(hs))
        return {"rbf_within": rbf, "dist_within": np.array([dist])}

    within, cache = _cached(data, f"points-{hs}", ("rbf_within", "dist_within"), compute,
                            cache_dir)
    mmd2, energy = two_sample.mmd2_rbf_and_energy(
        ref, x, hs, (within["rbf_within"], float(within["dist_within"][0])))
    sw1 = two_sample.sliced_wasserstein1(ref, x, rng)
    out = [Metric(f"mmd2_rbf[h={h:g}]", float(v), None,
                  f"unbiased MMD^2, RBF kernel, bandwidth {c:g} x RMS radius of the data "
                  "(~0 when the distributions match; lower is better)")
           for h, c, v in zip(hs, RBF_SCALES, mmd2, strict=True)]
    out.append(Metric("sliced_w1", sw1, None,
                      f"sliced Wasserstein-1, {two_sample.SW_PROJECTIONS} random directions "
                      "(data units; lower is better)"))
    out.append(Metric("energy_distance", energy, None,
                      "unbiased 2E|X-Y| - E|X-X'| - E|Y-Y'| (data units; ~0 when the "
                      "distributions match; lower is better)"))
    if has_true_density(data.name):
        out += [*_log_density_metrics(data.name, "samples", x),
                *_log_density_metrics(data.name, "reference", ref)]
    return tuple(out), cache


def evaluate_samples(
    samples_path: str | Path,
    data_spec: str | None = None,
    split: str = "test",
    seed: int = 0,
    *,
    features: str = "digits",
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> SampleReport:
    """Score the samples in ``samples_path`` against ``split`` of ``data_spec``.

    Args:
        samples_path: .npz with ``samples`` (images: uint8 ``[N, C, H, W]`` level indices;
            continuous data: float ``[N, D]``), optional ``levels`` and ``data``.
        data_spec: data set to compare with (default: the file's ``data`` entry).
        split: reference split, "test" (held out) or "train".
        seed: seeds the KID subsets and the sliced-Wasserstein directions.
        features: image feature network, "digits" (built in) or "inception" (needs
            ``weights`` and torch-fidelity or pytorch-fid).
        weights: FID Inception weights file (safetensors or a weights-only .pth/.pt).
        cache_dir: folder of cached reference statistics (default :func:`refstats_dir`).
        progress: progress callback (Inception feature extraction).
    """
    path = Path(samples_path)
    samples, file_levels, file_data = read_samples(path)
    spec = data_spec if data_spec is not None else file_data
    if spec is None:
        raise BadInputError(f"samples file {path} does not name its data set; pass --data")
    if file_data is not None and file_data != spec and {file_data, spec} <= set(DATA_NAMES):
        raise BadInputError(f"samples in {path} were drawn for {file_data!r}, not {spec!r}; "
                            f"pass --data {file_data}")
    if features not in FEATURES:
        raise BadInputError(f"unknown --features {features!r}; use one of {', '.join(FEATURES)}")
    if weights is not None and features != "inception":
        raise BadInputError("--weights is the Inception weights file; add --features inception")
    data = load_data(spec, split, seed=REFERENCE_SEED)
    x = _check_samples(samples, file_levels, data, path)
    rng = np.random.default_rng(seed)
    cache_dir = Path(cache_dir) if cache_dir is not None else refstats_dir()
    if data.levels is None:
        if features == "inception":
            raise BadInputError(f"--features inception is for images; {spec} is continuous data "
                                "and is compared on raw coordinates (drop --features)")
        metrics, cache = _point_metrics(data, x, rng, cache_dir)
        return SampleReport(str(path), spec, split, "points", int(x.shape[0]), data.n, seed,
                            features=None, classifier_accuracy=None, classifier_sha256=None,
                            reference_cache=cache, metrics=metrics)

    extract: Callable[[np.ndarray], np.ndarray]
    if features == "digits":
        model, info = load_digits_classifier()
        extract = functools.partial(digits_features, model)
        feature_name, sha, accuracy = "digits", info.sha256, info.test_accuracy
    elif data.shape[0] not in (1, 3):
        raise BadInputError(f"Inception takes 1- or 3-channel images; {spec} has "
                            f"{data.shape[0]} channels")
    else:
        extract, label = inception_features_fn(None if weights is None else Path(weights),
                                               progress)
        feature_name, sha, accuracy = f"inception/{label}", sha256_file(str(weights)), None
    stats, cache = _cached(data, f"{feature_name.replace('/', '_')}-{sha}",
                           ("features", "mu", "sigma"), lambda: _feature_stats(extract(data.x)),
                           cache_dir)
    feats = extract(x.astype(np.float32)).astype(np.float32).astype(np.float64)
    return SampleReport(str(path), spec, split, "images", int(x.shape[0]), data.n, seed,
                        features=feature_name, classifier_accuracy=accuracy,
                        classifier_sha256=sha, reference_cache=cache,
                        metrics=_image_metrics(stats, feats, rng))
