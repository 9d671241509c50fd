"""Circuit breakers: one per endpoint the gateway calls (retrieval, each Triton model).

closed: calls flow; `failures` consecutive failures open it. open: calls are refused at once
(the caller moves on to a fallback) for `open_s`. half_open: then one call goes through as a
probe; its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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

    def _set(self, state: str) -> None:
        if state != self._state:
            metrics.BREAKER_TRANSITIONS.labels(self.name, state).inc()
        self._state = state
        metrics.BREAKER_STATE.labels(self.name).set({CLOSED: 0, HALF_OPEN: 1, OPEN: 2}[state])
