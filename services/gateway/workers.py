"""Several gateway processes on one host (`gateway.workers`), under one supervisor.

One Python process serves about one core's worth of requests (the GIL; `make
bench-gateways`). With `workers: N` above 1, `python -m services.gateway` becomes a
supervisor, as uvicorn's `--workers` does (uvicorn/supervisors/multiprocess.py): it starts N
workers, each `python -m services.gateway` again with WORKER set to its number, starts a
worker again when one dies, and on SIGTERM or SIGINT passes the signal on (the workers
drain), waits for them and exits; a second signal is passed on too (they exit at once).

- **Ports.** Every worker binds the same gRPC and OpenAI ports with SO_REUSEPORT: the
  kernel spreads new connections over them (Linux hashes each connection to one socket).
- **Sockets for Envoy.** Each worker also serves both APIs on Unix sockets of its own
  (worker_sockets in services/config/gateway.py), which Envoy on the same host lists as
  hosts: it balances requests over the workers, where over the shared port it would balance
  its few connections.
- **Metrics.** prometheus_client's multiprocess mode: each worker writes its metrics to
  files in a directory the supervisor made (PROMETHEUS_MULTIPROC_DIR) and serves none; the
  supervisor serves them summed on `gateway.host`:`gateway.metrics_port` (gauges by their
  `multiprocess_mode`), and marks a dead worker's files so its live gauges go.
- **State.** What the control plane shares (keys, tenants, counters, usage) is in the
  shared store, as between gateways: each worker is a gateway there, with its own id and
  leases. Caches and breakers are each worker's own.
- **A dead supervisor.** Each worker checks once a second that its parent is still the one
  that started it, and drains and exits when it is not, so no worker outlives it holding
  the ports.
- **Signals.** Workers share the supervisor's process group, so a Ctrl-C (or systemd's
  stop of the whole group) reaches them as well as the signal the supervisor passes on; a
  second signal within a second of the first counts as the same one
  (services/common/serving.py), so they drain.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from services.common import metrics

LOGGER = logging.getLogger(__name__)
# The worker's number, 0..N-1; unset in a lone gateway. No config section is named
# `worker`, so the config loader's RAGMESH_<SECTION>_<FIELD> overrides never read it.
WORKER = "RAGMESH_WORKER_NUMBER"
SUPERVISOR = "RAGMESH_WORKER_SUPERVISOR"  # its supervisor's pid
# A worker that dies this often within the window takes the supervisor down with it (the
# mesh's supervisor, or Kubernetes, then starts it again): a crash loop is not hidden.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
_POLL_S = 0.2


def worker() -> int | None:
    """This process's worker number, or None when it is no supervisor's worker."""
    number = os.environ.get(WORKER)
    return None if number is None else int(number)


def supervise(
    argv: list[str],
    workers: int,
    metrics_address: tuple[str, int],
    sockets: Sequence[Path] = (),
) -> int:
    """Runs `workers` copies of `python -m services.gateway *argv` until a signal; returns
    the exit status: 0 after a signal, 1 when a worker died too often. Serves their metrics
    on `metrics_address` (host, port; port 0: none). On the way out it removes the workers'
    `sockets` that a killed worker left (worker_sockets)."""
    running: dict[int, subprocess.Popen[bytes]] = {}
    signals: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)
        for process in running.values():
            process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    directory = tempfile.mkdtemp(prefix="ragmesh-gateway-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory, SUPERVISOR: str(os.getpid())}

    def start(number: int) -> None:
        if signals:
            return  # stopping: none starts
        command = [sys.executable, "-m", "services.gateway", *argv]
        process = running[number] = subprocess.Popen(command, env={**env, WORKER: str(number)})
        if signals:  # a signal that came while it started did not reach it
            process.send_signal(signal.SIGTERM)
        LOGGER.info("gateway worker %d started (pid %d)", number, process.pid)

    deaths: deque[float] = deque()
    status = 0
    try:
        host, port = metrics_address
        if port:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            metrics.serve(port, host, registry)
        for number in range(workers):
            start(number)
        while running:
            time.sleep(_POLL_S)
            for number, process in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[number]
                mark_process_dead(process.pid, directory)  # type: ignore[no-untyped-call]
                if signals:
                    continue
                LOGGER.warning(
                    "gateway worker %d (pid %d) exited with %d", number, process.pid, code
                )
                deaths.append(time.monotonic())
                while deaths[0] < time.monotonic() - RESTART_WINDOW_S:
                    deaths.popleft()
                if len(deaths) > MAX_RESTARTS:
                    LOGGER.error(
                        "gateway workers died %d times in %.0f s: stopping",
                        len(deaths),
                        RESTART_WINDOW_S,
                    )
                    status = 1
                    on_signal(signal.SIGTERM, None)
                else:
                    start(number)
    finally:
        for process in running.values():  # only after an error here: never leave one behind
            process.kill()
        shutil.rmtree(directory, ignore_errors=True)
        for path in sockets:
            path.unlink(missing_ok=True)
    return status


def watch_parent() -> None:
    """In a worker: SIGTERM to itself (a drain) once its supervisor is gone, even if that
    happened before this worker looked."""
    supervisor = int(os.environ[SUPERVISOR])

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(1.0)
        LOGGER.warning("the gateway's supervisor is gone: draining and exiting")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-supervisor", daemon=True).start()
