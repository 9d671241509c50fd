"""The budget-exhaustion game day's rules (loadtest/capped.py), on replies made up here: a
run that keeps them has no problem, and each way of breaking one is named."""

from __future__ import annotations

import dataclasses

import pytest

from loadtest.capped import Capped
from loadtest.openloop import Sample

QUOTA = "quota: tenant:t"


def _run(*replies: tuple[str, str]) -> Capped:
    samples = [
        Sample(i * 0.5, 0.1, status, reason=reason) for i, (status, reason) in enumerate(replies)
    ]
    admitted = sum(status == "OK" for status, _ in replies)
    return Capped("t", 2, 4, "economy", samples, crossings=1, spent=admitted)


def _kept() -> Capped:
    return _run(
        ("OK", "standard: criticality"),
        ("OK", "standard: criticality"),
        ("OK", "economy: soft_cap"),
        ("OK", "economy: soft_cap"),
        ("RESOURCE_EXHAUSTED", QUOTA),
        ("RESOURCE_EXHAUSTED", QUOTA),
    )


def test_caps_that_held_have_no_problem():
    assert _kept().problems() == []
    assert "admitted 4, refused 2 from 2.0 s on" in _kept().notes()[0]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({4: ("OK", "economy: soft_cap")}, "admitted against a hard cap"),
        (
            {3: ("RESOURCE_EXHAUSTED", QUOTA), 4: ("OK", "economy: soft_cap")},
            "sent after a refused",
        ),
        ({5: ("UNAUTHENTICATED", "quota: none")}, "refusals other than"),
        ({5: ("RESOURCE_EXHAUSTED", "quota: none")}, "refusals other than"),
        (
            {2: ("OK", "standard: criticality"), 3: ("OK", "standard: criticality")},
            "no answer was routed",
        ),
        ({3: ("OK", "standard: criticality")}, "routed otherwise"),
        # Moved before its soft cap: allowed (the view counts reservations in flight).
        ({1: ("OK", "economy: soft_cap")}, None),
    ],
)
def test_each_broken_rule_is_named(change, named):
    replies = [(s.status, s.reason) for s in _kept().samples]
    for i, reply in change.items():
        replies[i] = reply
    problems = _run(*replies).problems()
    if named is None:
        assert problems == []
    else:
        assert any(named in p for p in problems), problems


def test_counts_that_broke_are_named():
    assert "soft_cap_crossings_total did not rise" in " ".join(
        dataclasses.replace(_kept(), crossings=0).problems()
    )
    assert "the store counts 5" in " ".join(dataclasses.replace(_kept(), spent=5).problems())
    assert "the store counts 3" in " ".join(dataclasses.replace(_kept(), spent=3).problems())
    late = dataclasses.replace(_kept(), soft=1)  # two answers before any moved
    assert "2 answers came before any moved" in " ".join(late.problems())
