"""The continuous speculation tree (nodes/models/stream_tree.py) is lossless.

Greedy: the output equals target-only on the bundled pair for three prompts, also when the link
drops and duplicates node messages and drops, duplicates and reorders verdicts, and with a tree
bounded to a few nodes. Sampling: on a 4-token vocabulary the joint of the first three tokens passes
a chi-square test against the target's exact one, and a wrong acceptance (candidates tried against
the target's distribution without taking the rejected ones out) fails the same test.
"""
import pytest
import torch

from nodes.models.errors import ModelError
from nodes.models.stream_tree import Acceptance, LinkFaults, stream_tree_generate
from nodes.protocol.stream_tree import Limits
from tests.sample_pool import count_cells
from tests.test_pipelined import (CONTROL_SAMPLES, PARAMS, PROMPT, SAMPLES, TEXTS, chi2, chi2_critical, encode,
                                  exact_joint3, target_only)


@pytest.mark.parametrize("text", TEXTS)
def test_greedy_output_equals_target_only(pair, text):
    prompt = encode(pair, text)
    got = stream_tree_generate(pair, prompt, 24, one_way_ms=2.0)
    assert got.token_ids == target_only(pair, prompt, 24)


def test_a_wider_tree_gives_the_same_output(pair):
    prompt = encode(pair, TEXTS[2])
    got = stream_tree_generate(pair, prompt, 24, one_way_ms=2.0, width=3, cumulative=0.9, batch=4)
    assert got.token_ids == target_only(pair, prompt, 24)


def test_lost_duplicated_and_reordered_messages_change_nothing_but_the_time(pair):
    """The edge's first message is the context alone (it opens the cloud's session); the second always
    carries the root's expansion (the root is the only node on the frontier when the edge starts), and
    the cloud can decide nothing without it: dropping it forces a stall that only the edge's resend can
    end, whatever the timing. The other faults land wherever the timing puts them; the output must not
    depend on where."""
    prompt = encode(pair, TEXTS[0])
    faults = LinkFaults(drop_up=frozenset({1, 4}), duplicate_up=frozenset({0, 2, 3, 6}),
                        drop_down=frozenset({1}), duplicate_down=frozenset({0, 2}), late_down=frozenset({3, 4}))
    got = stream_tree_generate(pair, prompt, 24, one_way_ms=2.0, faults=faults, resend_after_s=0.1)
    assert got.resends >= 1  # the lost root expansion was made good by resending the live tree
    assert got.token_ids == target_only(pair, prompt, 24)


def test_a_tree_bounded_to_a_few_nodes_still_gives_the_target_output(pair):
    prompt = encode(pair, TEXTS[1])
    got = stream_tree_generate(pair, prompt, 24, one_way_ms=2.0, limits=Limits(max_nodes=5), batch=2)
    assert got.token_ids == target_only(pair, prompt, 24)


def test_misses_do_not_depend_on_the_delay(pair):
    """Each token is decided at a node whose children the draft alone chose, so the misses are the
    same at any delay (what the cost rule's zero-delay calibration relies on)."""
    prompt = encode(pair, TEXTS[2])
    runs = [stream_tree_generate(pair, prompt, 24, one_way_ms=d) for d in (0.0, 5.0)]
    assert runs[0].misses == runs[1].misses > 0


def test_the_misses_every_width_would_have_had_are_counted_by_any_width(pair):
    """The edge keeps the draft's top tokens of each node it expands, so from one request it knows how
    many committed tokens each width's children would have missed (control/stream_width.py): at the
    width it ran, exactly its misses; the same counts whichever width ran."""
    prompt = encode(pair, TEXTS[2])
    runs = {w: stream_tree_generate(pair, prompt, 24, one_way_ms=2.0, width=w) for w in (1, 2, 8)}
    for w, r in runs.items():
        assert r.judged == len(r.token_ids)  # every token was decided at a node the edge expanded
        assert r.judged - r.covered[w - 1] == r.misses, f"width {w}"
        assert r.covered == sorted(r.covered)  # more children never cover less
        assert (r.judged, r.covered) == (runs[1].judged, runs[1].covered)
    assert runs[1].misses > runs[8].misses


@pytest.mark.parametrize("new", [1, 3])
def test_the_edge_drafts_nothing_past_the_requests_end(pair, new):
    """While the last verdict is on its way the edge has nothing left to propose: over a 20 ms link it
    would otherwise draft levels past the end (a device's forward for nothing, and one it would be busy
    with when the verdict lands). Every expansion proposes a position inside the request, and each
    forward expands at least one node, so a request without misses takes at most `new` forwards."""
    prompt = encode(pair, TEXTS[0])
    got = stream_tree_generate(pair, prompt, new, one_way_ms=20.0, width=8)
    assert got.token_ids == target_only(pair, prompt, new)
    assert got.misses == 0
    assert 1 <= got.draft_forwards <= new


