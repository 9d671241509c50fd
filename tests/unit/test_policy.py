"""The routing policy (services/control/policy.py): rules, errors with line and field, reload."""

import os
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, PermissionDenied
from services.control.policy import (
    CRITICALITIES,
    REASONS,
    Policy,
    PolicyError,
    PolicyFile,
    Price,
    RollingP95,
    TierHealth,
)

ROOT = Path(__file__).resolve().parents[2]

# Line numbers matter: tests below point at them.
POLICY = """\
tiers:
  premium:
    input_per_1k: 0.01
    output_per_1k: 0.03
    ttft_p95_budget_ms: 1000
    next: standard
  standard:
    input_per_1k: 0.0005
    output_per_1k: 0.0015
    ttft_p95_budget_ms: 2500
    next: economy
  economy: {}
default:
  tiers: [standard, economy]
  criticality:
    critical: standard
    standard: standard
    batch: economy
  over_soft_cap: economy
tenants:
  demo: {}
  acme:
    tiers: [premium, standard, economy]
    criticality:
      standard: premium
  solo:
    tiers: [standard]
    criticality: {batch: standard}
    over_soft_cap: null
"""

HEALTHY = TierHealth(ttft_p95_ms=100.0, breaker_open=False)


def health_of(**states):
    """health(tier): the given TierHealth per tier, HEALTHY for the others; records calls."""
    calls = []

    def health(tier):
        calls.append(tier)
        return states.get(tier, HEALTHY)

    health.calls = calls
    return health


@pytest.fixture
def policy():
    return Policy.parse(POLICY, "test.yaml")


def test_the_example_policy_parses_and_routes():
    example = Policy.load(ROOT / "config" / "policy.yaml")
    assert example.allowed("demo") == ("standard", "economy")
    assert example.allowed("no-such-tenant") == ("standard", "economy")
    assert example.price("standard") == Price(0.0005, 0.0015)
    route = example.route("demo", "batch", "", health_of(), over_soft_cap=False)
    assert (route.tier, route.reason) == ("economy", "criticality")


@pytest.mark.parametrize(
    ("tenant", "criticality", "tier"),
    [
        ("demo", "critical", "standard"),
        ("demo", "standard", "standard"),
        ("demo", "", "standard"),  # empty means standard
        ("demo", "batch", "economy"),
        ("unknown", "batch", "economy"),  # no entry: default's
        ("acme", "standard", "premium"),  # its own
        ("acme", "batch", "economy"),  # default's, key by key
        ("solo", "batch", "standard"),
    ],
)
def test_criticality_picks_the_tenants_tier(policy, tenant, criticality, tier):
    route = policy.route(tenant, criticality, "", health_of(), over_soft_cap=False)
    assert (route.tier, route.reason) == (tier, "criticality")
    assert route.reason in REASONS
    assert f"{criticality or 'standard'} traffic of tenant {tenant} goes to {tier}" == (
        route.detail
    )


def test_tenant_fields_default_to_defaults(policy):
    assert policy.allowed("demo") == ("standard", "economy")
    assert policy.allowed("acme") == ("premium", "standard", "economy")
    assert policy.allowed("solo") == ("standard",)


def test_an_unknown_criticality_is_refused_naming_the_allowed_values(policy):
    with pytest.raises(InvalidArgument) as caught:
        policy.route("demo", "urgent", "", health_of(), over_soft_cap=False)
    assert caught.value.field == "priority"
    assert all(kind in caught.value.message for kind in CRITICALITIES)


def test_a_requested_tier_is_honoured_as_is(policy):
    health = health_of(premium=TierHealth(ttft_p95_ms=9000.0, breaker_open=True))
    route = policy.route("acme", "batch", "premium", health, over_soft_cap=True)
    assert (route.tier, route.reason) == ("premium", "requested")
    assert health.calls == []  # no guardrail looked at it


def test_a_requested_tier_the_tenant_may_not_use_is_refused(policy):
    with pytest.raises(PermissionDenied) as caught:
        policy.route("demo", "standard", "premium", health_of(), over_soft_cap=False)
    assert caught.value.field == "tier"
    assert "standard, economy" in caught.value.message


def test_latency_guardrail_moves_non_critical_traffic_to_next(policy):
    health = health_of(standard=TierHealth(ttft_p95_ms=3100.0, breaker_open=False))
    route = policy.route("demo", "standard", "", health, over_soft_cap=False)
    assert (route.tier, route.reason) == ("economy", "latency_guardrail")
    assert route.detail == (
        "tier standard p95 TTFT 3100 ms over its 2500 ms budget: standard traffic moved to economy"
    )


