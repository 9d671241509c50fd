"""A tenant's requests against small budgets, as the budget-exhaustion game day reads them.

The tenant asks without naming a tier, so the routing policy picks one: the tenant's tier
for its criticality until its spending passes the soft cap, then the policy's cheaper
`over_soft_cap` tier (reason `soft_cap`); at the hard cap every request is refused with
RESOURCE_EXHAUSTED and a `google.rpc.QuotaFailure` naming the tenant, never charged.
`Capped.problems()` lists every way the replies broke that, as sentences.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from loadtest.openloop import REQUEST_TIMEOUT_S, Reply, Sample, Send

SOFT_CAP = "soft_cap"  # the routing reason past a soft cap (services/control/policy.py)
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.name


def quota_subjects(error: grpc.aio.AioRpcError) -> list[str]:
    """The subjects of the QuotaFailure in a refusal's details ([] without one)."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    if not isinstance(raw, bytes):
        return []
    subjects = []
    for detail in status_pb2.Status.FromString(raw).details:
        failure = error_details_pb2.QuotaFailure()
        if detail.Unpack(failure):
            subjects += [v.subject for v in failure.violations]
    return subjects


def routed_generate(
    stub: gateway_pb2_grpc.GatewayStub, key: str, request: pb.GenerateRequest
) -> Send:
    """Generate calls whose Reply.reason says how each was routed (`tier: reason`) or, for a
    refusal, the QuotaFailure's subjects (`quota: tenant:x`; `quota: none` without one)."""
    metadata = (("x-api-key", key),)

    async def send(_i: int) -> Reply:
        try:
            reply = await stub.Generate(request, metadata=metadata, timeout=REQUEST_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            subjects = ", ".join(quota_subjects(exc)) or "none"
            return Reply(exc.code().name, reason=f"quota: {subjects}")
        return Reply("OK", reply.degraded, reply.region, f"{reply.tier}: {reply.routing.reason}")

    return send


@dataclass
class Capped:
    """One tenant's budget of requests per day, its replies, and what the mesh counted."""

    tenant: str
    soft: int
    hard: int
    cheaper_tier: str  # the policy's over_soft_cap tier
    samples: list[Sample] = field(default_factory=list)
    crossings: int = 0  # the rise of ragmesh_control_soft_cap_crossings_total{requests, day}
    spent: int = 0  # the shared store's count of the tenant's requests today

    @property
    def admitted(self) -> list[Sample]:
        return [s for s in self._in_order() if s.status == "OK"]

    @property
    def refused(self) -> list[Sample]:
        return [s for s in self._in_order() if s.status != "OK"]

    def _in_order(self) -> list[Sample]:
        return sorted(self.samples, key=lambda s: s.at_s)

    def problems(self) -> list[str]:
        """Every rule the replies or the counts broke; [] when the caps held."""
        found = []
        ordered = self._in_order()
        admitted, refused = self.admitted, self.refused
        if len(admitted) != self.hard:
            found.append(f"{len(admitted)} requests admitted against a hard cap of {self.hard}")
        if not refused:
            found.append("no request was refused: the load never reached the hard cap")
        cut = next((i for i, s in enumerate(ordered) if s.status != "OK"), len(ordered))
        if any(s.status == "OK" for s in ordered[cut:]):
            found.append("a request sent after a refused one was admitted")
        quota = f"quota: tenant:{self.tenant}"
        if wrong := sorted(
            {(s.status, s.reason) for s in refused if (s.status, s.reason) != (EXHAUSTED, quota)}
        ):
            found.append(f"refusals other than RESOURCE_EXHAUSTED with {quota}: {wrong}")
        moved = [s.reason == f"{self.cheaper_tier}: {SOFT_CAP}" for s in admitted]
        below = moved.index(True) if True in moved else len(moved)
        if below == len(moved):
            found.append(f"no answer was routed to {self.cheaper_tier} for the soft cap")
        elif not all(moved[below:]):
            found.append("an answer past the soft cap was routed otherwise")
        if below > self.soft:
            found.append(f"{below} answers came before any moved, past the soft cap of {self.soft}")
        if self.crossings < 1:
            found.append("ragmesh_control_soft_cap_crossings_total did not rise")
        if self.spent > self.hard or self.spent != len(admitted):
            found.append(
                f"the store counts {self.spent} requests, {len(admitted)} admitted, "
                f"hard cap {self.hard}"
            )
        return found

    def notes(self) -> list[str]:
        routed = Counter(s.reason for s in self.admitted)
        refused = self.refused
        first = f" from {refused[0].at_s:.1f} s on" if refused else ""
        return [
            f"tenant {self.tenant}: soft cap {self.soft}, hard cap {self.hard} requests a day; "
            f"sent {len(self.samples)}, admitted {len(self.admitted)}, refused {len(refused)}"
            f"{first}",
            "admitted as " + ", ".join(f"{n} x {reason}" for reason, n in routed.items()),
            f"store counts {self.spent} spent; soft-cap crossings counted by the gateways: "
            f"{self.crossings}",
            *(f"BROKEN: {p}" for p in self.problems()),
        ]
