"""Simulated tree rounds (control/tree_sim.py) and `specstop simulate --trees`."""
import json
import subprocess
import sys

import numpy as np
import pytest

from control.tree_dp import optimal_tree_set
from control.tree_sim import draw_ranks, load_tree_table, simulate_trees, walk
from control.trees import TreeCost, expected_tokens, optimal_trees, spine
from control.types import ControlError

P1 = np.linspace(0.8, 0.6, 12)
ACCEPT = np.stack([P1, 0.45 * (1 - P1), 0.2 * (1 - P1)], axis=1)
COST = TreeCost(draft_step_ms=0.75, draft_node_ms=0.01, verify_ms=1.8, verify_node_ms=0.07)


@pytest.mark.parametrize("n", [1, 5, 12, 20])
def test_the_vectorised_programme_finds_the_recursive_programmes_best_value(n):
    tree, value = optimal_tree_set(ACCEPT, [n])[n]
    assert value == pytest.approx(optimal_trees(ACCEPT, n)[n - 1][1])
    assert expected_tokens(tree, ACCEPT) == pytest.approx(value)
    assert tree.nodes == n


def test_a_simulated_rounds_mean_tokens_is_the_trees_expected_tokens():
    rng = np.random.default_rng(0)
    tree = optimal_tree_set(ACCEPT, [24])[24][0]
    tokens = [len(walk(tree, draw_ranks(ACCEPT, rng.random(12)))) + 1 for _ in range(20000)]
    se = np.std(tokens) / np.sqrt(len(tokens))
    assert abs(np.mean(tokens) - expected_tokens(tree, ACCEPT)) < 4 * se


def test_the_walk_goes_down_while_the_targets_rank_is_drafted():
    t = spine(3, 2)  # nodes 0,1 at depth 1; 2,3 under 0; 4,5 under 2
    assert walk(t, np.array([1, 1, 2])) == [0, 2, 5]
    assert walk(t, np.array([1, 3, 1])) == [0]  # rank 3 was not drafted
    assert walk(t, np.array([2, 1, 1])) == [1]  # node 1 is a leaf
    assert walk(t, np.array([0, 1, 1])) == []  # past the table: a miss


def test_the_learner_is_near_the_oracle_and_ahead_of_the_best_chain_at_high_delay():
    res = simulate_trees(ACCEPT, COST, [100.0], rounds=1500, seeds=2)
    row = res["rows"][0]
    assert row["oracle"]["width"] >= 2
    assert row["learner"]["gap_to_oracle_pct"] < 8.0  # exploration included
    assert row["chain_over_learner"] > 1.2


def test_a_table_file_without_cost_is_refused(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"accept": ACCEPT.tolist()}))
    with pytest.raises(ControlError, match="'accept' and 'cost'"):
        load_tree_table(f)


def test_simulate_trees_prints_a_row_per_delay(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"accept": ACCEPT.tolist(), "cost": COST.__dict__}))
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "simulate", "--trees", str(f), "--delays", "0,50",
                          "--rounds", "200", "--seeds", "1", "--json"], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    res = json.loads(out)
    assert [r["delay_ms"] for r in res["rows"]] == [0.0, 50.0]
    assert {"oracle", "best_chain", "learner", "chain_over_learner"} <= set(res["rows"][0])


def test_simulate_without_profile_or_trees_names_what_is_missing():
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "simulate"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--profile is required" in r.stderr
