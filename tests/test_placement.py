"""Session placement: a new session starts on the least loaded verifier the edge knows, by the queue
times its verdicts reported; with fewer than two known, or for a share of sessions, the queue group
chooses (how new and idle verifiers are found)."""
from __future__ import annotations

from nodes.protocol.placement import Placement


def test_with_fewer_than_two_verifiers_known_the_queue_group_chooses():
    p = Placement(explore=0.0)
    assert p.choose(0.0) is None
    p.observe("a", 5.0, 0.0)
    assert p.choose(0.0) is None


def test_the_verifier_with_the_shortest_recent_queue_gets_the_session():
    p = Placement(explore=0.0)
    for t in range(5):
        p.observe("busy", 80.0, t * 0.1)
        p.observe("idle", 3.0, t * 0.1)
    assert p.choose(0.5) == "idle"


def test_an_estimate_decays_without_news_so_a_drained_verifier_is_tried_again():
    p = Placement(explore=0.0)
    p.observe("was-busy", 100.0, 0.0)
    p.observe("steady", 20.0, 10.0)
    assert p.choose(10.0) == "was-busy"  # 100 ms ten seconds ago is less than 20 ms now


def test_a_gone_or_silent_verifier_is_no_longer_chosen():
    p = Placement(explore=0.0)
    for v in ("a", "b", "c"):
        p.observe(v, 10.0 if v == "a" else 50.0, 0.0)
    p.forget("a")
    assert p.choose(0.0) in ("b", "c")
    p.observe("b", 50.0, 100.0)
    p.observe("c", 60.0, 100.0)
    assert p.choose(100.0) == "b"


def test_a_share_of_sessions_is_left_to_the_queue_group():
    p = Placement(seed=3, explore=0.25)
    p.observe("a", 1.0, 0.0)
    p.observe("b", 2.0, 0.0)
    picks = [p.choose(0.0) for _ in range(2000)]
    assert 0.2 < picks.count(None) / len(picks) < 0.3 and set(picks) == {None, "a"}


def test_a_verifier_whose_heartbeat_stopped_gets_no_new_session_until_heard_again():
    from nodes.protocol.liveness import PeerTable

    peers = PeerTable(window_s=3.0)
    p = Placement(explore=1.0, peers=peers)  # explore 1.0: without heartbeats the queue group would always choose
    p.observe("stalled", 1.0, 0.0)
    p.observe("healthy", 50.0, 0.0)
    peers.heard("stalled", 1.5)
    peers.heard("healthy", 2.0)
    assert p.choose(2.0) is None  # both heard recently: placement as before (here: the queue group)
    peers.heard("healthy", 5.0)
    picks = {p.choose(5.0) for _ in range(50)}
    assert picks == {"healthy"}  # straight to the live one, never the queue group that may pick the stalled one
    peers.heard("stalled", 6.0)
    assert p.choose(6.0) is None


def test_a_draining_verifier_gets_no_new_session_and_the_only_other_is_chosen():
    from nodes.protocol.liveness import PeerTable

    peers = PeerTable(window_s=3.0)
    p = Placement(explore=0.0, peers=peers)
    peers.heard("leaving", 0.0, draining=True)
    peers.heard("staying", 0.0)
    assert p.choose(0.5) == "staying"


def test_elsewhere_names_a_live_verifier_other_than_the_one_that_timed_out():
    from nodes.protocol.liveness import PeerTable

    peers = PeerTable(window_s=3.0)
    p = Placement(explore=0.0, peers=peers)
    assert p.elsewhere("a", 0.0) is None  # no heartbeats heard: nobody known to be alive
    peers.heard("a", 0.0)
    assert p.elsewhere("a", 0.0) is None
    peers.heard("b", 0.0)
    peers.heard("c", 0.0)
    p.observe("b", 40.0, 0.0)
    p.observe("c", 5.0, 0.0)
    assert p.elsewhere("a", 1.0) == "c"
    peers.heard("b", 4.0)
    assert p.elsewhere("a", 4.0) == "b"  # c stopped: not a candidate
