"""Profiles: both forms load; every malformed field is named in the error."""
import json

import numpy as np
import pytest

from control.profile import load_profile, profile_from_dict
from control.types import ControlError
from tests.conftest import run_cli

GOOD = {"name": "t", "round_compute_ms": {"1": 10, "2": 12, "3": 14}, "survival": [0.8, 0.6, 0.5]}


def test_tabular_profile_loads():
    p = profile_from_dict(GOOD)
    assert p.max_length == 3 and p.compute_ms.tolist() == [10, 12, 14]


def test_parametric_profile_expands_to_geometric_survival():
    p = profile_from_dict({"name": "g", "alpha": 0.5, "draft_ms_per_token": 2, "draft_ms_fixed": 1,
                           "verify_ms_fixed": 10, "verify_ms_per_token": 0.5, "max_length": 3})
    assert np.allclose(p.survival, [0.5, 0.25, 0.125])
    assert np.allclose(p.compute_ms, [1 + 2 + 10 + 1.0, 1 + 4 + 10 + 1.5, 1 + 6 + 10 + 2.0])


@pytest.mark.parametrize("patch, field", [
    ({"round_compute_ms": {"1": 10, "3": 14}}, r"missing lengths \[2\]"),
    ({"round_compute_ms": {"1": 10, "2": -1, "3": 14}}, "negative time"),
    ({"round_compute_ms": {"1": 10, "2": "x", "3": 14}}, "round_compute_ms: field '2'"),
    ({"survival": [0.8, 0.9, 0.5]}, "non-increasing"),
    ({"survival": [1.2, 0.9, 0.5]}, r"\[0, 1\]"),
    ({"survival": [0.8, 0.6]}, "'survival' must be a list of at least 3"),
    ({"survival": None}, "'survival'"),
])
def test_malformed_tabular_profile_names_the_field(patch, field):
    with pytest.raises(ControlError, match=field):
        profile_from_dict({**GOOD, **patch})


@pytest.mark.parametrize("patch, field", [
    ({"alpha": 1.5}, "'alpha'"), ({"verify_ms_fixed": -3}, "'verify_ms_fixed'"), ({"max_length": 2.5}, "'max_length'"),
])
def test_malformed_parametric_profile_names_the_field(patch, field):
    base = {"alpha": 0.5, "draft_ms_per_token": 2, "draft_ms_fixed": 1, "verify_ms_fixed": 10,
            "verify_ms_per_token": 0.5, "max_length": 3}
    with pytest.raises(ControlError, match=field):
        profile_from_dict({**base, **patch})


def test_missing_parametric_field_is_named():
    with pytest.raises(ControlError, match="missing field 'draft_ms_fixed'"):
        profile_from_dict({"alpha": 0.5, "draft_ms_per_token": 2, "verify_ms_fixed": 10,
                           "verify_ms_per_token": 0.5, "max_length": 3})


def test_file_that_is_not_json_is_refused(tmp_path):
    f = tmp_path / "p.json"
    f.write_text("{nope")
    with pytest.raises(ControlError, match="not valid JSON"):
        load_profile(f)


def test_cli_reports_a_bad_profile_in_one_line(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({**GOOD, "survival": [0.5, 0.7, 0.9]}))
    r = run_cli("theory", "--profile", str(f))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "non-increasing" in r.stderr


def test_cli_reports_an_unknown_policy_in_one_line():
    r = run_cli("simulate", "--profile", "control/profiles/heavy_head.json", "--policies", "auto,bogus", "--rounds", "5")
    assert r.returncode == 2 and "unknown policy 'bogus'" in r.stderr and r.stderr.count("\n") == 1


def test_theory_cli_prints_the_documented_json():
    r = run_cli("theory", "--profile", "control/profiles/heavy_head.json", "--delays", "0,20,150", "--json")
    out = json.loads(r.stdout)
    assert set(out) >= {"critical_delay_ms", "rows"}
    assert [row["best_length"] for row in out["rows"]] == sorted(row["best_length"] for row in out["rows"])
