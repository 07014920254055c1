"""Schedule files: round trip, export forms, every bad-file case."""

import json

import numpy as np
import pytest

from ddpm_tools.errors import BadInputError
from ddpm_tools.schedules.schedule_file import (
    Schedule,
    read_schedule,
    schedule_to_dict,
    write_schedule,
)


def make(**kw) -> Schedule:
    fields = dict(T=1000, budget=4, timesteps=[0, 112, 403, 761, 1000], predicted_bpd=1.25,
                  method="dp", source={"costs": "c.safetensors", "n_samples": 512})
    fields.update(kw)
    return Schedule(**fields)


def test_round_trip_and_export_forms(tmp_path):
    s = make()
    write_schedule(tmp_path / "s.json", s)
    obj = json.loads((tmp_path / "s.json").read_text())
    assert obj["timesteps"] == [0, 112, 403, 761, 1000]
    assert obj["diffusers_timesteps"] == [999, 760, 402, 111]  # 0-based, descending
    assert obj["improved_diffusion_use_timesteps"] == [111, 402, 760, 999]  # 0-based, sorted
    r = read_schedule(tmp_path / "s.json")
    assert (r.T, r.budget, r.predicted_bpd, r.method, r.source) == (
        1000, 4, 1.25, "dp", {"costs": "c.safetensors", "n_samples": 512})
    assert r.timesteps.dtype == np.int64 and r.timesteps.tolist() == obj["timesteps"]
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_unknown_prediction_and_truncated_schedule(tmp_path):
    s = make(T=100, budget=2, timesteps=[0, 20, 60], predicted_bpd=None, method="given",
             source={})
    write_schedule(tmp_path / "s.json", s)
    r = read_schedule(tmp_path / "s.json")
    assert r.predicted_bpd is None and r.timesteps[-1] == 60
    assert r.diffusers_timesteps == [59, 19]


def write_obj(tmp_path, mutate):
    obj = schedule_to_dict(make())
    mutate(obj)
    p = tmp_path / "s.json"
    p.write_text(json.dumps(obj))
    return p


@pytest.mark.parametrize("mutate,message", [
    (lambda o: o.pop("timesteps"), "lacks timesteps"),
    (lambda o: o.pop("T"), "lacks T"),
    (lambda o: o.update(timesteps=[0, 500, 400, 1000], budget=3,
                        diffusers_timesteps=[999, 399, 499]), "strictly increase"),
    (lambda o: o.update(timesteps=[0, 500, 1001]), "beyond T = 1000"),
    (lambda o: o.update(timesteps=[3, 500, 1000]), "start at 0"),
    (lambda o: o.update(budget=5), "budget 5 does not match its 4 steps"),
    (lambda o: o.update(method="magic"), "method 'magic' is not one of"),
    (lambda o: o.update(timesteps="0,1000"), "list of integers"),
    (lambda o: o.update(timesteps=[0, 1.5, 1000]), "list of integers"),
    (lambda o: o.update(T="1000"), "T must be an integer"),
    (lambda o: o.update(predicted_bpd="low"), "predicted_bpd must be a finite number"),
    (lambda o: o.update(source={"nested": {"a": 1}}), "not a string or number"),
    (lambda o: o.update(source=[1]), "source must be a JSON object"),
    (lambda o: o.update(diffusers_timesteps=[0, 1, 2, 3]), "disagrees with timesteps"),
    (lambda o: o.update(improved_diffusion_use_timesteps=[1]), "disagrees with timesteps"),
])
def test_bad_files(tmp_path, mutate, message):
    p = write_obj(tmp_path, mutate)
    with pytest.raises(BadInputError, match=message) as e:
        read_schedule(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,message", [
    ("{not json", "not valid JSON"),
    ("[0, 1000]", "not a JSON object"),
])
def test_not_a_schedule(tmp_path, text, message):
    p = tmp_path / "s.json"
    p.write_text(text)
    with pytest.raises(BadInputError, match=message):
        read_schedule(p)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        read_schedule(tmp_path / "nope.json")


def test_constructor_rejects_non_finite_prediction():
    with pytest.raises(BadInputError, match="finite number"):
        make(predicted_bpd=float("inf"))