@pytest.mark.parametrize("p95", [2500.0, 10.0, None])  # at the budget, under, too few samples
def test_latency_guardrail_holds_within_budget(policy, p95):
    health = health_of(standard=TierHealth(ttft_p95_ms=p95, breaker_open=False))
    route = policy.route("demo", "standard", "", health, over_soft_cap=False)
    assert (route.tier, route.reason) == ("standard", "criticality")


def test_an_open_breaker_moves_non_critical_traffic_to_next(policy):
    health = health_of(standard=TierHealth(ttft_p95_ms=None, breaker_open=True))
    route = policy.route("demo", "standard", "", health, over_soft_cap=False)
    assert (route.tier, route.reason) == ("economy", "breaker_open")
    assert route.detail == "tier standard breaker open: standard traffic moved to economy"


def test_the_guardrail_follows_the_chain_and_keeps_the_first_reason(policy):
    health = health_of(
        premium=TierHealth(ttft_p95_ms=1500.0, breaker_open=False),
        standard=TierHealth(ttft_p95_ms=None, breaker_open=True),
    )
    route = policy.route("acme", "standard", "", health, over_soft_cap=False)
    assert (route.tier, route.reason) == ("economy", "latency_guardrail")
    assert "moved to standard" in route.detail
    assert "tier standard breaker open: standard traffic moved to economy" in route.detail
    assert health.calls == ["premium", "standard", "economy"]


def test_the_guardrail_never_moves_to_a_tier_the_tenant_may_not_use(policy):
    health = health_of(standard=TierHealth(ttft_p95_ms=None, breaker_open=True))
    route = policy.route("solo", "standard", "", health, over_soft_cap=False)
    assert (route.tier, route.reason) == ("standard", "criticality")
    assert "no tier to move standard traffic to" in route.detail


def test_past_the_soft_cap_non_critical_traffic_moves_to_the_cheaper_tier(policy):
    route = policy.route("demo", "standard", "", health_of(), over_soft_cap=True)
    assert (route.tier, route.reason) == ("economy", "soft_cap")
    assert route.detail == "tenant demo past its soft budget cap: standard traffic moved to economy"
    below = policy.route("demo", "standard", "", health_of(), over_soft_cap=False)
    assert below.tier == "standard"


def test_a_tenant_without_a_soft_cap_tier_stays(policy):
    route = policy.route("solo", "batch", "", health_of(), over_soft_cap=True)
    assert (route.tier, route.reason) == ("standard", "criticality")


def test_critical_traffic_is_never_moved(policy):
    health = health_of(standard=TierHealth(ttft_p95_ms=9000.0, breaker_open=True))
    route = policy.route("demo", "critical", "", health, over_soft_cap=True)
    assert (route.tier, route.reason) == ("standard", "criticality")
    assert health.calls == []


def test_prices_and_costs(policy):
    assert policy.price("premium").cost(1000, 2000) == pytest.approx(0.01 + 0.06)
    assert policy.price("standard").cost(0, 0) == 0
    assert policy.price("economy") == Price(0.0, 0.0)  # declared without prices
    assert policy.price("gpu-xl") == Price(0.0, 0.0)  # not in the policy


def broken(old, new):
    assert old in POLICY
    return POLICY.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "line", "field", "problem"),
    [
        (broken("    next: standard", "    nxt: standard"), 6, "tiers.premium.nxt", "unknown"),
        (
            broken("input_per_1k: 0.0005", "input_per_1k: -1"),
            8,
            "tiers.standard.input_per_1k",
            "minimum",
        ),
        (
            broken("ttft_p95_budget_ms: 2500", "ttft_p95_budget_ms: fast"),
            10,
            "tiers.standard.ttft_p95_budget_ms",
            "not of type",
        ),
        (broken("    batch: economy\n", ""), 15, "default.criticality.batch", "required"),
        (
            broken("  tiers: [standard, economy]", "  tiers: standard"),
            14,
            "default.tiers",
            "not of type",
        ),
        (broken("  solo:", "  so lo:"), 26, "tenants.so lo", "1-64 letters"),
        (
            broken("    tiers: [standard]", "    tiers: [standard, standard]"),
            27,
            "tenants.solo.tiers",
            "non-unique",
        ),
        ("", 1, "", "not of type 'object'"),
    ],
)
def test_schema_errors_name_line_and_field(text, line, field, problem):
    with pytest.raises(PolicyError) as caught:
        Policy.parse(text, "config/policy.yaml")
    error = caught.value
    assert (error.line, error.field) == (line, field)
    assert problem in str(error)
    assert str(error).startswith(f"config/policy.yaml:{line}: {field}")


def test_a_yaml_syntax_error_gives_its_own_line():
    with pytest.raises(PolicyError) as caught:
        Policy.parse(broken("  demo: {}", "  demo: {]"), "config/policy.yaml")
    assert caught.value.line == 21
    assert caught.value.field == ""
    assert str(caught.value).startswith("config/policy.yaml:21: ")


