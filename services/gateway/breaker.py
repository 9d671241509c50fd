"""Circuit breakers: one per endpoint the gateway calls (retrieval, each Triton model).

closed: calls flow; `failures` consecutive failures open it. open: calls are refused at once
(the caller moves on to a fallback) for `open_s`. half_open: then one call goes through as a
probe; its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from services.common.errors import BreakerOpen
from services.gateway import metrics

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"


class Breaker:
    def __init__(
        self,
        name: str,
        failures: int,
        open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._failures_to_open = failures
        self._open_s = open_s
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._state = CLOSED
        self._probing = False
        metrics.BREAKER_STATE.labels(name).set(0)

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self._open_s:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may go now; in half_open, only one probe at a time."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN or self._probing:
            return False
        self._set(HALF_OPEN)
        self._probing = True
        return True

    def record(self, ok: bool) -> None:
        """The verdict on an allowed call."""
        self._probing = False
        if ok:
            self._failures = 0
            self._set(CLOSED)
            return
        self._failures += 1
        if self._state == HALF_OPEN or self._failures >= self._failures_to_open:
            self._opened_at = self._clock()
            self._set(OPEN)

    def release(self) -> None:
        """An allowed call ended without a verdict (the client went away)."""
        self._probing = False

    @contextlib.contextmanager
    def attempt(self) -> Iterator[Attempt]:
        """One call through the breaker: BreakerOpen (UNAVAILABLE) at once when it refuses;
        else the call's verdict as the body gives it (Attempt.succeeded or .failed), and none
        (release) when the body gives none, whatever it raises."""
        if not self.allow():
            raise BreakerOpen(f"{self.name}: circuit breaker open")
        attempt = Attempt(self)
        try:
            yield attempt
        finally:
            if not attempt.judged:
                self.release()

    def _set(self, state: str) -> None:
        if state != self._state:
            metrics.BREAKER_TRANSITIONS.labels(self.name, state).inc()
        self._state = state
        metrics.BREAKER_STATE.labels(self.name).set({CLOSED: 0, HALF_OPEN: 1, OPEN: 2}[state])


class Attempt:
    """The verdict on one allowed call, recorded as soon as it is known (a stream's first
    token closes a half-open breaker at once); a later failure is recorded too."""

    def __init__(self, breaker: Breaker | None) -> None:
        self._breaker = breaker
        self.judged = False

    def succeeded(self) -> None:
        self._record(True)

    def failed(self) -> None:
        self._record(False)

    def _record(self, ok: bool) -> None:
        if self._breaker is not None:
            self._breaker.record(ok)
        self.judged = True


@contextlib.contextmanager
def unguarded() -> Iterator[Attempt]:
    """A call that no breaker guards (a pinned model version): verdicts count nowhere."""
    yield Attempt(None)