def test_a_width_outside_the_limits_is_refused(pair):
    with pytest.raises(ModelError, match="width"):
        stream_tree_generate(pair, [1, 2], 4, 0.0, width=9)


# --- sampling ---------------------------------------------------------------------------------------

class NoResidual(Acceptance):
    """Wrong on purpose: each candidate is tried against the target's distribution itself, and the
    fallback is drawn from it too, so candidates are counted more than once."""

    def choose(self, p, candidates, vocab, gen):
        for i, x in enumerate(candidates):
            if float(torch.rand((), generator=gen)) < float(p[x]):
                return i, x
        return -1, int(torch.multinomial(p.float(), 1, generator=gen))


def empirical_joint3(tiny_pair, acceptance: Acceptance, fill: bool = False, one_way_ms: float = 0.0,
                     stats: dict | None = None, samples: int = SAMPLES) -> torch.Tensor:
    def cell(seed: int) -> tuple[int, int, int]:
        r = stream_tree_generate(tiny_pair, PROMPT, 3, one_way_ms, PARAMS, seed=seed, width=2, cumulative=1.0,
                                 batch=2, acceptance=acceptance, fill=fill)
        a, b, c = r.token_ids[:3]
        return 16 * a + 4 * b + c, r.fills, r.followed

    counts, (fills, followed) = count_cells(cell, samples)
    if stats is not None:
        stats["fills"], stats["followed"] = fills, followed
    return torch.tensor(counts, dtype=torch.float32)


@pytest.mark.slow
def test_sampled_tokens_follow_the_target_distribution(tiny_pair):
    stat, df = chi2(empirical_joint3(tiny_pair, Acceptance()), exact_joint3(tiny_pair.target))
    assert stat < chi2_critical(df), f"chi2={stat:.1f} df={df}"


@pytest.mark.slow
def test_acceptance_without_the_residual_fails_the_same_test(tiny_pair):
    stat, df = chi2(empirical_joint3(tiny_pair, NoResidual(), samples=CONTROL_SAMPLES), exact_joint3(tiny_pair.target))
    assert stat > chi2_critical(df), f"negative control passed: chi2={stat:.1f} df={df}"


def test_the_sample_depends_on_the_seed_not_on_the_delay(tiny_pair):
    runs = [stream_tree_generate(tiny_pair, PROMPT, 24, d, PARAMS, seed=7).token_ids for d in (0.0, 3.0)]
    assert runs[0] == runs[1]
    assert stream_tree_generate(tiny_pair, PROMPT, 24, 0.0, PARAMS, seed=8).token_ids != runs[0]


# --- the cloud fills its idle time --------------------------------------------------------------------

FILL_FAULTS = LinkFaults(drop_up=frozenset({1, 4}), duplicate_up=frozenset({0, 2, 3, 6}),
                         drop_down=frozenset({1}), duplicate_down=frozenset({0, 2}), late_down=frozenset({3, 4}))


@pytest.mark.parametrize("text", TEXTS)
def test_greedy_output_with_fill_equals_target_only_under_link_faults(pair, text):
    """Over a 10 ms link the cloud runs out of nodes and fills; late groups are then walked along what it
    filled. Lost, duplicated and reordered messages must change nothing but the time."""
    prompt = encode(pair, text)
    got = stream_tree_generate(pair, prompt, 24, one_way_ms=10.0, faults=FILL_FAULTS, resend_after_s=0.1, fill=True)
    assert got.fills > 0
    assert got.token_ids == target_only(pair, prompt, 24)


def test_fill_is_off_by_default(pair):
    prompt = encode(pair, TEXTS[0])
    assert stream_tree_generate(pair, prompt, 8, one_way_ms=10.0).fills == 0