@pytest.mark.parametrize(
    ("text", "line", "field", "problem"),
    [
        (
            broken("      standard: premium", "      batch: gold"),
            25,
            "tenants.acme.criticality.batch",
            "'gold' is not a declared tier",
        ),
        (
            broken("    next: economy", "    next: gold"),
            11,
            "tiers.standard.next",
            "'gold' is not a declared tier",
        ),
        (
            broken("  tiers: [standard, economy]", "  tiers: [standard, gold]"),
            14,
            "default.tiers[1]",
            "'gold' is not a declared tier",
        ),
        (
            broken("  economy: {}", "  economy: {next: premium}"),
            12,
            "tiers.economy.next",
            "premium -> standard -> economy -> premium is a cycle",
        ),
        (
            broken("    next: economy", "    next: standard"),
            11,
            "tiers.standard.next",
            "standard -> standard is a cycle",
        ),
        (
            broken("    batch: economy", "    batch: premium"),
            18,
            "default.criticality.batch",
            "'premium' is not in default.tiers [standard, economy]",
        ),
        (
            broken("    over_soft_cap: null\n", ""),
            26,
            "tenants.solo.over_soft_cap",
            "'economy' (from default) is not in tenants.solo.tiers [standard]",
        ),
        (
            broken("    criticality: {batch: standard}\n", ""),
            26,
            "tenants.solo.criticality.batch",
            "'economy' (from default) is not in tenants.solo.tiers [standard]",
        ),
    ],
)
def test_cross_reference_errors_name_line_and_field(text, line, field, problem):
    with pytest.raises(PolicyError) as caught:
        Policy.parse(text, "config/policy.yaml")
    assert str(caught.value) == f"config/policy.yaml:{line}: {field}: {problem}"
    assert (caught.value.line, caught.value.field) == (line, field)


def write(path, text, mtime):
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_policy_file_keeps_the_last_good_policy_and_takes_a_fixed_one(tmp_path):
    path = tmp_path / "policy.yaml"
    write(path, POLICY, 1_000)
    source = PolicyFile(path)
    first = source.policy
    assert source.error == ""
    assert source.reload() is False  # unchanged

    write(path, broken("      standard: premium", "      batch: gold"), 2_000)
    assert source.reload() is False
    assert source.policy is first
    assert f"{path}:25: tenants.acme.criticality.batch:" in source.error

    write(path, broken("      standard: premium", "      standard: standard"), 3_000)
    assert source.reload() is True
    assert source.error == ""
    assert source.policy is not first
    assert source.policy.route("acme", "standard", "", health_of(), False).tier == "standard"


def test_policy_file_back_to_the_good_text_clears_the_error(tmp_path):
    path = tmp_path / "policy.yaml"
    write(path, POLICY, 1_000)
    source = PolicyFile(path)
    write(path, "tiers: [", 2_000)
    assert source.reload() is False
    assert source.error.startswith(f"{path}:1: ")
    write(path, POLICY, 3_000)
    assert source.reload() is False  # the policy in use is the one on disk again
    assert source.error == ""


def test_policy_file_refuses_a_broken_or_missing_first_load(tmp_path):
    path = tmp_path / "policy.yaml"
    with pytest.raises(PolicyError, match="cannot read"):
        PolicyFile(path)
    path.write_text("tiers: {}\n")
    with pytest.raises(PolicyError) as caught:
        PolicyFile(path)
    assert caught.value.line == 1


def test_rolling_p95_needs_min_samples():
    p95 = RollingP95(window_s=10.0, max_samples=1000, min_samples=20)
    for _ in range(19):
        p95.add(100.0, now=0.0)
    assert p95.value(now=0.0) is None
    p95.add(100.0, now=0.0)
    assert p95.value(now=0.0) == 100.0


def test_rolling_p95_windows_out_old_samples():
    p95 = RollingP95(window_s=10.0, max_samples=1000, min_samples=20)
    for i in range(100):  # 1..100 ms: 95 by nearest rank
        p95.add(float(i + 1), now=0.0)
    assert p95.value(now=0.0) == 95.0
    for _ in range(100):
        p95.add(1.0, now=5.0)
    assert p95.value(now=9.9) == 90.0  # both batches
    assert p95.value(now=10.0) == 1.0  # the first batch left the window
    assert p95.value(now=15.0) is None  # all out


def test_rolling_p95_keeps_at_most_max_samples():
    p95 = RollingP95(window_s=60.0, max_samples=20, min_samples=20)
    for _ in range(20):
        p95.add(5000.0, now=0.0)
    for _ in range(20):
        p95.add(10.0, now=1.0)
    assert p95.value(now=1.0) == 10.0
