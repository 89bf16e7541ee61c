"""`pipeline.bench.auto_screen` reproduces the bench's `auto` rows, and can rerun them on more seeds (issue 23:
five seeds hid a lock-in one seed in 20 has)."""
import pytest

from control.evaluation import evaluate
from pipeline.bench.auto_screen import screen

PROFILE, LABEL = "steep/expensive-draft#1", "const 0 ms"


@pytest.fixture(scope="module")
def base() -> dict:
    return evaluate(policies=("auto",), delays=(0.0,), rounds=200, seeds=2, workers=1, tuned=False,
                    kinds=("short",), members=1)


def test_a_screen_without_overrides_reproduces_the_bench_row_and_its_rivals(base):
    out = screen(base, ["short"], {}, [PROFILE], [LABEL], workers=1)
    kind = out["by_kind"]["short"]
    assert kind["new"]["mean_gap_pct"] == kind["base"]["mean_gap_pct"]
    assert kind["new"]["behind"] == kind["base"]["behind"] is not None
    assert out["seeds"] == 2


def test_more_seeds_rerun_the_unchanged_auto_too_and_leave_rivals_out(base):
    out = screen(base, ["short"], {}, [PROFILE], [LABEL], workers=1, seeds=4)
    kind = out["by_kind"]["short"]
    assert out["seeds"] == 4 and kind["new"]["behind"] is None
    assert kind["new"]["worst_seed_pct"] == kind["base"]["worst_seed_pct"]  # both on the same 4 seeds
    row = next(r for r in base["per_profile"] if r["profile"] == PROFILE)
    assert kind["base"]["worst_seed_pct"] >= round(row["policies"]["auto"][LABEL]["worst"], 3)  # seeds 0-1 among them


def test_an_unknown_constant_is_refused_in_one_line(base):
    with pytest.raises(SystemExit, match="has no NOT_A_CONSTANT"):
        screen(base, ["short"], {"NOT_A_CONSTANT": 1}, [PROFILE], [LABEL], workers=1)


def test_the_unchanged_rerun_is_not_run_with_the_change_a_worker_applied_before(base):
    # one worker runs the changed auto, then the unchanged one: the override must not stay behind
    changed = screen(base, ["short"], {"OPTIMISM_MIN": 0}, [PROFILE], [LABEL], workers=1, seeds=3)["by_kind"]["short"]
    plain = screen(base, ["short"], {}, [PROFILE], [LABEL], workers=1, seeds=3)["by_kind"]["short"]
    assert changed["base"]["mean_gap_pct"] == plain["new"]["mean_gap_pct"]
    assert changed["new"]["mean_gap_pct"] != plain["new"]["mean_gap_pct"]  # the override does change this cell


def test_a_dotted_name_overrides_another_control_module_and_an_unknown_module_is_refused(base):
    from control import streaks
    screen(base, ["short"], {"streaks.RESTART": False}, [PROFILE], [LABEL], workers=1)
    assert streaks.RESTART is True  # the worker's override stayed in the worker
    with pytest.raises(SystemExit, match="no module control.nope"):
        screen(base, ["short"], {"nope.X": 1}, [PROFILE], [LABEL], workers=1)


def test_a_set_without_a_value_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    from pipeline.bench import auto_screen
    monkeypatch.setattr("sys.argv", ["auto_screen", str(tmp_path / "base.json"), "--set", "OPTIMISM_Z"])
    with pytest.raises(SystemExit) as e:
        auto_screen.main()
    assert e.value.code == 2 and "--set takes NAME=VALUE, got 'OPTIMISM_Z'" in capsys.readouterr().err
