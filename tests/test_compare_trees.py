"""`experiment compare`'s tree rows (pipeline/experiments/trees.py): the references come from the
run itself, the best fixed tree in hindsight and the best chain at each delay, on the same prompts."""
import numpy as np
import pytest

from pipeline.analysis.frames import rounds_frame
from pipeline.experiments.trees import label_trees, tree_rows


def rounds(policy: str, ms_per_token: float, delay: float, prompts: int = 8, nodes: int = 1, depth=None,
           seed: int = 0, edge: str = "edge-1") -> list[dict]:
    """Four rounds per prompt at about `ms_per_token` (seeded noise), request ids ending in the prompt."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(prompts):
        for i in range(4):
            tokens = int(rng.integers(2, 6))
            out.append({"request_id": f"{policy}-{edge}-{k}", "round": i, "edge_id": edge, "policy": policy,
                        "draft_length": nodes, "accepted": tokens - 1, "tokens": tokens, "delay_ms": delay,
                        "round_ms": tokens * ms_per_token * (1 + 0.05 * rng.standard_normal()),
                        "tree_depth": depth})
    return out


CHAINS = rounds_frame(rounds("fixed:8", 30.0, 50.0, nodes=8) + rounds("auto", 31.0, 50.0, nodes=7, seed=1)
                      + rounds("fixed:8", 2.0, 0.0, nodes=8, seed=2) + rounds("fixed:2", 1.5, 0.0, nodes=2, seed=3))
TREES = rounds_frame(rounds("tree:auto", 22.0, 50.0, nodes=20, depth=8, seed=4)
                     + rounds("tree:8x3", 21.0, 50.0, nodes=24, depth=8, seed=5)
                     + rounds("tree:2x2", 27.0, 50.0, nodes=4, depth=2, seed=6)
                     + rounds("tree:auto", 1.6, 0.0, nodes=2, depth=2, seed=7)
                     + rounds("tree:2x2", 1.55, 0.0, nodes=4, depth=2, seed=8))


def by(rows: list[dict], delay: str, policy: str) -> dict:
    return next(r for r in rows if r["delay"] == delay and r["policy"] == policy)


def test_the_best_fixed_tree_in_hindsight_is_the_fixed_shape_of_least_ms_per_token_at_each_delay():
    rows = tree_rows(CHAINS, TREES, ["fixed:8", "fixed:2", "auto"])
    assert by(rows, "50.0", "tree:8x3").get("reference") == "best_fixed_tree"
    assert by(rows, "0.0", "tree:2x2").get("reference") == "best_fixed_tree"
    assert by(rows, "50.0", "tree:auto")["best_fixed_tree"] == "tree:8x3"  # auto itself is never the reference


def test_tree_auto_gets_a_paired_gap_to_the_best_fixed_tree_and_to_the_best_chain():
    auto = by(tree_rows(CHAINS, TREES, ["fixed:8", "fixed:2", "auto"]), "50.0", "tree:auto")
    assert auto["best_chain"] == "fixed:8" and auto["vs_best_fixed_tree"]["pairs"] == 8
    assert 0 < auto["vs_best_fixed_tree"]["gap_pct"] < 15  # 22 vs 21 ms/token, noisy
    assert -35 < auto["vs_best_chain"]["gap_pct"] < -20    # 22 vs 30
    assert auto["best_chain_over_this"] == pytest.approx(30.0 / 22.0, abs=0.1)
    assert auto["mean_depth"] == 8.0 and auto["mean_nodes"] == 20.0


def test_the_best_chain_is_the_least_over_every_chain_policy_run_at_that_delay():
    row = by(tree_rows(CHAINS, TREES, ["fixed:8", "fixed:2", "auto"]), "0.0", "tree:auto")
    assert row["best_chain"] == "fixed:2" and row["best_chain_ms_per_token"] == pytest.approx(1.5, abs=0.1)


def test_tree_edges_rounds_are_labelled_with_their_shape_and_other_edges_rounds_dropped():
    frame = rounds_frame(rounds("auto", 20.0, 50.0, edge="edge-d50-tree-4x2", prompts=1)
                         + rounds("auto", 20.0, 50.0, edge="edge-d50", prompts=1))
    labelled = label_trees(frame, {"edge-d50-tree-4x2": "4x2"})
    assert labelled["policy"].unique().to_list() == ["tree:4x2"] and labelled.height == 4


@pytest.mark.slow
def test_compare_runs_each_tree_shape_on_its_own_edge_with_the_same_prompts(tmp_path):
    """Live: a broker, a verifier and one edge per shape (real processes, bundled pair)."""
    from pipeline.experiments.lab import LabConfig, lab_prompts
    from pipeline.experiments.trees import run_trees
    from pipeline.transport import aio

    cfg = LabConfig(tmp_path, quick=True, edge_device=None, cloud_device=None, concurrency=4, max_new_tokens=12)
    trees, _ = aio.run(run_trees(cfg, [20.0], ("auto", "3x2"), lab_prompts(3, seed=0), 3))
    assert set(trees["policy"].unique()) == {"tree:auto", "tree:3x2"}
    fixed = trees.filter(trees["policy"] == "tree:3x2")
    assert set(fixed["tree_depth"].drop_nulls()) <= {1, 2, 3} and fixed["tree_depth"].drop_nulls().len() > 0
    for p in ("tree:auto", "tree:3x2"):  # the same three prompts, by the index their ids end in
        ids = trees.filter(trees["policy"] == p)["request_id"].unique().to_list()
        assert sorted(i.rsplit("-", 1)[1] for i in ids) == ["0", "1", "2"]


def test_the_report_shows_tree_auto_against_the_best_fixed_tree():
    from pipeline.experiments.report import _tree_table

    lines = _tree_table(tree_rows(CHAINS, TREES, ["fixed:8", "fixed:2", "auto"]))
    auto = next(x for x in lines if x.startswith("| 50.0 | tree:auto |"))
    assert any(x.startswith("| 50.0 | tree:8x3 (**best fixed tree**)") for x in lines) and "fixed:8 (" in auto
