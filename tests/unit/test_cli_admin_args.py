"""The admin commands' argument parsers: budget SPECs and DURATIONs, good and bad."""

from __future__ import annotations

import argparse

import pytest
from ragmesh.v1 import admin_pb2

from services.cli.__main__ import parser
from services.cli.admin import parse_budget, parse_duration


@pytest.mark.parametrize(
    ("spec", "metric", "window", "hard", "soft"),
    [
        ("tokens/day=100000:80000", "tokens", "day", 100000, 80000),
        ("cost_usd/month=50", "cost_usd", "month", 50, 0),
        ("cost_usd/month=12.5:0.25", "cost_usd", "month", 12.5, 0.25),
        ("requests/day=:1000", "requests", "day", 0, 1000),
        ("requests/month=10:", "requests", "month", 10, 0),
    ],
)
def test_budget_spec(spec: str, metric: str, window: str, hard: float, soft: float) -> None:
    assert parse_budget(spec) == admin_pb2.Budget(
        metric=metric, window=window, hard=hard, soft=soft
    )


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "tokens",
        "tokens/day",
        "tokens=100",
        "tokens/week=100",
        "bytes/day=100",
        "tokens/day=",
        "tokens/day=:",
        "tokens/day=0:0",
        "tokens/day=lots",
        "tokens/day=100:80:60",
        "tokens/day=-5",
        "tokens/day=nan",
        "tokens/day=inf",
        "tokens/day=100:200",
    ],
)
def test_bad_budget_spec(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="got"):
        parse_budget(spec)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("12h", 43200), ("30d", 2_592_000), ("0s", 0)],
)
def test_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "1.5h", "-1d", "3w", "30 d", "30D", "1h30m"])
def test_bad_duration(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="DURATION like 90s, 30m, 12h or 30d"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("argv", "option", "form"),
    [
        (["tenants", "create", "t", "--budget", "tokens/week=1"], "--budget", "METRIC/WINDOW="),
        (["tenants", "update", "t", "--budget", "x"], "--budget", "HARD[:SOFT]"),
        (["tenants", "create", "t", "--rps", "-1"], "--rps", "whole number"),
        # Past int64 the server could not take it: an argparse error, not a traceback.
        (["tenants", "create", "t", "--tpm", "99999999999999999999"], "--tpm", "0..1e+12"),
        (["tenants", "create", "t", "--rps", "٣"], "--rps", "whole number"),  # Arabic 3
        (["keys", "create", "t", "--expires-in", "3w"], "--expires-in", "DURATION like"),
        (["keys", "create", "t", "--label", "novalue"], "--label", "KEY=VALUE"),
        (["keys", "rotate", "t", "k", "--grace", "1y"], "--grace", "DURATION like"),
        (["usage", "t", "--since", "soon"], "--since", "DURATION like"),
        (["usage", "t", "--mine"], "--mine", "not allowed"),
        (["usage"], "--mine", "required"),
    ],
)
def test_errors_name_the_option(
    argv: list[str], option: str, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert option in err and form in err


def test_defaults() -> None:
    args = parser().parse_args(["usage", "--mine"])
    assert (args.mine, args.tenant, args.since, args.group_by) == (True, "", 30 * 86_400, "day")
    args = parser().parse_args(["tenants", "update", "t", "--budget", "requests/day=:10"])
    assert (args.rps, args.tpm, args.budget) == (0, 0, [parse_budget("requests/day=:10")])
    args = parser().parse_args(["keys", "rotate", "t", "k"])
    assert args.grace == 0
    args = parser().parse_args(["route", "--explain", "t", "--priority", "batch"])
    assert (args.explain, args.priority, args.tier) == ("t", "batch", "")
