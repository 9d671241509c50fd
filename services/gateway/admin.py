"""The admin gRPC service (ragmesh.v1.Admin): tenants, keys, limits, budgets and usage, for
the holder of the admin credential. Protobuf in, registry call, protobuf out."""

from __future__ import annotations

import contextlib

import grpc
from ragmesh.v1 import admin_pb2 as pb
from ragmesh.v1 import admin_pb2_grpc

from services.common.errors import InvalidArgument, Unavailable
from services.control.registry import ApiKey, Budget, Tenant, check_name
from services.gateway.control import Control
from services.gateway.core import GatewayCore
from services.gateway.servicer import usage_response

MAX_GRACE_S = 30 * 86_400


def _tenant(t: Tenant) -> pb.Tenant:
    return pb.Tenant(
        name=t.name,
        requests_per_second=t.requests_per_second,
        tokens_per_minute=t.tokens_per_minute,
        budgets=[
            pb.Budget(metric=b.metric, window=b.window, hard=b.hard, soft=b.soft) for b in t.budgets
        ],
        created_ms=t.created_ms,
    )


def _from_pb(t: pb.Tenant) -> Tenant:
    return Tenant(
        name=t.name,
        requests_per_second=t.requests_per_second,
        tokens_per_minute=t.tokens_per_minute,
        budgets=tuple(Budget(b.metric, b.window, b.hard, b.soft) for b in t.budgets),
    )


def _key(k: ApiKey) -> pb.ApiKey:
    return pb.ApiKey(
        id=k.id,
        tenant=k.tenant,
        labels=k.labels,
        created_ms=k.created_ms,
        expires_ms=k.expires_ms,
        revoked_ms=k.revoked_ms,
    )


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, control: Control, core: GatewayCore) -> None:
        self._control = control
        self._core = core
        self._registry = control.registry

    def _admin(self, context: grpc.aio.ServicerContext) -> None:
        self._control.check_admin(context.invocation_metadata() or ())

    async def _written(self) -> None:
        """This gateway reads the change at once; the others within a registry refresh."""
        with contextlib.suppress(Unavailable):
            await self._registry.refresh()

    async def CreateTenant(
        self, request: pb.Tenant, context: grpc.aio.ServicerContext
    ) -> pb.Tenant:
        self._admin(context)
        tenant = await self._registry.put_tenant(_from_pb(request), new=True)
        await self._written()
        return _tenant(tenant)

    async def UpdateTenant(
        self, request: pb.Tenant, context: grpc.aio.ServicerContext
    ) -> pb.Tenant:
        self._admin(context)
        tenant = await self._registry.put_tenant(_from_pb(request), new=False)
        await self._written()
        return _tenant(tenant)

    async def GetTenant(
        self, request: pb.GetTenantRequest, context: grpc.aio.ServicerContext
    ) -> pb.Tenant:
        self._admin(context)
        return _tenant(await self._registry.get_tenant(request.name))

    async def ListTenants(
        self, request: pb.ListTenantsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTenantsResponse:
        self._admin(context)
        return pb.ListTenantsResponse(tenants=[_tenant(t) for t in await self._registry.tenants()])

    async def CreateKey(
        self, request: pb.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreatedKey:
        self._admin(context)
        key, record = await self._registry.create_key(
            check_name(request.tenant, "tenant"), dict(request.labels), request.expires_ms
        )
        await self._written()
        return pb.CreatedKey(key=key, record=_key(record))

    async def ListKeys(
        self, request: pb.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListKeysResponse:
        self._admin(context)
        keys = await self._registry.keys(check_name(request.tenant, "tenant"))
        return pb.ListKeysResponse(keys=[_key(k) for k in keys])

    async def RotateKey(
        self, request: pb.RotateKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreatedKey:
        self._admin(context)
        if not 0 <= request.grace_s <= MAX_GRACE_S:
            raise InvalidArgument(f"grace_s: must be 0..{MAX_GRACE_S}", field="grace_s")
        key, record = await self._registry.rotate(
            check_name(request.tenant, "tenant"), request.key_id, request.grace_s * 1000
        )
        await self._written()
        return pb.CreatedKey(key=key, record=_key(record))

    async def RevokeKey(
        self, request: pb.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApiKey:
        self._admin(context)
        record = await self._registry.revoke(check_name(request.tenant, "tenant"), request.key_id)
        await self._written()
        return _key(record)

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.UsageResponse:
        self._admin(context)
        tenant = check_name(request.tenant, "tenant")
        await self._registry.get_tenant(tenant)
        return await usage_response(self._control, tenant, request)

    async def ExplainRoute(
        self, request: pb.ExplainRouteRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainRouteResponse:
        self._admin(context)
        tenant = check_name(request.tenant, "tenant")
        await self._registry.get_tenant(tenant)
        broken = self._core.planner.broken
        route = self._control.route(tenant, request.priority, request.tier, broken, counted=False)
        health = self._control.health(self._core.planner.tier_names(), broken)
        policy = self._control.policy
        return pb.ExplainRouteResponse(
            tier=route.tier,
            reason=route.reason,
            detail=route.detail,
            over_soft_cap=self._control.over_soft_cap(tenant),
            tiers=[
                pb.TierState(
                    tier=name,
                    ttft_p95_ms=-1.0 if state.ttft_p95_ms is None else state.ttft_p95_ms,
                    breaker_open=state.breaker_open,
                )
                for name, state in sorted(health.items())
            ],
            policy_file=str(policy.path),
            policy_error=policy.error,
        )
