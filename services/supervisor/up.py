"""`make up`: run the mesh in the foreground, seed the sample corpus, print how to use it."""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter

from services.client.files import read_document
from services.client.gateway import Client
from services.client.sample_corpus import harvest
from services.config.mesh import MeshConfig
from services.supervisor.launcher import Mesh

LOGGER = logging.getLogger(__name__)


def seed(mesh: Mesh) -> None:
    """Ingests the sample corpus when the demo tenant's store is empty."""
    client = Client(mesh.edge_target, mesh.config.mesh.demo_key, timeout_s=600)
    try:
        if client.status().corpus_version not in ("", "0"):
            return
        paths = harvest(mesh.data_dir / "corpus")
        print(f"ingesting the sample corpus: {len(paths)} documents from Python's docstrings")
        stored = client.ingest([read_document(p) for p in paths], total=len(paths))
        for n, why in stored.failed:
            print(f"not ingested: {paths[n]}: {why}")
        print(
            f"ingested {stored.documents} documents as {stored.chunks} chunks "
            f"(corpus version {stored.corpus_version})"
        )
    finally:
        client.close()


def _region_lines(mesh: Mesh) -> str:
    lines = []
    for region in mesh.regions:
        t = region.config.triton
        role = "default, governance point" if region.priority == 0 else "replica"
        lines.append(
            f"  region {region.name} ({role})\n"
            f"    gateway / retrieval    {region.gateway_target} / {region.retrieval_target}\n"
            f"    Triton gRPC / HTTP     {region.triton_target} / {t.host}:{t.http_port}"
        )
    return "\n".join(lines)


def _viewer_line(mesh: Mesh) -> str:
    if not mesh.trace_viewer:
        return ""
    return f"\n  traces (Arize Phoenix)   {mesh.config.telemetry.otlp_endpoint}"


def _admin_line(mesh: Mesh) -> str:
    key = mesh.config.mesh.demo_admin_key
    return f"\n  admin key (x-admin-key)  {key}" if key else ""


def banner(mesh: Mesh, seconds: float) -> str:
    c = mesh.config
    key = c.mesh.demo_key
    names = ", ".join(r.name for r in mesh.regions)
    return f"""
ragmesh is up in {seconds:.0f}s (regions {names}). Ctrl-C stops everything.

  edge (gRPC + HTTP/JSON)  {mesh.http_url}
  OpenAI-compatible API    {mesh.http_url}/v1 (chat/completions, embeddings, models)
  topology (live)          {mesh.http_url}/topology
  Envoy admin              {mesh.admin_url}
{_region_lines(mesh)}
  store (Redis)            {mesh.config.control.store_url_shown()}
  logs                     {mesh.run_dir / "logs"}{_viewer_line(mesh)}
  demo API key             {key}{_admin_line(mesh)}

Try:
  curl -s -H 'x-api-key: {key}' -d '{{"query": "How do I parse a JSON string?"}}' \\
    {mesh.http_url}/v1/generate
  curl -sN -H 'x-api-key: {key}' -d '{{"query": "What does functools.lru_cache do?"}}' \\
    {mesh.http_url}/v1/generate:stream
  curl -s -H 'authorization: Bearer {key}' {mesh.http_url}/v1/chat/completions \\
    -d '{{"model": "standard", "messages": [{{"role": "user", "content": "What is a deque?"}}]}}'
  .venv/bin/ragmesh ask --stream "How do I make a temporary directory?"
  .venv/bin/ragmesh status
  .venv/bin/ragmesh slo --window 30
"""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


RESTARTS = 5  # a process that dies more often than this stops the mesh


def _dead(mesh: Mesh, restarts: Counter[str]) -> list[str]:
    """The processes that failed (exited, or a Triton that crashed) and could not be started
    again. One that fails is started again, up to RESTARTS times each, while the other
    regions serve for its own (gateways go on under the offline rule while the store is away;
    docs/control-plane.md)."""
    dead = [p.name for p in mesh.processes.values() if p.failed()]
    for name in list(dead):
        if restarts[name] >= RESTARTS:
            LOGGER.error("%s failed again, after %d restarts", name, restarts[name])
            continue
        restarts[name] += 1
        LOGGER.error("%s failed (see its log); starting it again", name)
        try:
            mesh.restart(name)
        except (OSError, RuntimeError, TimeoutError) as exc:  # it cannot come back
            LOGGER.error("%s did not start again: %s", name, exc)
            continue
        dead.remove(name)
    return dead


def run(config: MeshConfig, *, sample: bool = True, traces: bool = False) -> None:
    """Runs until Ctrl-C, SIGTERM or a process that dies and cannot be started again (or
    died RESTARTS times); then stops them all."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    started = time.monotonic()
    try:
        with Mesh(config, trace_viewer=traces) as mesh:
            if sample:
                seed(mesh)
            print(banner(mesh, time.monotonic() - started), flush=True)
            restarts: Counter[str] = Counter()
            while not (dead := _dead(mesh, restarts)):
                time.sleep(1.0)
            LOGGER.error("%s exited; stopping the mesh (see its log)", ", ".join(dead))
    except KeyboardInterrupt:
        pass
    print("stopped.")
