"""The rate limiter, driven by a fake clock through its own clock/sleep injection points."""

from __future__ import annotations

import bisect

from hypothesis import given, settings
from hypothesis import strategies as st

from mailcli.campaign import Rate
from mailcli.ratelimit import RateLimiter

SLACK = 1e-9
# (pause before, in periods; number of sends; send durations in intervals, cycled)
Burst = tuple[float, int, list[float]]


class FakeClock:
    """Time that passes only when the limiter sleeps or the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def limiter(rate: Rate | None, clock: FakeClock) -> RateLimiter:
    return RateLimiter(rate, clock=clock.clock, sleep=clock.sleep)


def schedule(rate: Rate, bursts: list[Burst]) -> list[float]:
    """The send times: per burst, a pause, then `sends` sends taking the cycled durations."""
    clock = FakeClock()
    lim = limiter(rate, clock)
    times = []
    for pause, sends, durations in bursts:
        clock.now += pause * rate.per_s
        for i in range(sends):
            lim.wait()
            times.append(clock.now)
            clock.now += durations[i % len(durations)] * rate.interval_s
    return times


def busiest_window(times: list[float], period: float) -> int:
    """The most sends in any half-open window [t, t + period) (the busiest starts at a send)."""
    return max(bisect.bisect_left(times, t + period - SLACK) - i for i, t in enumerate(times))


# Small counts are where windows fill up quickly, so they get their own share of examples.
rates = st.builds(
    Rate,
    count=st.one_of(st.integers(1, 5), st.integers(1, 200)).map(float),
    per_s=st.sampled_from([1.0, 60.0, 3600.0]),
)
# Durations are fractions of the interval (below 1: the limiter must wait; above: it must not),
# cycled over a burst; pauses are fractions of the period. Bursts keep long runs cheap to draw.
durations = st.lists(st.floats(0, 3), min_size=1, max_size=4)
bursts = st.lists(
    st.tuples(st.one_of(st.just(0.0), st.floats(0, 2)), st.integers(1, 450), durations),
    min_size=1,
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(rate=rates, plan=bursts)
def test_no_window_holds_more_than_the_rate(rate: Rate, plan: list[Burst]) -> None:
    """With any send durations and pauses, no window of one period holds more than `count`."""
    times = schedule(rate, plan)
    assert times == sorted(times)
    assert busiest_window(times, rate.per_s) <= rate.count


@settings(max_examples=200, deadline=None)
@given(rate=rates, sends=st.integers(2, 1000), quick=st.lists(st.floats(0, 1), min_size=1))
def test_sending_faster_than_the_rate_takes_the_ideal_time(
    rate: Rate, sends: int, quick: list[float]
) -> None:
    """Without pauses, N quick sends take (N-1) * period / count, within 2% + one interval."""
    times = schedule(rate, [(0.0, sends, quick)])
    ideal = (sends - 1) * rate.per_s / rate.count
    assert abs(times[-1] - times[0] - ideal) <= 0.02 * ideal + rate.interval_s


def test_no_rate_never_sleeps() -> None:
    """Without a rate, wait() returns at once, 1,000 times in a row."""
    clock = FakeClock()
    lim = limiter(None, clock)
    assert [lim.wait() for _ in range(1000)] == [0.0] * 1000
    assert clock.sleeps == []
    assert clock.now == 0.0


def spaced(gap: float, interval: float) -> bool:
    """At least one interval apart, and at most 2% more (the limiter may keep a safety margin)."""
    return interval - SLACK <= gap <= interval * 1.02


def test_wait_returns_the_time_it_slept() -> None:
    """wait() sleeps up to the next slot, counted from the previous send, and says how long."""
    clock = FakeClock()
    lim = limiter(Rate(count=10, per_s=1), clock)
    assert lim.wait() == 0.0
    clock.now += 0.03
    slept = lim.wait()
    assert clock.sleeps == [slept]
    assert spaced(clock.now, 0.1)
    assert abs(clock.now - 0.03 - slept) < 1e-12


def test_a_long_pause_earns_no_burst() -> None:
    """After an hour idle the next send goes at once, but the one after is spaced again."""
    clock = FakeClock()
    lim = limiter(Rate(count=10, per_s=1), clock)
    for _ in range(3):
        lim.wait()
    assert spaced(clock.now / 2, 0.1)
    clock.now += 3600
    assert lim.wait() == 0.0
    resumed = clock.now
    assert lim.wait() > 0
    assert spaced(clock.now - resumed, 0.1)
