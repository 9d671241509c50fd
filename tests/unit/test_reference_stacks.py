"""The blueprint's three reference stacks (docs/deploy.md, "Reference stacks"): each a kustomize
Component on top of every region's overlay (deploy/k8s/stacks/examples/<stack>-<region>),
rendered with the real kustomize, valid against the Kubernetes schemas and checkov's
policies, different from the plain region only in the objects and fields the stack must
change, and loading into a valid mesh config; and the control stack's cluster-wide
objects (deploy/k8s/monitoring) generated from the rules and the dashboard, not copied by hand.

The tools live in .venv-deploy (`make .venv-deploy/.installed`; `make test` installs them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tools import K8S, ROOT, checkov, run, tool

from services.config.loading import ENV_PREFIX
from services.config.mesh import MeshConfig
from services.gateway.tiers import Tiers

STACKS = K8S / "stacks"
EXAMPLES = STACKS / "examples"
MONITORING = K8S / "monitoring"
REGIONS: list[str] = yaml.safe_load((ROOT / "config" / "mesh.yaml").read_text())["mesh"]["regions"]
STACK_NAMES = ("open", "managed", "control")
COLLECTOR = "http://otel-collector.monitoring.svc.cluster.local:4318"
# Generated names end in a hash of their content, which differs where the content does.
_HASHED = re.compile(r"\b(ragmesh-(?:config|region))-[a-z0-9]{10}\b")


def _build(directory: Path, out: Path) -> Path:
    result = run(tool("kustomize"), "build", directory)
    assert result.returncode == 0, result.stderr
    out.write_text(result.stdout, encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """(stack, region) -> its manifests; stack "" is the region's overlay alone, and
    ("monitoring", "") the control stack's cluster-wide objects."""
    out = tmp_path_factory.mktemp("stacks")
    files = {("monitoring", ""): _build(MONITORING, out / "monitoring.yaml")}
    for region in REGIONS:
        files["", region] = _build(K8S / "overlays" / region, out / f"{region}.yaml")
        for stack in STACK_NAMES:
            name = f"{stack}-{region}"
            files[stack, region] = _build(EXAMPLES / name, out / f"{name}.yaml")
    return files


def _objects(path: Path) -> dict[str, dict[str, Any]]:
    """Kind/name -> object, generated names without their hash."""
    text = _HASHED.sub(r"\1", path.read_text(encoding="utf-8"))
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in yaml.safe_load_all(text) if o}


