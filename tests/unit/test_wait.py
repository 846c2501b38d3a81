"""The one wait, on a fake clock: it never sleeps past its deadline and gives up only there."""

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover.errors import StepFailed
from cutover.wait import Deadline, until

timeouts = st.floats(min_value=-1.0, max_value=10.0, allow_nan=False)
intervals = st.floats(min_value=0.01, max_value=5.0, allow_nan=False)
costs = st.floats(min_value=0.0, max_value=0.5, allow_nan=False)  # how long one probe takes


@dataclass
class FakeTime:
    """A clock that moves only when slept on, or when a probe takes time."""

    now: float = 1000.0
    sleeps: list[tuple[float, float]] = field(default_factory=list)  # (when, how long)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append((self.now, seconds))
        self.now += seconds


@dataclass
class Probe:
    """Answers None until `ready_at` on the fake clock, then `value`; records when it ran."""

    time: FakeTime
    ready_at: float = float("inf")
    cost: float = 0.0
    value: object = "ready"
    calls: list[float] = field(default_factory=list)

    def __call__(self) -> object | None:
        self.calls.append(self.time.now)
        self.time.now += self.cost
        return self.value if self.time.now >= self.ready_at else None


def wait(time: FakeTime, probe: Probe, timeout: float | Deadline, interval: float) -> object:
    return until(
        probe,
        timeout=timeout,
        what="the thing did not happen",
        hint="do something",
        clock=time.clock,
        sleep=time.sleep,
        interval=interval,
    )


@given(timeout=timeouts, interval=intervals, cost=costs)
def test_it_never_sleeps_past_the_deadline_and_raises_only_there(
    timeout: float, interval: float, cost: float
) -> None:
    time = FakeTime()
    deadline = time.now + timeout
    probe = Probe(time, cost=cost)
    with pytest.raises(StepFailed) as failed:
        wait(time, probe, timeout, interval)
    assert probe.calls  # probed at least once, even with no time at all
    assert all(when + seconds <= deadline for when, seconds in time.sleeps)
    assert all(seconds <= interval for _, seconds in time.sleeps)
    assert time.now >= deadline  # not before the deadline
    assert len(probe.calls) == len(time.sleeps) + 1  # a last probe after the last sleep
    assert failed.value.message == f"the thing did not happen within {timeout:g} s"
    assert failed.value.hint == "do something"


@given(
    timeout=st.floats(min_value=0.0, max_value=10.0),
    interval=intervals,
    ready=st.floats(min_value=0.0, max_value=1.0),  # as a fraction of the timeout
)
def test_a_probe_that_turns_true_by_the_deadline_is_returned(
    timeout: float, interval: float, ready: float
) -> None:
    time = FakeTime()
    value = object()
    probe = Probe(time, ready_at=time.now + timeout * ready, value=value)
    assert wait(time, probe, timeout, interval) is value
    assert time.now <= probe.ready_at + interval  # found within one interval of turning true
    assert time.now <= 1000.0 + timeout


@given(timeout=timeouts, interval=intervals)
def test_a_probe_true_at_once_is_probed_once_and_never_slept_on(
    timeout: float, interval: float
) -> None:
    time = FakeTime()
    probe = Probe(time, ready_at=0.0, value=42)
    assert wait(time, probe, timeout, interval) == 42
    assert len(probe.calls) == 1
    assert time.sleeps == []


def test_each_round_that_finds_nothing_ticks() -> None:
    time = FakeTime()
    probe = Probe(time, ready_at=time.now + 0.35)
    ticks: list[float] = []
    until(
        probe,
        timeout=1.0,
        what="x",
        hint="y",
        clock=time.clock,
        sleep=time.sleep,
        interval=0.1,
        on_tick=lambda: ticks.append(time.now),
    )
    assert len(ticks) == len(probe.calls) - 1 == 4


def test_falsy_values_mean_not_yet() -> None:
    time = FakeTime()
    answers = iter([None, False, 0, "", [], "done"])
    result = until(
        lambda: next(answers),
        timeout=10.0,
        what="x",
        hint="y",
        clock=time.clock,
        sleep=time.sleep,
        interval=1.0,
    )
    assert result == "done"
    assert len(time.sleeps) == 5


@given(first=st.floats(min_value=0.0, max_value=0.9), interval=intervals)
def test_waits_that_share_a_deadline_share_its_time(first: float, interval: float) -> None:
    time = FakeTime()
    deadline = Deadline.after(1.0, clock=time.clock)
    wait(time, Probe(time, ready_at=time.now + first), deadline, interval)
    probe = Probe(time)
    with pytest.raises(StepFailed, match=r"within 1 s"):
        wait(time, probe, deadline, interval)
    assert deadline.passed
    assert time.now == pytest.approx(deadline.at)  # the second wait had only what was left


def test_a_deadline_tells_what_is_left() -> None:
    time = FakeTime()
    deadline = Deadline.after(2.0, clock=time.clock)
    assert deadline.remaining() == 2.0 and not deadline.passed
    time.now += 2.5
    assert deadline.remaining() == 0.0 and deadline.passed


@given(
    start=st.floats(min_value=0.01, max_value=1.0, allow_nan=False),
    factor=st.floats(min_value=1.0, max_value=3.0, allow_nan=False),
    ceiling=st.floats(min_value=0.01, max_value=5.0, allow_nan=False),
)
def test_backoff_grows_each_sleep_up_to_the_ceiling(
    start: float, factor: float, ceiling: float
) -> None:
    time = FakeTime()
    probe = Probe(time, ready_at=time.now + 30.0)
    until(
        probe,
        timeout=60.0,
        what="the thing did not happen",
        hint="do something",
        clock=time.clock,
        sleep=time.sleep,
        interval=start,
        backoff=factor,
        max_interval=ceiling,
    )
    slept = [seconds for _, seconds in time.sleeps]
    expected = [start]
    while len(expected) < len(slept):
        expected.append(min(expected[-1] * factor, ceiling))
    assert slept == pytest.approx(expected)
