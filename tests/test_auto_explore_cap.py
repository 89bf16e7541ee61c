"""`_explore` leaves alone a length whose compute is already known (EXPLORE_PLAYS, issue 23; off by default).

The exploration rule exists for compute that jumps at a length never played; a few plays settle that.
On heavy-head/cheap-draft#1 at 5 ms over 200 rounds (the short kind's worst cell, best length 8) it
kept playing lengths 5-6, 28 times and more, because their J lies within a few % of the leader's and
the compute lower bound shrinks only as 1/sqrt(plays): playing them never reveals the positions past
them that decide it (seed 4: 106 of rounds 41-200 at lengths <= 6, 2.76 % of its 3.94 % expected gap).
"""
import numpy as np

from control.families import family
from control.policies import auto
from control.simulator import const_scenario, run_policy


def test_explore_stops_replaying_a_length_once_its_compute_is_known(monkeypatch):
    monkeypatch.setattr(auto, "EXPLORE_PLAYS", 8)
    prof = family("heavy-head", "cheap-draft", 1)[0]
    sc = const_scenario(prof, 5.0, 200)
    short = [int(np.sum(run_policy(auto.AutoPolicy(8, seed=s), prof, sc, s).lengths[40:] <= 6)) for s in range(6)]
    assert max(short) <= 30, short  # without the cap: 16, 11, 23, 17, 106, 73
