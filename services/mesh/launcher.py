"""Starts the local mesh (Triton, retrieval, gateway, Envoy) and stops all of it.

`make up` and the integration tests use the same launcher; tests give it free ports
and a temporary data directory.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import urllib.request
from pathlib import Path

import grpc
import yaml
from edge.render import write as write_envoy_config
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.mesh import triton_dist
from services.mesh.config import MeshConfig
from services.mesh.processes import Process, wait_until

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0


def resolve(path: str) -> Path:
    """Relative paths in the mesh config are relative to the repository root."""
    p = Path(path)
    return p if p.is_absolute() or "://" in path else ROOT / p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolated(config: MeshConfig, data_dir: Path) -> MeshConfig:
    """`config` on free ports with its own data directory, for tests and side-by-side runs."""
    edge = dataclasses.replace(
        config.edge, listen_port=free_port(), internal_port=free_port(), admin_port=free_port()
    )
    triton = dataclasses.replace(
        config.triton, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()
    )
    triton_target = f"127.0.0.1:{triton.grpc_port}"
    retrieval = dataclasses.replace(
        config.retrieval,
        port=free_port(),
        triton_target=triton_target,
        milvus_uri=str(data_dir / "milvus.db"),
    )
    gateway = dataclasses.replace(
        config.gateway,
        port=free_port(),
        triton_target=triton_target,
        retrieval_target=f"127.0.0.1:{edge.internal_port}",
    )
    mesh = dataclasses.replace(config.mesh, data_dir=str(data_dir))
    return dataclasses.replace(
        config, mesh=mesh, edge=edge, triton=triton, retrieval=retrieval, gateway=gateway
    )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _grpc_serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


PLANES = ("triton", "retrieval", "gateway", "envoy")


class Mesh:
    """The running mesh; a context manager that always stops what it started.

    `planes` picks a prefix of the start order, e.g. ("triton",) for inference benchmarks.
    """

    def __init__(self, config: MeshConfig, planes: tuple[str, ...] = PLANES) -> None:
        self.config = config
        self.planes = planes
        self.data_dir = resolve(config.mesh.data_dir)
        self.run_dir = self.data_dir / "run"
        self.processes: list[Process] = []

    @property
    def edge_target(self) -> str:
        return f"127.0.0.1:{self.config.edge.listen_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.config.edge.listen_port}"

    def _write_configs(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        milvus_uri = str(resolve(self.config.retrieval.milvus_uri))
        config = dataclasses.replace(
            self.config,
            retrieval=dataclasses.replace(self.config.retrieval, milvus_uri=milvus_uri),
            edge=dataclasses.replace(
                self.config.edge, descriptor_set=str(resolve(self.config.edge.descriptor_set))
            ),
        )
        path = self.run_dir / "mesh.yaml"
        path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
        write_envoy_config(config, self.run_dir / "envoy.yaml")
        return path

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, argv, self.run_dir / "logs" / f"{name}.log", env)
        self.processes.append(process)
        return process

    def _start_triton(self) -> None:
        t = self.config.triton
        backends = triton_dist.install(resolve(t.install_dir))
        argv = [
            str(triton_dist.server_binary()),
            f"--model-repository={resolve(t.model_repository)}",
            f"--backend-directory={backends}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={t.grpc_port}",
            "--http-address=127.0.0.1",
            f"--http-port={t.http_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={t.metrics_port}",
            # Explicit control with every model loaded: models can be loaded and unloaded
            # at run time (canaries, and tests of a tier going away).
            "--model-control-mode=explicit",
            "--load-model=*",
            # The response cache (for models that enable it: the embedder).
            f"--cache-directory={triton_dist.wheel_root() / 'caches'}",
            f"--cache-config=local,size={t.response_cache_bytes}",
        ]
        # The python-backend stub imports from the first python3 on PATH: the models venv.
        path = f"{resolve(t.models_venv) / 'bin'}:/usr/bin:/bin"
        env = {"PATH": path, "LD_LIBRARY_PATH": str(triton_dist.library_dir())}
        process = self._start("triton", argv, env)
        url = f"http://127.0.0.1:{t.http_port}/v2/health/ready"
        wait_until(lambda: _http_ok(url), process, START_TIMEOUT_S)

    def _start_service(self, name: str, config_path: Path, port: int) -> None:
        argv = [sys.executable, "-m", f"services.{name}", "--config", str(config_path)]
        process = self._start(name, argv)
        wait_until(lambda: _grpc_serving(f"127.0.0.1:{port}"), process, START_TIMEOUT_S)

    def _start_envoy(self) -> None:
        envoy = Path(sys.executable).parent / "envoy"
        argv = [
            str(envoy),
            "-c",
            str(self.run_dir / "envoy.yaml"),
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ]
        process = self._start("envoy", argv)
        wait_until(lambda: _grpc_serving(self.edge_target), process, START_TIMEOUT_S)

    def start(self) -> Mesh:
        try:
            config_path = self._write_configs()
            starts = {
                "triton": self._start_triton,
                "retrieval": lambda: self._start_service(
                    "retrieval", config_path, self.config.retrieval.port
                ),
                "gateway": lambda: self._start_service(
                    "gateway", config_path, self.config.gateway.port
                ),
                "envoy": self._start_envoy,
            }
            for plane in self.planes:
                starts[plane]()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops every process, last started first."""
        while self.processes:
            self.processes.pop().stop()

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
