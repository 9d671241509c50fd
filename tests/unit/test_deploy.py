"""deploy/: the Prometheus scrape config, SLO rules and Grafana dashboard name only metrics
and ports the mesh really has."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from deploy_tools import exported_metrics

import services.common.metrics
import services.control.metrics
import services.gateway.metrics
import services.retrieval.metrics  # noqa: F401  (each registers its layer's metrics)
from loadtest import gameday
from services.common.errors import CALLER_CODES
from services.config.mesh import MeshConfig
from services.config.regions import regions

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NAME = re.compile(r"\bragmesh(?:_[a-z_]+|:[a-z_0-9:]+)")


def _rules() -> dict:
    return yaml.safe_load((DEPLOY / "prometheus" / "slo-rules.yml").read_text())


def _expressions() -> list[str]:
    rules = [r for group in _rules()["groups"] for r in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "ragmesh.json").read_text())
    return [r["expr"] for r in rules] + [
        t["expr"] for panel in dashboard["panels"] for t in panel["targets"]
    ]


def test_rules_and_dashboard_name_only_exported_metrics_and_recorded_rules() -> None:
    recorded = {r["record"] for g in _rules()["groups"] for r in g["rules"] if "record" in r}
    known = exported_metrics() | recorded
    used = {name for expr in _expressions() for name in NAME.findall(expr)}
    assert used, "no ragmesh metric referenced"
    assert used <= known, sorted(used - known)
    assert {"ragmesh_request_duration_seconds_bucket", "ragmesh_breaker_state"} <= used
    # The control plane's: admissions, routing, cost, the store.
    assert {"ragmesh_admissions_total", "ragmesh_control_store_up"} <= used


def _alerts(group: str | None = None) -> list[dict]:
    groups = [g for g in _rules()["groups"] if group in (None, g["name"])]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_every_slo_alert_burns_on_two_windows_and_says_which_layer() -> None:
    alerts = _alerts("ragmesh-slo-alerts")
    assert {a["labels"]["layer"] for a in alerts} == {"gateway", "retrieval"}
    assert {a["labels"]["severity"] for a in alerts} == {"page", "ticket"}
    for alert in alerts:
        windows = re.findall(r":rate(\d+[mh])", alert["expr"])
        assert len(windows) == 2 and windows[0] != windows[1], alert["expr"]


def test_scrape_targets_are_the_mesh_metrics_ports() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: {t for c in job["static_configs"] for t in c["targets"]}
        for job in scrape["scrape_configs"]
    }
    mesh = regions(MeshConfig.load(ROOT / "config" / "mesh.yaml"))
    assert targets["ragmesh-gateway"] == {
        f"127.0.0.1:{r.config.gateway.metrics_port}" for r in mesh
    }
    assert targets["ragmesh-retrieval"] == {
        f"127.0.0.1:{r.config.retrieval.metrics_port}" for r in mesh
    }
    assert targets["triton"] == {f"127.0.0.1:{r.config.triton.metrics_port}" for r in mesh}
    assert targets["envoy"] == {f"127.0.0.1:{mesh[0].config.edge.admin_port}"}


def test_slow_ratio_bounds_are_the_mesh_configs_slo_budgets() -> None:
    """ "99 % under a bound" is a p99 budget: the rules and `ragmesh slo` must agree."""
    slo = MeshConfig.load(ROOT / "config" / "mesh.yaml").slo
    bounds = {
        "retrieval": r'layer="retrieval",method="Search",le="([0-9.]+)"',
        "time_to_first_token": r'ragmesh_time_to_first_token_seconds_bucket\{le="([0-9.]+)"',
        "time_per_output_chunk": r'ragmesh_time_per_output_chunk_seconds_bucket\{le="([0-9.]+)"',
    }
    expressions = " ".join(_expressions())
    for stage, pattern in bounds.items():
        found = {float(le) * 1000 for le in re.findall(pattern, expressions)}
        assert found == {slo.budget_ms(stage)}, stage


def test_slo_rules_count_as_failures_what_the_console_does() -> None:
    """Every error-ratio rule leaves out OK and the caller's own statuses, the same set the
    console uses (services.common.errors.CALLER_CODES): a client's mistake burns no budget."""
    expected = {"OK", *(code.name for code in CALLER_CODES)}
    excluded = [
        set(found.split("|"))
        for expr in _expressions()
        for found in re.findall(r'code!~"([A-Z_|]+)"', expr)
    ]
    assert excluded and all(codes == expected for codes in excluded)


def _runbook_rows() -> dict[str, tuple[set[str], set[str]]]:
    """docs/runbooks/README.md's table: runbook -> (alerts, rehearsing game day scenarios)."""
    rows = {}
    for line in (ROOT / "docs" / "runbooks" / "README.md").read_text().splitlines():
        found = re.fullmatch(r"\| \[([a-z-]+)\]\(\1\.md\) \| (.+) \| (.+) \|", line)
        if found:
            alerts = set(re.findall(r"Ragmesh\w+", found[2]))
            alerts |= {re.sub(r"Page$", "Ticket", a) for a in alerts if "-Ticket" in found[2]}
            rows[found[1]] = (alerts, set(re.findall(r"[a-z]+-[a-z]+", found[3])))
    return rows


def test_every_alert_names_a_runbook_that_names_it_back() -> None:
    rows = _runbook_rows()
    assert set(rows) == {p.stem for p in (ROOT / "docs" / "runbooks").glob("*-*.md")}
    for alert in _alerts():
        runbook = alert["annotations"]["runbook_url"]
        name = re.fullmatch(r"docs/runbooks/([a-z-]+)\.md", runbook)[1]
        assert alert["alert"] in rows[name][0], (alert["alert"], runbook)
        assert f"`{alert['alert']}`" in (ROOT / runbook).read_text(), runbook
    assert set().union(*(alerts for alerts, _ in rows.values())) == {a["alert"] for a in _alerts()}


def test_runbooks_are_rehearsed_by_game_days_that_make_gameday_runs() -> None:
    rehearsed = {name: scenarios for name, (_, scenarios) in _runbook_rows().items()}
    for name, scenarios in rehearsed.items():
        assert scenarios <= set(gameday.SCENARIOS), name
        text = (ROOT / "docs" / "runbooks" / f"{name}.md").read_text()
        assert all(f"**{s}**" in text for s in scenarios), name
    # Every runbook is rehearsed by a game day, and every game day rehearses a runbook.
    assert {n for n, s in rehearsed.items() if not s} == set()
    assert set().union(*rehearsed.values()) == set(gameday.SCENARIOS)
