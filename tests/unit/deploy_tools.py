"""What the manifest tests share: the offline tools of .venv-deploy (`make
.venv-deploy/.installed`; `make test` installs them), checkov's verdict, and the metric
names the mesh exports, which rules and analyses may name."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DEPLOY_VENV = ROOT / ".venv-deploy"


def tool(name: str) -> Path:
    """A tool of .venv-deploy (kustomize, checkov, check-jsonschema); fails if missing."""
    path = DEPLOY_VENV / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make .venv-deploy/.installed`")
    return path


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=240)


def checkov(paths: list[Path]) -> list[dict[str, Any]]:
    """checkov with deploy/k8s/checkov.yaml over rendered `paths`: each file's summary,
    asserted to parse and to fail nothing."""
    argv: list[str | Path] = [tool("checkov"), "--config-file", K8S / "checkov.yaml", "-o", "json"]
    for path in paths:
        argv += ["-f", path]
    result = run(*argv)
    assert result.stdout.lstrip().startswith(("{", "[")), result.stderr[-4000:]
    report = json.loads(result.stdout)
    summaries = [r["summary"] for r in (report if isinstance(report, list) else [report])]
    assert summaries and all(s["parsing_errors"] == 0 for s in summaries)
    assert sum(s["failed"] for s in summaries) == 0, result.stdout[-4000:]
    assert result.returncode == 0
    return summaries


def exported_metrics() -> set[str]:
    """Every ragmesh sample name the registry can produce (histograms' _bucket, _count and
    _sum, counters' _total), for the metrics modules the caller imported."""
    suffixes = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",)}
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("ragmesh_")
        for suffix in suffixes.get(family.type, ("",))
    }