def _changes(old: Any, new: Any, where: str) -> set[str]:
    """What differs from `old` to `new`: "+ path" added, "- path" removed, "~ path" changed;
    a list of another length counts as changed whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = {f"+ {where}.{k}" for k in new.keys() - old.keys()}
        found |= {f"- {where}.{k}" for k in old.keys() - new.keys()}
        for key in old.keys() & new.keys():
            found |= _changes(old[key], new[key], f"{where}.{key}")
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return set().union(
            *(_changes(a, b, f"{where}.{i}") for i, (a, b) in enumerate(zip(old, new, strict=True)))
        )
    return set() if old == new else {f"~ {where}"}


def _diff(plain: Path, stacked: Path) -> set[str]:
    before, after = _objects(plain), _objects(stacked)
    found = {f"+ {key}" for key in after.keys() - before.keys()}
    found |= {f"- {key}" for key in before.keys() - after.keys()}
    for key in before.keys() & after.keys():
        found |= _changes(before[key], after[key], key)
    return found


TRITON = "Deployment/triton.spec.template.spec"
REGION_CONFIG = "ConfigMap/ragmesh-region.data"
OPEN = {
    f"+ {REGION_CONFIG}.RAGMESH_TELEMETRY_OTLP_ENDPOINT",
    "+ NetworkPolicy/otlp-export",
    f"~ {TRITON}.containers.0.env",
    f"~ {TRITON}.containers.0.args",
}
# Only what each stack must change, and nothing else: the test fails on anything more.
EXPECTED = {
    "open": OPEN,
    "managed": {
        f"+ {REGION_CONFIG}.RAGMESH_RETRIEVAL_MILVUS_URI",
        f"+ {REGION_CONFIG}.RAGMESH_GATEWAY_TIERS",
        "+ NetworkPolicy/retrieval-managed-vector",
        f"- {TRITON}.nodeSelector",
        f"- {TRITON}.tolerations",
        f"- {TRITON}.containers.0.resources.requests.nvidia.com/gpu",
        f"- {TRITON}.containers.0.resources.limits.nvidia.com/gpu",
    },
    # Per region, the open stack; what it adds is cluster-wide (deploy/k8s/monitoring).
    "control": OPEN,
}


# ---- layout ---------------------------------------------------------------------------------


def test_each_stack_is_a_component_that_an_example_overlay_puts_on_a_region() -> None:
    """One Component per stack; each example is its region's overlay, with that overlay's
    namespace and label (for the component's own objects), and the component: nothing else."""
    for stack in STACK_NAMES:
        component = yaml.safe_load((STACKS / stack / "kustomization.yaml").read_text())
        assert component["kind"] == "Component", stack
        assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1", stack
    examples = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert examples == {f"{s}-{r}" for s in STACK_NAMES for r in REGIONS}
    for stack in STACK_NAMES:
        for region in REGIONS:
            overlay = yaml.safe_load((K8S / "overlays" / region / "kustomization.yaml").read_text())
            example = yaml.safe_load(
                (EXAMPLES / f"{stack}-{region}" / "kustomization.yaml").read_text()
            )
            assert example == {
                "apiVersion": overlay["apiVersion"],
                "kind": "Kustomization",
                "namespace": overlay["namespace"],
                "resources": [f"../../../overlays/{region}"],
                "labels": overlay["labels"],
                "components": [f"../../{stack}"],
            }


def test_the_control_stack_is_the_open_stack_with_the_cluster_wide_monitoring() -> None:
    control = yaml.safe_load((STACKS / "control" / "kustomization.yaml").read_text())
    assert control.get("components") == ["../open"]
    assert set(control) == {"apiVersion", "kind", "components"}


# ---- rendering and offline validation ----------------------------------------------------


def test_every_stack_validates_against_the_kubernetes_schemas(rendered) -> None:
    files = [path for (stack, _), path in rendered.items() if stack]
    result = run(tool("python"), K8S / "check.py", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    for path in files:
        assert report["files"][str(path)]["problems"] == []
    monitoring = report["files"][str(rendered["monitoring", ""])]
    assert monitoring["custom"] == {"PrometheusRule": 1}
    assert monitoring["validated"] == {"ConfigMap": 1}


def test_checkov_passes_on_every_stack_with_the_regions_skips(rendered) -> None:
    checkov([path for (stack, _), path in rendered.items() if stack])


@pytest.mark.parametrize("stack", STACK_NAMES)
def test_each_stack_differs_from_its_region_only_where_it_must(rendered, stack) -> None:
    for region in REGIONS:
        assert _diff(rendered["", region], rendered[stack, region]) == EXPECTED[stack], region


# ---- what each stack runs -------------------------------------------------------------------


def _workloads(path: Path) -> dict[str, dict[str, Any]]:
    return {
        key.split("/", 1)[1]: obj["spec"]["template"]["spec"]
        for key, obj in _objects(path).items()
        if obj["kind"] in ("Deployment", "StatefulSet")
    }


def _config(path: Path, monkeypatch, tmp_path: Path) -> MeshConfig:
    """The mesh config a pod of these manifests reads: the ConfigMap's mesh.yaml, with the
    region's and the stack's RAGMESH_* variables in its environment."""
    objs = _objects(path)
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in objs["ConfigMap/ragmesh-region"]["data"].items():
        monkeypatch.setenv(name, value)
    mesh = tmp_path / f"{path.stem}.yaml"
    mesh.write_text(objs["ConfigMap/ragmesh-config"]["data"]["mesh.yaml"])
    return MeshConfig.load(mesh)


def _secret_env(pod: dict[str, Any], name: str) -> dict[str, Any]:
    env = {e["name"]: e for c in pod["containers"] for e in c.get("env", [])}
    return env[name]["valueFrom"]["secretKeyRef"]


def _expand(arg: str, variables: dict[str, str]) -> str:
    """`arg` as Kubernetes expands it: $(NAME) from the container's environment; a name it
    lacks fails the test (Kubernetes would pass `$(NAME)` on as it is)."""
    return re.sub(r"\$\((\w+)\)", lambda m: variables[m[1]], arg)


@pytest.mark.parametrize("stack", ["open", "control"])
def test_open_stacks_export_every_layers_traces_to_the_collector(
    rendered, stack, monkeypatch, tmp_path
) -> None:
    """The gateway, retrieval and the edge's renderer read the endpoint from the config;
    Triton from the same ConfigMap, through the two variables its arguments name; the
    NetworkPolicies let all four reach the collector's port."""
    for region in REGIONS:
        path = rendered[stack, region]
        config = _config(path, monkeypatch, tmp_path)
        assert config.telemetry.otlp_endpoint == COLLECTOR
        assert config.telemetry.sampled == config.telemetry.sample_ratio > 0
        triton = _workloads(path)["triton"]["containers"][0]
        plain = _workloads(rendered["", region])["triton"]["containers"][0]
        added = triton["args"][len(plain["args"]) :]
        assert triton["args"][: len(plain["args"])] == plain["args"]
        assert [a.split("=", 1)[1] for a in added[:3]] == [
            "mode=opentelemetry",
            "rate=0",
            "level=TIMESTAMPS",
        ]
        assert triton["env"][: len(plain["env"])] == plain["env"]
        assert [e["name"] for e in triton["env"][len(plain["env"]) :]] == [
            "RAGMESH_TELEMETRY_OTLP_ENDPOINT",
            "RAGMESH_GATEWAY_REGION",
        ]
        region_config = _objects(path)["ConfigMap/ragmesh-region"]["data"]
        variables = {
            e["name"]: region_config[e["valueFrom"]["configMapKeyRef"]["key"]]
            for e in triton["env"]
            if e.get("valueFrom", {}).get("configMapKeyRef", {}).get("name") == "ragmesh-region"
        }
        expanded = [_expand(a, variables) for a in added]
        assert f"--trace-config=opentelemetry,url={COLLECTOR}/v1/traces" in expanded
        assert f"--trace-config=opentelemetry,resource=service.name=triton-{region}" in expanded
        policy = _objects(path)["NetworkPolicy/otlp-export"]["spec"]
        planes = policy["podSelector"]["matchExpressions"][0]["values"]
        assert sorted(planes) == ["edge", "gateway", "retrieval", "triton"]
        assert policy["egress"][0]["ports"] == [{"port": 4318, "protocol": "TCP"}]


class _NoTriton:
    async def close(self) -> None:
        pass


async def test_the_managed_stack_serves_with_a_managed_store_and_a_provider_tier(
    rendered, monkeypatch, tmp_path
) -> None:
    """Zilliz Cloud by an https URI, its token from the Secret; premium an OpenAI-compatible
    provider whose key is read from the Secret; Triton kept for what still needs it (the
    embedder, the economy tier), on no GPU."""
    for region in REGIONS:
        path = rendered["managed", region]
        config = _config(path, monkeypatch, tmp_path)
        plain = _config(rendered["", region], monkeypatch, tmp_path)
        assert config.retrieval.milvus_uri.startswith("https://")
        assert config.retrieval.milvus_token == ""  # only from the Secret, at the pod
        assert config.retrieval.collection == plain.retrieval.collection
        premium = config.gateway.tiers["premium"]
        assert premium.base_url.startswith("https://")
        assert premium.api_key_env == "UPSTREAM_LLM_API_KEY"
        assert premium.fallback == "economy" and config.gateway.default_tier == "premium"
        # The variable replaces the whole mapping: economy as the base declares it.
        assert config.gateway.tiers["economy"] == plain.gateway.tiers["economy"]
        # What needs Triton: the tiers without a base_url, and retrieval's embedder.
        on_triton = {name for name, tier in config.gateway.tiers.items() if not tier.base_url}
        assert on_triton == {"economy"}
        assert config.retrieval.triton_target == plain.retrieval.triton_target
        pods = _workloads(path)
        assert _secret_env(pods["retrieval"], "RAGMESH_RETRIEVAL_MILVUS_TOKEN")["key"] == (
            "milvus-token"
        )
        assert _secret_env(pods["gateway"], premium.api_key_env)["key"] == "upstream-llm-api-key"
        assert "nvidia.com" not in json.dumps(pods["triton"])
        # The gateway builds these tiers with the provider's key set, and refuses to start
        # without it (the Secret is what makes the tier work).
        monkeypatch.setenv(premium.api_key_env, "sk-test-not-a-key")
        await Tiers(config.gateway, client=lambda target: _NoTriton()).close()
        monkeypatch.delenv(premium.api_key_env)
        with pytest.raises(ValueError, match=premium.api_key_env):
            Tiers(config.gateway, client=lambda target: _NoTriton())


_DIGEST = re.compile(r"\b[0-9a-f]{64}\b")
_PASSWORD_URL = re.compile(r"://[^/\s]*:[^/\s]*@")


@pytest.mark.parametrize("stack", STACK_NAMES)
def test_a_stack_puts_no_secret_in_a_config_map(rendered, stack) -> None:
    for region in REGIONS:
        for key, obj in _objects(rendered[stack, region]).items():
            assert obj["kind"] != "Secret", key
            if obj["kind"] == "ConfigMap":
                for value in obj["data"].values():
                    assert not _DIGEST.search(value) and not _PASSWORD_URL.search(value), key
                    assert not re.search(r"(?i)\b(sk|pk)-[a-z0-9-]{8,}", value), key


# ---- the control stack's cluster-wide objects ----------------------------------------------


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate", MONITORING / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_monitoring_objects_are_generated_from_the_rules_and_the_dashboard(rendered) -> None:
    """The PrometheusRule holds slo-rules.yml's groups and the ConfigMap ragmesh.json, as
    they are; the committed outputs are what generate.py writes now."""
    generate = _generator()
    for name, make in generate.OUTPUTS.items():
        assert (MONITORING / name).read_text() == make(), (
            f"{name} is stale: run python deploy/k8s/monitoring/generate.py"
        )
    objs = _objects(rendered["monitoring", ""])
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "slo-rules.yml").read_text())
    rule = objs["PrometheusRule/ragmesh-slo"]
    assert rule["spec"]["groups"] == rules["groups"]
    dashboard = objs["ConfigMap/ragmesh-dashboard"]
    assert (
        dashboard["data"]["ragmesh.json"]
        == (ROOT / "deploy" / "grafana" / "ragmesh.json").read_text()
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {o["metadata"]["namespace"] for o in objs.values()} == {"monitoring"}
