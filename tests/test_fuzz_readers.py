"""Fuzz every reader with random bytes, random JSON and random safetensors headers.

Each reader either reads the input or raises a DdpmToolsError whose message is one
sentence (one line); never another exception, never a hang (a time limit per case).
Bounded to a few seconds in all: a few dozen examples per reader, no shrinking budget.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
from contextlib import contextmanager

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ddpm_tools.costs.table_file import read_cost_table  # noqa: E402
from ddpm_tools.data import load_data  # noqa: E402
from ddpm_tools.errors import DdpmToolsError  # noqa: E402
from ddpm_tools.metrics.evaluate_samples import read_samples  # noqa: E402
from ddpm_tools.schedules.schedule_file import read_schedule  # noqa: E402
from ddpm_tools.sets import read_manifest  # noqa: E402
from ddpm_tools.sets.checkpoint_set import CheckpointSet  # noqa: E402

CASE_SECONDS = 5  # a case running longer is a hang
EXAMPLES = int(os.environ.get("DDPM_TOOLS_FUZZ_EXAMPLES", "20"))  # per reader; more: deeper
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)
DTYPES = ["F64", "F32", "F16", "I64", "U8", "BOOL", "XX", 7]


@st.composite
def safetensors_bytes(draw, names=("L", "prior", "L_se", "x")):
    """A safetensors file with a random (often inconsistent) header and data."""
    header: dict[str, object] = {}
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(
            st.sampled_from(["T", "dims", "version", "seed", "n_samples", "decoder", "data"]),
            st.text(max_size=6) | st.integers(-3, 30).map(str), max_size=5))
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        a, b = draw(st.integers(-8, 300)), draw(st.integers(-8, 300))
        header[name] = {"dtype": draw(st.sampled_from(DTYPES)),
                        "shape": draw(st.lists(st.integers(-1, 12), max_size=3)),
                        "data_offsets": [a, b]}
    text = json.dumps(header).encode()
    if draw(st.booleans()):
        text = draw(st.binary(max_size=40)) + text
    size = len(text) if draw(st.booleans()) else draw(st.integers(0, 2**40))
    return struct.pack("<Q", size) + text + draw(st.binary(max_size=300))


inputs = st.one_of(st.binary(max_size=400), json_values.map(lambda v: json.dumps(v).encode()),
                   safetensors_bytes())


@contextmanager
def time_limit(seconds: int):
    def hang(signum, frame):
        raise TimeoutError(f"a reader ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check(read):
    """``read()`` returns, or raises a one-sentence DdpmToolsError; nothing else."""
    with time_limit(CASE_SECONDS):
        try:
            read()
        except DdpmToolsError as e:
            msg = str(e)
            assert msg and "\n" not in msg.strip(), msg
            assert "Traceback" not in msg, msg


def mutate(obj, path, value):
    """``obj`` with the entry at ``path`` (keys/indices, as far as they exist) set to
    ``value``."""
    if not path or not isinstance(obj, dict | list) or not obj:
        return value
    obj = json.loads(json.dumps(obj))
    key = path[0]
    if isinstance(obj, dict):
        key = sorted(obj)[key % len(obj)]
    else:
        key = key % len(obj)
    obj[key] = mutate(obj[key], path[1:], value)
    return obj


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A valid (untrained) manifest and schedule to mutate."""
    from ddpm_tools.models import MLPConfig
    from ddpm_tools.training.config import TrainConfig
    from ddpm_tools.training.create import SetSpec, build_manifest, create_set

    root = tmp_path_factory.mktemp("fuzz")
    create_set(root / "set", build_manifest(SetSpec(intervals=2, T=12, schedule="cosine"),
                                            load_data("moons", "train"), TrainConfig(),
                                            arch_config=MLPConfig(hidden=8, depth=1,
                                                                  time_dim=4)))
    schedule = {"T": 12, "budget": 2, "timesteps": [0, 5, 12], "predicted_bpd": 1.0,
                "method": "dp", "source": {}}
    return {"set": root / "set",
            "manifest": json.loads((root / "set" / "ddpm_set.json").read_text()),
            "schedule": schedule}


