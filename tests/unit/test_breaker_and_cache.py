"""Circuit breakers and the answer cache, on a fake clock."""

from __future__ import annotations

import pytest

from services.common.errors import BreakerOpen
from services.gateway.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from services.gateway.cache import AnswerCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = Breaker("t1", failures=3, open_s=5.0, clock=Clock())
    for ok in (False, False, True, False, False):  # a success resets the count
        assert breaker.allow()
        breaker.record(ok)
    assert breaker.state == CLOSED
    assert breaker.allow()
    breaker.record(False)
    assert breaker.state == OPEN
    assert not breaker.allow()


def test_half_open_lets_one_probe_through_and_its_verdict_decides() -> None:
    clock = Clock()
    breaker = Breaker("t2", failures=1, open_s=5.0, clock=clock)
    breaker.allow()
    breaker.record(False)
    clock.now += 4.9
    assert breaker.state == OPEN and not breaker.allow()
    clock.now += 0.2
    assert breaker.state == HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # nobody else while it runs
    breaker.record(False)
    assert breaker.state == OPEN  # a failed probe opens it again, for a full period
    clock.now += 5.1
    assert breaker.allow()
    breaker.record(True)
    assert breaker.state == CLOSED
    assert breaker.allow() and breaker.allow()


def test_a_probe_without_verdict_frees_the_way_for_the_next() -> None:
    clock = Clock()
    breaker = Breaker("t3", failures=1, open_s=1.0, clock=clock)
    breaker.allow()
    breaker.record(False)
    clock.now += 2
    assert breaker.allow()
    breaker.release()  # the client went away
    assert breaker.allow()


def test_an_attempt_is_refused_open_judged_by_its_body_or_released() -> None:
    clock = Clock()
    breaker = Breaker("t4", failures=1, open_s=1.0, clock=clock)
    with breaker.attempt() as attempt:
        attempt.failed()
    assert breaker.state == OPEN
    with pytest.raises(BreakerOpen, match="t4"), breaker.attempt():
        pass
    clock.now += 2
    with pytest.raises(ValueError), breaker.attempt():  # the probe ends without a verdict
        raise ValueError("the client went away")
    with breaker.attempt() as attempt:  # so the next one may probe
        attempt.succeeded()
        attempt.failed()  # a stream that failed after its first token: both count
    assert breaker.state == OPEN
    clock.now += 2
    with breaker.attempt() as attempt:
        attempt.succeeded()
    assert breaker.state == CLOSED


def test_cache_answers_until_the_ttl_then_forgets() -> None:
    clock = Clock()
    cache: AnswerCache[str] = AnswerCache(entries=10, ttl_s=60.0, clock=clock)
    cache.put(("demo", "3", "q"), "answer")
    assert cache.get(("demo", "3", "q")) == "answer"
    assert cache.get(("other", "3", "q")) is None  # another tenant's key
    assert cache.get(("demo", "4", "q")) is None  # another corpus version
    clock.now += 61
    assert cache.get(("demo", "3", "q")) is None


def test_cache_evicts_the_least_recently_used() -> None:
    cache: AnswerCache[int] = AnswerCache(entries=2, ttl_s=60.0, clock=Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    off: AnswerCache[int] = AnswerCache(entries=0, ttl_s=60.0)
    off.put("a", 1)
    assert off.get("a") is None


def test_cache_remembers_each_tenants_last_corpus_version() -> None:
    cache: AnswerCache[str] = AnswerCache(entries=2, ttl_s=60.0)
    assert cache.last_version("demo") is None
    cache.saw_version("demo", "3")
    cache.saw_version("other", "9")
    cache.saw_version("demo", "4")
    assert (cache.last_version("demo"), cache.last_version("other")) == ("4", "9")
