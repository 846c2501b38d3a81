"""One way to wait: poll a probe until it answers, or a deadline passes."""

import time
from collections.abc import Callable
from typing import TypeVar

from cutover.errors import StepFailed

T = TypeVar("T")


def until(
    probe: Callable[[], T],
    *,
    timeout: float,
    what: str | Callable[[], str],
    hint: str,
    interval: float = 0.05,
    on_tick: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """The probe's first truthy answer; after the deadline StepFailed("<what> within <n> s")."""
    deadline = clock() + timeout
    while True:
        answer = probe()
        if answer:
            return answer
        if on_tick is not None:
            on_tick()
        left = deadline - clock()
        if left <= 0:
            said = what() if callable(what) else what
            raise StepFailed(f"{said} within {timeout:g} s", hint=hint)
        sleep(min(interval, left))
