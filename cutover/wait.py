"""The one way cutover waits for something to become true: poll a probe until a deadline.

A wait probes at least once, sleeps between probes at most until its
deadline, probes a last time at the deadline and only then gives up with a
`StepFailed` that names what did not happen and what to do. A `Deadline` is
a value: several waits can share one (the switch's barrier across databases
has one time budget, not one per database). Time is a parameter, so unit
tests pass a fake clock and never sleep. This module imports only
cutover.errors.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cutover.errors import StepFailed

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], None]

INTERVAL = 0.05  # seconds between probes: short next to every timeout cutover has


@dataclass(frozen=True)
class Deadline:
    """A point in time on a clock, and the timeout it was set from (for messages)."""

    at: float
    seconds: float
    clock: Clock = time.monotonic

    @classmethod
    def after(cls, seconds: float, *, clock: Clock = time.monotonic) -> "Deadline":
        """The deadline `seconds` from now (a negative timeout is one that has passed)."""
        return cls(at=clock() + seconds, seconds=seconds, clock=clock)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - self.clock())

    @property
    def passed(self) -> bool:
        """Whether the deadline has come."""
        return self.clock() >= self.at


def until(
    probe: Callable[[], T | None],
    *,
    timeout: float | Deadline,
    what: str | Callable[[], str],
    hint: str,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    interval: float = INTERVAL,
    backoff: float = 1.0,
    max_interval: float | None = None,
    on_tick: Callable[[], None] | None = None,
) -> T:
    """Probe until it returns a truthy value and return that value; StepFailed at the deadline.

    `timeout` is seconds from now on `clock`, or a `Deadline` shared with other
    waits (it brings its own clock). Each round that finds nothing calls
    `on_tick` (to show progress), then sleeps `interval`, or less when the
    deadline is nearer. The message reads "`what` within N s", so `what` names
    the thing that did not happen: "the slot was not released"; a callable `what`
    is asked at the deadline, for a message that says what was still missing.
    With `backoff` above 1 the interval grows by that factor after each round,
    up to `max_interval` (a remote API is asked less often the longer it takes).
    """
    deadline = timeout if isinstance(timeout, Deadline) else Deadline.after(timeout, clock=clock)
    ceiling = float("inf") if max_interval is None else max_interval
    while True:
        value = probe()
        if value:
            return value
        if on_tick is not None:
            on_tick()
        left = deadline.remaining()
        if left <= 0:
            said = what() if callable(what) else what
            raise StepFailed(f"{said} within {deadline.seconds:g} s", hint=hint)
        sleep(min(interval, left))
        interval = min(interval * backoff, ceiling)