def test_a_root_position_past_the_clouds_tip_cannot_make_it_fill_on(pair):
    """A peer names its root's context position; one far past what the cloud committed must not move
    the cloud's idea of what the edge holds, or fill would run on for thousands of forwards."""
    import time

    from nodes.models.pipelined import CLOSE, DelayLink
    from nodes.models.stream_tree import _Cloud
    from nodes.protocol.stream_tree import NodesMsg
    from nodes.speculative import SamplingParams

    prompt = encode(pair, TEXTS[0])
    up, down = DelayLink(0.0), DelayLink(0.0)
    cloud = _Cloud(pair, prompt, SamplingParams(temperature=0.0), 0, up, down, Limits(max_verdict_tokens=8),
                   Acceptance(), fill=True)
    up.send(NodesMsg(root=(1, 5000, prompt[-1]), groups=()))  # waiting before the cloud's first look
    cloud.start()
    assert cloud.ready.wait(30)
    deadline = time.monotonic() + 3.0
    while cloud.fills < 8 and time.monotonic() < deadline:  # it fills what it may at once
        time.sleep(0.01)
    time.sleep(0.5)  # and would go on here if the made-up position counted
    up.send(CLOSE)
    cloud.join(30)
    assert cloud.error is None
    assert 1 <= cloud.fills <= 8  # at most max_verdict_tokens past what the edge is known to hold


@pytest.mark.slow
def test_sampled_tokens_with_fill_follow_the_target_distribution(tiny_pair):
    """Over a 1 ms link some positions are drawn directly by the idle cloud and others decided by
    rejection over the draft's children; which one depends on timing only, never on the draw."""
    stats: dict = {}
    stat, df = chi2(empirical_joint3(tiny_pair, Acceptance(), fill=True, one_way_ms=1.0, stats=stats),
                    exact_joint3(tiny_pair.target))
    assert stats["fills"] > SAMPLES // 10 and stats["followed"] > 0, stats
    assert stat < chi2_critical(df), f"chi2={stat:.1f} df={df}"


@pytest.mark.slow
def test_with_fill_a_fill_that_takes_the_argmax_fails_the_same_test(tiny_pair, monkeypatch):
    """The negative control of the test above: over a 1 ms link the idle cloud fills most positions
    (97 % here, quiet or loaded), so the control that has power at any load is a wrong fill draw."""
    import nodes.models.stream_tree as st

    def argmax_fill(self, tree, kv, logits):
        key = tree.tip if tree.tip is not None else st.OFF
        x = int(torch.argmax(logits[key]))
        tree.fill(x)
        self.fills += 1
        kv.reroot([key], [])
        logits.clear()
        logits[st.OFF] = self._feed(kv, [st.OFF], [x], [-1], [tree.tip_pos], [[]])[0]

    monkeypatch.setattr(st._Cloud, "_fill", argmax_fill)
    stats: dict = {}
    stat, df = chi2(empirical_joint3(tiny_pair, Acceptance(), fill=True, one_way_ms=1.0, stats=stats,
                                     samples=CONTROL_SAMPLES), exact_joint3(tiny_pair.target))
    assert stats["fills"] > CONTROL_SAMPLES // 10, stats
    assert stat > chi2_critical(df), f"negative control passed: chi2={stat:.1f} df={df}"


def test_a_verdict_never_waits_for_a_forward_it_does_not_need(pair):
    """The cloud judges with the logits it already has before feeding what just arrived, and sends a
    miss before feeding the target's token: on a device whose forwards take 0.8 s, each verdict is out
    while the forward after it is still running (before, each waited for it: a miss cost a whole
    extra target forward on the critical path)."""
    from nodes.device import DeviceProfile, Pacer
    from nodes.models.pipelined import CLOSE, DelayLink
    from nodes.models.stream_tree import _Cloud
    from nodes.protocol.stream_tree import NodesMsg
    from nodes.speculative import SamplingParams

    prompt = encode(pair, TEXTS[0])
    want = target_only(pair, prompt, 2)
    wrong = next(t for t in range(pair.vocab_size) if t != want[1])
    up, down = DelayLink(0.0), DelayLink(0.0)
    slow = Pacer(DeviceProfile("slow", verify_ms_fixed=800.0))
    cloud = _Cloud(pair, prompt, SamplingParams(temperature=0.0), 0, up, down, Limits(), Acceptance(), slow)
    cloud.start()
    try:
        assert cloud.ready.wait(30)
        root = (0, len(prompt) - 1, prompt[-1])
        up.send(NodesMsg(root, ((0, ((1, want[0]),)),)))  # the root's logits came with the prefill
        first = down.recv(30)
        assert first.tokens[-1:] == (want[0],) and cloud.forwards == 1  # node 1's forward still running
        up.send(NodesMsg(root, ((1, ((2, wrong),)),)))  # judged once node 1 is fed: a miss
        second = down.recv(30)
        assert second.tokens[-1] == want[1] and cloud.misses == 1
        assert cloud.forwards == 2  # the miss token's forward comes after its verdict
    finally:
        up.send(CLOSE)
        cloud.join(30)
    assert cloud.error is None and cloud.forwards == 3
