"""deploy/k8s/rollouts: the Argo Rollouts component, rendered into each region's overlay with
the real kustomize. kubernetes-validate has no schema for Argo's kinds, so the fields their
controller needs are checked here: the Rollout takes over the gateway Deployment's pods by
workloadRef, its rings are the local release's, and its analysis queries only metrics the
mesh exports, with the SLO's budgets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tools import K8S, exported_metrics, run, tool

import services.gateway.metrics  # noqa: F401  (registers the gateway's metrics)
from services.common.errors import CALLER_CODES
from services.common.metrics import BUCKETS
from services.config.console import SloConfig
from services.config.release import ReleaseConfig
from services.console.layers import READS

REGIONS = ("local", "remote")
METRIC = re.compile(r"\bragmesh_[a-z_]+")


def _with_component(region: str, into: Path) -> Path:
    """A copy of the region's overlay that adds the component, as its docs say to."""
    into.mkdir()
    overlay = K8S / "overlays" / region
    shutil.copy(overlay / "namespace.yaml", into)
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    base = os.path.relpath(K8S / "base", into)
    kustomization["resources"] = [
        base if r == "../../base" else r for r in kustomization["resources"]
    ]
    kustomization["components"] = [os.path.relpath(K8S / "rollouts", into)]
    (into / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    return into


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rollouts")
    files = {}
    for region in REGIONS:
        overlay = _with_component(region, out / region)
        result = subprocess.run(
            [str(tool("kustomize")), "build", str(overlay)],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stderr
        files[region] = out / f"{region}.yaml"
        files[region].write_text(result.stdout, encoding="utf-8")
    return files


def _objects(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (o["kind"], o["metadata"]["name"]): o
        for o in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if o
    }


@pytest.mark.parametrize("region", REGIONS)
def test_the_rollout_takes_over_the_gateway_deployment(rendered, region: str) -> None:
    objects = _objects(rendered[region])
    rollout = objects[("Rollout", "gateway")]
    deployment = objects[("Deployment", "gateway")]
    assert rollout["apiVersion"] == "argoproj.io/v1alpha1"
    assert rollout["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    ref = rollout["spec"]["workloadRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", "gateway")
    assert ref["scaleDown"] in ("never", "onsuccess", "progressively")
    assert "template" not in rollout["spec"]  # workloadRef's pods, not a copy of them
    assert rollout["spec"]["selector"] == deployment["spec"]["selector"]
    hpa = objects[("HorizontalPodAutoscaler", "gateway")]["spec"]["scaleTargetRef"]
    assert hpa == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "gateway"}


def test_the_rings_are_the_local_releases(rendered) -> None:
    """Ring 0 a small weight, ring 1 the whole region, each followed by the SLO analysis."""
    objects = _objects(rendered["local"])
    steps = objects[("Rollout", "gateway")]["spec"]["strategy"]["canary"]["steps"]
    kinds = [next(iter(step)) for step in steps]
    assert kinds == ["setWeight", "pause", "analysis"] * 2
    assert [s["setWeight"] for s in steps if "setWeight" in s] == [
        ReleaseConfig().ring0_percent,
        100,
    ]
    for step in steps:
        if "analysis" in step:
            (template,) = step["analysis"]["templates"]
            assert ("AnalysisTemplate", template["templateName"]) in objects
            args = {a["name"]: a["valueFrom"] for a in step["analysis"]["args"]}
            assert args["canary-hash"] == {"podTemplateHashValue": "Latest"}


def _metrics(rendered) -> dict[str, dict[str, Any]]:
    template = _objects(rendered["local"])[("AnalysisTemplate", "ragmesh-gateway-slo")]
    assert template["apiVersion"] == "argoproj.io/v1alpha1"
    declared = {a["name"] for a in template["spec"]["args"]}
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    for metric in metrics.values():
        query = metric["provider"]["prometheus"]["query"]
        used = set(re.findall(r"\{\{args\.([a-z-]+)\}\}", query + str(metric["provider"])))
        assert used <= declared, used - declared
        # Only the canary's own pods: its ReplicaSet's pod-template hash names them.
        assert 'pod=~"gateway-{{args.canary-hash}}-.*"' in query.replace("\n", " ")
        assert metric["failureLimit"] == 0  # one failed measurement aborts: the rollback
    return metrics


def test_the_analysis_names_only_exported_metrics(rendered) -> None:
    queries = [m["provider"]["prometheus"]["query"] for m in _metrics(rendered).values()]
    used = {name for query in queries for name in METRIC.findall(query)}
    assert used == {
        "ragmesh_request_duration_seconds_count",
        "ragmesh_request_duration_seconds_bucket",
    }
    assert used <= exported_metrics()


def test_the_analysis_holds_the_canary_to_the_slo(rendered) -> None:
    metrics = _metrics(rendered)
    slo, release = SloConfig(), ReleaseConfig()

    def threshold(name: str, op: str) -> float:
        (found,) = re.findall(rf"result\[0\] {op} ([0-9.]+)", metrics[name]["successCondition"])
        return float(found)

    assert threshold("server-failure-ratio", "<=") == slo.error_rate
    # p99 within slo.gateway_ms: at most 1 % of reads slower than it, read at its bucket.
    assert threshold("slow-ratio", "<=") == 0.01
    assert threshold("requests", ">=") == release.min_requests
    # Failures as the SLO rules and the console count them: a caller's status is none.
    ratio = metrics["server-failure-ratio"]["provider"]["prometheus"]["query"]
    (codes,) = re.findall(r'code!~"([A-Z_|]+)"', ratio)
    assert set(codes.split("|")) == {"OK", *(code.name for code in CALLER_CODES)}
    slow = metrics["slow-ratio"]["provider"]["prometheus"]["query"]
    for methods in re.findall(r'method=~"([A-Za-z|]+)"', slow):
        assert tuple(methods.split("|")) == READS["gateway"]
    (bound,) = re.findall(r'le="([0-9.]+)"', slow)
    assert float(bound) * 1000 == slo.gateway_ms and float(bound) in BUCKETS


def test_the_checker_knows_the_custom_resources(rendered) -> None:
    """deploy/k8s/check.py (`make deploy-check`) passes the overlay with the component:
    every Kubernetes object against its schema, Argo's kinds by their required fields."""
    result = run(tool("python"), K8S / "check.py", rendered["local"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"Rollout": 1' in result.stdout and '"AnalysisTemplate": 1' in result.stdout
