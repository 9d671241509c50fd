"""The control plane's CPU per request, in process, on and off side by side.

    python -m loadtest.bench_control [--requests 20000] [--rounds 3]

Starts the mesh's redis-server alone (free port, temporary folder), then runs what a gateway
does per generate request with the control plane (services/gateway/control.py): the key
from the registry copy, the routing policy (config/policy.yaml), admission against six
leased counters (two per-key limits, four budgets), settlement and the usage record, with
the background tasks running; and with it off (control.enabled false: the key alone). Each
round runs both, `--requests` each, back to back; it prints the CPU per request of each
(time.process_time, this process alone), their difference, and how many requests waited
on the store. `make bench-overhead` measures the same through real gateways, with their
noise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
from pathlib import Path

from services.config.mesh import MeshConfig
from services.config.regions import first
from services.control.admission import Charge
from services.control.registry import Budget, Tenant, key_digest
from services.gateway.control import Control, Spent
from services.gateway.values import Call
from services.supervisor.launcher import ROOT, Mesh, isolated

TENANT = Tenant(
    "demo",
    requests_per_second=10**9,
    tokens_per_minute=10**12,
    budgets=(
        Budget("tokens", "day", hard=1e12, soft=5e11),
        Budget("tokens", "month", hard=1e12, soft=5e11),
        Budget("cost_usd", "day", hard=1e9, soft=5e8),
        Budget("requests", "day", hard=1e12),
    ),
)
WORST = Charge(requests=1, tokens=2048, cost_micro_usd=3000)
SPENT = Spent("standard", "standard", 400, 64, "miss", "ok")


async def _requests(control: Control, key: str, count: int, on: bool) -> float:
    """CPU seconds per request over `count` requests."""
    metadata = [("x-api-key", key)]
    started = time.process_time()
    for i in range(count):
        record = control.authenticate(metadata)
        if on:
            call = Call.start(record.tenant, 30.0, record)
            route = control.route(call.tenant, "", "", lambda _: False)
            reservation = await control.admit(call, WORST)
            control.settle(call, reservation, SPENT, route.reason)
        if i % 64 == 0:
            await asyncio.sleep(0)  # let the background tasks run, as a server's loop would
    return (time.process_time() - started) / count


async def measure(mesh: Mesh, requests: int, rounds: int) -> None:
    config = mesh.config
    key = config.mesh.demo_key
    seed = {"demo": key_digest(key)}
    policy = Path(config.control.policy_file)
    on = Control(config.control, "local", policy)
    off = Control(dataclasses.replace(config.control, enabled=False), "local", policy)
    await on.start(seed)
    await off.start(seed)
    await on.registry.put_tenant(TENANT, new=False)
    await on.registry.refresh()
    await _requests(on, key, 1000, True)  # warm-up: leases taken, caches filled
    waits = on.admission.waits
    print(f"{requests} requests per side and round, {rounds} rounds, six leased counters")
    print(f"{'round':>5} {'on µs':>8} {'off µs':>8} {'added µs':>9}")
    added = []
    for n in range(rounds):
        with_control = await _requests(on, key, requests, True)
        without = await _requests(off, key, requests, False)
        added.append(with_control - without)
        print(f"{n + 1:5d} {with_control * 1e6:8.1f} {without * 1e6:8.1f} {added[-1] * 1e6:9.1f}")
    print(
        f"added by the control plane: {min(added) * 1e6:.1f} to {max(added) * 1e6:.1f} µs of "
        f"CPU per request; requests that waited on the store: {on.admission.waits - waits} "
        f"of {requests * rounds}"
    )
    await on.close()
    await off.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="control-") as tmp:
        config = isolated(first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1), Path(tmp))
        with Mesh(config, planes=("redis",)) as mesh:
            asyncio.run(measure(mesh, args.requests, args.rounds))


if __name__ == "__main__":
    main()
