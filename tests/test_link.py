"""The emulated link's channel specs: what each one promises about delays and states."""
import pytest

from nodes.link import LinkError, parse_channel


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_wall_clock_markov_holds_its_state_between_samples_in_the_same_instant():
    clock = FakeClock()
    ch = parse_channel("markov-clock:20,150:5", seed=1, clock=clock)
    first = ch.sample().state
    assert all(ch.sample().state == first for _ in range(1000))  # rounds alone never move it


def test_wall_clock_markov_dwells_for_about_its_mean_time():
    clock = FakeClock()
    ch = parse_channel("markov-clock:20,150:5", seed=3, clock=clock)
    changes, prev = 0, ch.sample().state
    for _ in range(20_000):  # 2,000 s in steps of 0.1 s: ~400 changes expected
        clock.now += 0.1
        s = ch.sample()
        assert s.up_ms == s.down_ms == (20 if s.state == "0" else 150)
        changes += s.state != prev
        prev = s.state
    assert 250 < changes < 600


@pytest.mark.parametrize("spec", ["markov-clock:20,150:0", "markov-clock:20,150:-1", "markov-clock:20,150",
                                  "markov-clock:20,x:5", "markov-clock:20,150:inf"])
def test_bad_wall_clock_markov_specs_are_refused_in_one_line(spec):
    with pytest.raises(LinkError, match="channel: "):
        parse_channel(spec)
