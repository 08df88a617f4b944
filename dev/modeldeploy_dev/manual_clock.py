"""A clock for tests of code that takes one (``clock: Callable[[], float]``)."""

from __future__ import annotations


class ManualClock:
    """Stands still until the test moves it on (``clock.now += seconds``) instead of waiting."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