mutation = st.tuples(st.lists(st.integers(0, 50), max_size=4), json_values)


@FUZZ
@given(data=inputs, mut=mutation, use_mutation=st.booleans())
def test_manifest(tmp_path_factory, valid, data, mut, use_mutation):
    folder = tmp_path_factory.mktemp("m")
    if use_mutation:
        data = json.dumps(mutate(valid["manifest"], *mut)).encode()
    (folder / "ddpm_set.json").write_bytes(data)
    check(lambda: read_manifest(folder))


@FUZZ
@given(data=inputs, mut=mutation, use_mutation=st.booleans())
def test_schedule_file(tmp_path_factory, valid, data, mut, use_mutation):
    path = tmp_path_factory.mktemp("s") / "schedule.json"
    if use_mutation:
        data = json.dumps(mutate(valid["schedule"], *mut)).encode()
    path.write_bytes(data)
    check(lambda: read_schedule(path))


@FUZZ
@given(data=st.one_of(safetensors_bytes(), st.binary(max_size=300)))
def test_cost_table(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("c") / "costs.safetensors"
    path.write_bytes(data)
    check(lambda: read_cost_table(path))


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


arrays = st.dictionaries(
    st.sampled_from(["samples", "levels", "data", "x", "x_train", "x_test", "y"]),
    st.one_of(
        st.lists(st.floats(allow_nan=True), max_size=8).map(np.array),
        st.lists(st.integers(-300, 300), max_size=8).map(lambda v: np.array(v, np.int64)),
        st.integers(0, 4).map(lambda n: np.zeros((n, 2), np.float32)),
        st.integers(0, 3).map(lambda n: np.zeros((n, 1, 4, 4), np.uint8)),
        st.text(max_size=5).map(np.array)),
    max_size=3)
npz_inputs = st.one_of(st.binary(max_size=300), arrays.map(_npz))


@FUZZ
@given(data=npz_inputs)
def test_samples_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("n") / "samples.npz"
    path.write_bytes(data)
    check(lambda: read_samples(path))


@FUZZ
@given(data=npz_inputs)
def test_npz_data(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("d") / "data.npz"
    path.write_bytes(data)
    check(lambda: load_data(f"npz:{path}", "train"))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@FUZZ
@given(files=st.lists(st.one_of(st.binary(max_size=200),
                                 st.binary(max_size=200).map(lambda b: PNG_SIGNATURE + b)),
                      min_size=1, max_size=3))
def test_png_folder_data(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("p")
    for i, data in enumerate(files):
        (folder / f"img{i}.png").write_bytes(data)
    check(lambda: load_data(f"folder:{folder}", "train"))


@FUZZ
@given(index=inputs, prior=st.one_of(safetensors_bytes(names=("means", "x")),
                                      st.binary(max_size=200)),
       entry=st.fixed_dictionaries({"t": st.integers(-2, 14), "kind": st.sampled_from(
           ["gmm", "flow", "x"]), "config": json_values, "info": json_values}),
       use_entry=st.booleans())
def test_priors(tmp_path_factory, valid, index, prior, entry, use_entry):
    from ddpm_tools.io.files import sha256_bytes
    from ddpm_tools.priors.store import load_priors

    s = tmp_path_factory.mktemp("pr") / "set"
    shutil.copytree(valid["set"], s)
    (s / "priors").mkdir()
    (s / "priors" / "p.safetensors").write_bytes(prior)
    if use_entry:
        entry = {**entry, "file": "p.safetensors", "sha256": sha256_bytes(prior)}
        index = json.dumps({"format": "ddpm-tools/aux-priors", "version": 1,
                            "priors": [entry]}).encode()
    (s / "priors" / "priors.json").write_bytes(index)
    cset = CheckpointSet(s, read_manifest(s))
    check(lambda: load_priors(cset))
