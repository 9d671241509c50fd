"""`ragmesh release`: a second build of the gateway taken through the release rings of a
running mesh, and rolled back by itself when the SLO gate finds a breach.

The second build is the same code with another mesh config (`--canary-config`): its
gateway section is what changes; its regions and ports are the running mesh's. Each
region's canary gateway serves on its stable gateway's ports plus
`release.canary_port_offset`, where the edge's canary clusters expect it
(services/edge/render.py). Then, each ring setting Envoy's runtime keys through its admin
port:

* ring 0: `release.ring0_percent` of the requests the first region serves go to its canary;
* ring 1: all of them (the other regions keep their stable gateways);
* ring 2: every region's canary, by the same priorities as the stable gateways.

Each ring bakes `release.bake_s` (longer, up to `max_bake_s`, until the canaries it judges
have served `min_requests`); then the gate (services/console/canary.py) judges the canaries'
own metrics, scraped before and after, against `slo.error_rate` and `slo.gateway_ms`. A
breach, too little traffic, a canary that exits, Ctrl-C or SIGTERM roll back at once: both
keys to 0 in one admin call (every new request on the stable path), then the canaries drain
and stop.

Promotion (ring 2 passed) means the canary config passed every ring: the command then puts
traffic back on the stable gateways and stops the canaries too, as its own processes die
with it. Making the canary config the stable one is the operator's step: restart the mesh
on it (`make up` with that config).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from services.config.mesh import MeshConfig
from services.config.regions import regions
from services.console.canary import NO_TRAFFIC, STOPPED, Figures, Verdict, figures, judge
from services.console.observe import HOST_HEALTHY, envoy_hosts, url
from services.console.scrape import Scrape, fetch
from services.edge.render import CANARY_ALL_REGIONS, CANARY_PERCENT
from services.supervisor.launcher import Mesh, resolve

SEEN_TIMEOUT_S = 30.0
POLL_S = 0.5
# After the keys go back to 0, for requests Envoy routed just before to reach the canary,
# which then drains them (SIGTERM: health NOT_SERVING, calls in flight finish).
SETTLE_S = 1.0


@dataclass(frozen=True)
class Ring:
    name: str
    percent: int  # release.canary.percent
    all_regions: int  # release.canary.all_regions
    every_region: bool  # judges every region's canary, else the first region's


def rings(config: MeshConfig) -> list[Ring]:
    first = config.mesh.regions[0]
    share = config.release.ring0_percent
    return [
        Ring(f"0: {share}% of {first}", share, 0, False),
        Ring(f"1: all of {first}", 100, 0, False),
        Ring("2: every region", 100, 100, True),
    ]


def canary_configs(stable: MeshConfig, canary: MeshConfig) -> dict[str, MeshConfig]:
    """Region name -> its canary gateway's config: the canary config's region, derived as
    the stable mesh's (its regions and stride), its gateway on the stable gateway's host
    and ports plus the offset, its paths resolved as the launcher resolves them."""
    offset = stable.release.canary_port_offset
    mesh = dataclasses.replace(
        canary.mesh, regions=stable.mesh.regions, port_stride=stable.mesh.port_stride
    )
    shifted = {r.name: r.config for r in regions(dataclasses.replace(canary, mesh=mesh))}
    configs = {}
    for region in regions(stable):
        s, c = region.config.gateway, shifted[region.name]
        gateway = dataclasses.replace(
            c.gateway,
            host=s.host,
            port=s.port + offset,
            openai_port=s.openai_port + offset,
            metrics_port=s.metrics_port + offset,
        )
        control = dataclasses.replace(c.control, policy_file=str(resolve(c.control.policy_file)))
        configs[region.name] = dataclasses.replace(c, gateway=gateway, control=control)
    return configs


@dataclass
class Outcome:
    promoted: bool
    verdicts: list[Verdict]


class Release:
    """One release against the running mesh of `stable` (its config, as `make up` ran it)."""

    def __init__(
        self, stable: MeshConfig, canary: MeshConfig, say: Callable[[str], None] = print
    ) -> None:
        if not stable.release.canary_port_offset:
            raise ValueError("release.canary_port_offset is 0: the edge has no canary routes")
        if not stable.gateway.metrics_port:
            raise ValueError("gateway.metrics_port is 0: the gate reads the canary's metrics")
        self.stable = stable
        self.canaries = canary_configs(stable, canary)
        self.launcher = Mesh(stable, planes=())  # starts the canaries only
        self.admin = f"http://127.0.0.1:{stable.edge.admin_port}"
        self.say = say

    def run(self) -> Outcome:
        """Every ring in turn until one does not pass; always ends on the stable path."""
        self._refuse_a_running_release()  # before anything that would end it
        verdicts: list[Verdict] = []
        ring = "start"
        try:
            self._start_canaries()
            for step in rings(self.stable):
                ring = step.name
                verdict = self._ring(step)
                verdicts.append(verdict)
                if not verdict.passed:
                    break
        except KeyboardInterrupt:
            verdicts.append(_stopped(ring, "interrupted (Ctrl-C or SIGTERM)"))
        except (RuntimeError, TimeoutError, OSError) as exc:
            verdicts.append(_stopped(ring, str(exc).splitlines()[0]))
        finally:
            self._restore()
        promoted = len(verdicts) == len(rings(self.stable)) and all(v.passed for v in verdicts)
        return Outcome(promoted, verdicts)

    def _refuse_a_running_release(self) -> None:
        with urllib.request.urlopen(f"{self.admin}/runtime", timeout=5) as response:
            entries = json.load(response).get("entries", {})
        for key in (CANARY_PERCENT, CANARY_ALL_REGIONS):
            value = entries.get(key, {}).get("final_value", "")
            if value not in ("", "0"):
                raise RuntimeError(f"{key} is {value}: another release is running")

    def _start_canaries(self) -> None:
        for region, config in self.canaries.items():
            name = f"gateway-canary-{region}"
            ports = f":{config.gateway.port}, metrics :{config.gateway.metrics_port}"
            self.say(f"starting {name} ({ports})")
            self.launcher.start_gateway(name, config)
        self._until_the_edge_sees_them()

    def _until_the_edge_sees_them(self) -> None:
        """Envoy's health checks pass for every canary, in its ring 2 clusters."""
        wanted = [
            (HOST_HEALTHY, (("cluster", cluster), ("port", str(port))))
            for c in self.canaries.values()
            for cluster, port in (
                ("gateway-canary-all", c.gateway.port),
                ("gateway-openai-canary-all", c.gateway.openai_port),
            )
        ]
        deadline = time.monotonic() + SEEN_TIMEOUT_S
        while time.monotonic() < deadline:
            hosts = envoy_hosts(self.admin)
            if hosts is not None and all(hosts.samples.get(w) == 1.0 for w in wanted):
                return
            time.sleep(POLL_S)
        raise TimeoutError(
            f"the edge did not see every canary healthy in {SEEN_TIMEOUT_S:.0f}s: was it "
            "rendered with release.canary_port_offset 0, or another offset?"
        )

    def _ring(self, ring: Ring) -> Verdict:
        judged = list(self.canaries) if ring.every_region else list(self.canaries)[:1]
        before = {r: self._scrape(r) for r in judged}
        self._set_keys(ring.percent, ring.all_regions)
        bake = self.stable.release
        self.say(f"ring {ring.name}: canary of {', '.join(judged)}; baking {bake.bake_s:g}s")
        started = time.monotonic()
        while True:
            time.sleep(POLL_S)
            for region in judged:
                if self.launcher.processes[f"gateway-canary-{region}"].failed():
                    return _stopped(ring.name, f"canary of {region} exited")
            elapsed = time.monotonic() - started
            if elapsed < bake.bake_s:
                continue
            after = {r: self._scrape(r) for r in judged}
            missing = [r for r, s in after.items() if s is None]
            if missing:
                return _stopped(ring.name, f"canary metrics of {', '.join(missing)} unreachable")
            found = figures([a.since(before[r]) for r, a in after.items() if a is not None])
            verdict = judge(ring.name, found, self.stable.slo, bake.min_requests)
            if verdict.verdict != NO_TRAFFIC or elapsed >= bake.max_bake_s:
                return verdict

    def _scrape(self, region: str) -> Scrape | None:
        gateway = self.canaries[region].gateway
        return fetch(url(gateway.host, gateway.metrics_port, "/metrics"))

    def _set_keys(self, percent: int, all_regions: int) -> None:
        """Both runtime keys in one admin call: Envoy applies them together."""
        query = urllib.parse.urlencode({CANARY_PERCENT: percent, CANARY_ALL_REGIONS: all_regions})
        request = urllib.request.Request(f"{self.admin}/runtime_modify?{query}", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def _restore(self) -> None:
        """Every new request on the stable path, then the canaries drained and stopped."""
        try:
            self._set_keys(0, 0)
        finally:
            if self.launcher.processes:
                self.say("traffic back on the stable gateways; draining the canaries")
                time.sleep(SETTLE_S)
            self.launcher.stop()


def _stopped(ring: str, reason: str) -> Verdict:
    return Verdict(ring, Figures(0, 0, None), STOPPED, reason)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _say(line: str) -> None:
    print(line, flush=True)  # as it happens, also into a pipe


def run(stable: MeshConfig, canary: MeshConfig) -> Outcome:
    """A release with SIGTERM handled as Ctrl-C: either rolls back."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return Release(stable, canary, _say).run()
