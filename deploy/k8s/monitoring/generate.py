"""The Kubernetes control stack's cluster-wide objects, written from the files the rest of the
project reads (docs/deploy.md, "Reference stacks"): the SLO rules of
deploy/prometheus/slo-rules.yml as a PrometheusRule (the Prometheus Operator's), and the
dashboard deploy/grafana/ragmesh.json as a ConfigMap that Grafana's sidecar loads. Edit those
two files, never the outputs, then run this:

    python deploy/k8s/monitoring/generate.py           # writes slo-rules.yaml, dashboard.yaml
    python deploy/k8s/monitoring/generate.py --check   # exits 1 where an output is stale

kustomize cannot read the sources itself: it loads files only from under its own directory.
`make deploy-check` and tests/unit/test_reference_stacks.py run the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEPLOY = HERE.parents[1]
RULES = DEPLOY / "prometheus" / "slo-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "ragmesh.json"
SELF = (HERE / Path(__file__).name).relative_to(DEPLOY.parent)
LABELS = {"app.kubernetes.io/name": "ragmesh", "app.kubernetes.io/component": "monitoring"}


def _header(source: Path) -> str:
    return (
        f"# Generated from {source.relative_to(DEPLOY.parent)} by {SELF}: edit that file, "
        "then run it.\n"
    )


def prometheus_rule() -> str:
    """The rules file's groups, as they are, in a PrometheusRule."""
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "ragmesh-slo", "labels": LABELS},
        "spec": {"groups": groups},
    }
    return _header(RULES) + yaml.safe_dump(rule, sort_keys=False, width=4096, allow_unicode=True)


def dashboard_config_map() -> str:
    """The dashboard's JSON, byte for byte, in a ConfigMap labelled for Grafana's sidecar
    (kube-prometheus-stack's default label and value)."""
    meta = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ragmesh-dashboard", "labels": {**LABELS, "grafana_dashboard": "1"}},
    }
    text = DASHBOARD.read_text(encoding="utf-8")
    body = "".join(f"    {line}\n" for line in text.splitlines())
    return (
        _header(DASHBOARD)
        + yaml.safe_dump(meta, sort_keys=False)
        + "data:\n  ragmesh.json: |\n"
        + body
    )


OUTPUTS = {"slo-rules.yaml": prometheus_rule, "dashboard.yaml": dashboard_config_map}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, make in OUTPUTS.items():
        path, text = HERE / name, make()
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    for name in stale:
        print(f"{HERE / name} is stale: run python {SELF}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
