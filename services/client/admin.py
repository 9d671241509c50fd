"""A thin client of the admin API (ragmesh.v1.Admin), through Envoy by default."""

from __future__ import annotations

import grpc
from ragmesh.v1 import admin_pb2 as pb
from ragmesh.v1 import admin_pb2_grpc

from services.common.serving import CHANNEL_OPTIONS


class AdminClient:
    """One method per Admin RPC; every call carries the admin credential (`x-admin-key`)."""

    def __init__(self, target: str, admin_key: str, timeout_s: float = 60.0) -> None:
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)
        self._metadata = (("x-admin-key", admin_key),)
        self._timeout = timeout_s

    def create_tenant(self, tenant: pb.Tenant) -> pb.Tenant:
        return self._stub.CreateTenant(tenant, timeout=self._timeout, metadata=self._metadata)

    def update_tenant(self, tenant: pb.Tenant) -> pb.Tenant:
        return self._stub.UpdateTenant(tenant, timeout=self._timeout, metadata=self._metadata)

    def get_tenant(self, name: str) -> pb.Tenant:
        return self._stub.GetTenant(
            pb.GetTenantRequest(name=name), timeout=self._timeout, metadata=self._metadata
        )

    def list_tenants(self) -> pb.ListTenantsResponse:
        return self._stub.ListTenants(
            pb.ListTenantsRequest(), timeout=self._timeout, metadata=self._metadata
        )

    def create_key(self, request: pb.CreateKeyRequest) -> pb.CreatedKey:
        return self._stub.CreateKey(request, timeout=self._timeout, metadata=self._metadata)

    def list_keys(self, tenant: str) -> pb.ListKeysResponse:
        return self._stub.ListKeys(
            pb.ListKeysRequest(tenant=tenant), timeout=self._timeout, metadata=self._metadata
        )

    def rotate_key(self, request: pb.RotateKeyRequest) -> pb.CreatedKey:
        return self._stub.RotateKey(request, timeout=self._timeout, metadata=self._metadata)

    def revoke_key(self, request: pb.RevokeKeyRequest) -> pb.ApiKey:
        return self._stub.RevokeKey(request, timeout=self._timeout, metadata=self._metadata)

    def usage(self, request: pb.GetUsageRequest) -> pb.UsageResponse:
        return self._stub.GetUsage(request, timeout=self._timeout, metadata=self._metadata)

    def explain_route(self, request: pb.ExplainRouteRequest) -> pb.ExplainRouteResponse:
        return self._stub.ExplainRoute(request, timeout=self._timeout, metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()
