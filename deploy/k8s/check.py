"""Offline checks of rendered manifests: every object against the Kubernetes API's own
schemas (kubernetes-validate, strict: an unknown field is an error), and the kinds it has no
schema for (custom resources: Prometheus Operator's, Argo Rollouts') by the fields their
controllers need. No cluster is asked.

    python deploy/k8s/check.py [--kubernetes-version 1.31.0] build/deploy/local.yaml ...

Prints one JSON object (per file: the objects validated and the custom resources checked, by
kind; every problem found) and exits 1 if there is a problem. It runs in .venv-deploy, where
kubernetes-validate is installed (make deploy-check, tests/unit/test_deploy_manifests.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

# The Kubernetes release whose API schemas the manifests must meet: the oldest the docs
# support (docs/deploy.md), so a cluster of it or later takes them.
KUBERNETES_VERSION = "1.31.0"

# Custom resources, by apiVersion and kind: the dotted paths each must hold. A kind with
# neither a schema nor an entry here is an error, so none passes unchecked.
CUSTOM_RESOURCES: dict[tuple[str, str], tuple[str, ...]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("spec.selector", "spec.endpoints"),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("spec.selector", "spec.podMetricsEndpoints"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("spec.groups",),
    ("argoproj.io/v1alpha1", "Rollout"): ("spec.selector", "spec.strategy"),
    ("argoproj.io/v1alpha1", "AnalysisTemplate"): ("spec.metrics",),
}


def _lookup(obj: dict[str, Any], dotted: str) -> Any:
    value: Any = obj
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def check_object(obj: dict[str, Any], version: str) -> tuple[str, str, str | None]:
    """(how it was checked: "schema" or "custom", its kind, the problem or None)."""
    kind = str(obj.get("kind"))
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        required = CUSTOM_RESOURCES.get((str(obj.get("apiVersion")), kind))
        if required is None:
            return "custom", kind, f"{_name(obj)}: no schema for {obj.get('apiVersion')} {kind}"
        missing = [path for path in ("metadata.name", *required) if not _lookup(obj, path)]
        problem = f"{_name(obj)}: missing {', '.join(missing)}" if missing else None
        return "custom", kind, problem
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return "schema", kind, f"{_name(obj)}: {where}: {exc.message}"
    return "schema", kind, None


def check_file(path: Path, version: str) -> dict[str, Any]:
    counts: dict[str, Counter[str]] = {"schema": Counter(), "custom": Counter()}
    problems = []
    for obj in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if obj is None:
            continue
        how, kind, problem = check_object(obj, version)
        counts[how][kind] += 1
        if problem:
            problems.append(f"{path}: {problem}")
    return {
        "validated": dict(sorted(counts["schema"].items())),
        "custom": dict(sorted(counts["custom"].items())),
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    results = {str(f): check_file(f, args.kubernetes_version) for f in args.files}
    report = {"kubernetes_version": args.kubernetes_version, "files": results}
    print(json.dumps(report, indent=2))
    return 1 if any(r["problems"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
