"""The mesh config: every plane's section of one YAML file (config/mesh.yaml)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.config.console import ConsoleConfig, SloConfig
from services.config.control import ControlConfig
from services.config.gateway import GatewayConfig
from services.config.loading import build, is_host, is_ip, read_yaml, require
from services.config.release import ReleaseConfig
from services.config.retrieval import RetrievalConfig
from services.config.telemetry import TelemetryConfig

_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


@dataclass(frozen=True, kw_only=True)
class EdgeConfig:
    # The address the public listener binds: clients' way in. 0.0.0.0 (or "::") on a host or
    # pod that others reach (deploy/k8s). The internal listeners and the admin port stay on
    # 127.0.0.1: they serve Envoy's own host (the admin port can stop Envoy).
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    # Internal listener: the gateway reaches retrieval through Envoy (health checks, failover).
    internal_port: int = 8081
    admin_port: int = 9901
    descriptor_set: str = "build/gen/ragmesh.pb"
    route_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        require(
            is_ip(self.listen_host),
            "edge.listen_host",
            "must be an IP address (Envoy binds addresses, not names), e.g. 0.0.0.0",
        )
        for name in ("listen_port", "internal_port", "admin_port"):
            require(0 < getattr(self, name) < 65536, f"edge.{name}", "must be 1..65535")


@dataclass(frozen=True, kw_only=True)
class TritonConfig:
    # Where Triton serves and where the gateway, retrieval and the console reach it, as
    # gateway.host and retrieval.host are theirs: the local mesh starts it there; on
    # Kubernetes its Service's name.
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    # The CPU models. triton_models/trtllm holds templates, rendered for GPU nodes (docs/gpu.md).
    model_repository: str = "triton_models/cpu"
    install_dir: str = "build/triton"
    models_venv: str = ".venv-models"
    response_cache_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        require(is_host(self.host), "triton.host", "must be an IP address or a host name")
        for name in ("grpc_port", "http_port", "metrics_port"):
            require(0 < getattr(self, name) < 65536, f"triton.{name}", "must be 1..65535")


@dataclass(frozen=True, kw_only=True)
class MeshSettings:
    # Region names in failover order: the first is the default region (Envoy priority 0).
    # `ragmesh up --regions N` runs the first N; region i's ports are shifted by i * port_stride.
    regions: list[str] = field(default_factory=lambda: ["local", "remote"])
    port_stride: int = 100
    data_dir: str = "data"
    demo_key: str = ""
    # The admin credential `make up` prints; the gateways hold only its hash.
    demo_admin_key: str = ""

    def __post_init__(self) -> None:
        require(bool(self.regions), "mesh.regions", "must name at least one region")
        require(len(set(self.regions)) == len(self.regions), "mesh.regions", "must be unique")
        for name in self.regions:
            require(
                bool(_REGION.match(str(name))), "mesh.regions", f"{name!r}: use [a-z0-9-], 1..32"
            )
        require(self.port_stride > 0, "mesh.port_stride", "must be positive")


@dataclass(frozen=True, kw_only=True)
class MeshConfig:
    mesh: MeshSettings = field(default_factory=MeshSettings)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    triton: TritonConfig = field(default_factory=TritonConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    slo: SloConfig = field(default_factory=SloConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)

    def budgets_below_slo(self) -> list[str]:
        """The tiers' budgets for a model's silence that are shorter than the SLO's for the
        same wait (they would give up on answers the SLO calls in time), one sentence each;
        the gateway logs them at start. Not refused: a loosened SLO (a load run's gate)
        must not stop a config from loading."""
        found = []
        for name, tier in self.gateway.tiers.items():
            for timeout, stage in (
                ("first_token_timeout_s", "time_to_first_token"),
                ("inter_token_timeout_s", "time_per_output_chunk"),
            ):
                seconds, slo_s = getattr(tier, timeout), self.slo.budget_ms(stage) / 1000
                if seconds and seconds < slo_s:
                    found.append(
                        f"gateway.tiers.{name}.{timeout} ({seconds:g} s) is under "
                        f"slo.{stage}_ms ({slo_s:g} s): it gives up on answers in budget"
                    )
        return found

    @classmethod
    def load(cls, path: str | Path) -> MeshConfig:
        return cls.from_dict(read_yaml(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeshConfig:
        types = {
            "mesh": MeshSettings,
            "edge": EdgeConfig,
            "gateway": GatewayConfig,
            "retrieval": RetrievalConfig,
            "triton": TritonConfig,
            "telemetry": TelemetryConfig,
            "console": ConsoleConfig,
            "slo": SloConfig,
            "control": ControlConfig,
            "release": ReleaseConfig,
        }
        unknown = sorted(set(data) - set(types))
        require(not unknown, "mesh config", f"unknown section(s) {', '.join(unknown)}")
        return cls(**{name: build(t, data.get(name) or {}, name) for name, t in types.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
