"""The control plane's config: the shared store, leases, the rule while the store is away."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.config.loading import require

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
OFFLINE_RULES = ("allow", "refuse")


@dataclass(frozen=True, kw_only=True)
class ControlConfig:
    # false: no store, no admission, no usage records, no routing policy; keys come from
    # gateway.api_keys alone (a laptop without Redis, and the benchmarks' "off" side).
    enabled: bool = True
    # The shared store of keys, counters and usage: any redis:// or rediss:// URL (Redis or
    # Valkey) every region's gateways reach. Empty: the local mesh's own redis-server, which
    # the launcher starts on 127.0.0.1:redis_port (one for all regions).
    redis_url: str = ""
    redis_port: int = 6390
    # sha256 of the admin credential (`x-admin-key`), separate from tenant keys; empty: the
    # admin API refuses every call.
    admin_key_digest: str = ""
    # A gateway takes this share of a cap from the shared counter at a time (at least one
    # unit), spends it locally and takes the next share in the background.
    lease_fraction: float = 0.1
    # A lease's allowance that is not spent by then goes back to the shared counter.
    lease_ttl_s: float = 10.0
    # How often a gateway reads the key registry's version (a revoked key is refused within
    # this plus one read).
    registry_refresh_s: float = 0.5
    # A store call's timeout; past it the store counts as unreachable.
    store_timeout_s: float = 0.5
    # The store unreachable and a lease spent: `allow` admits up to offline_fraction of each
    # cap per window per gateway (docs/control-plane.md derives the overshoot), `refuse`
    # refuses with UNAVAILABLE.
    offline: str = "allow"
    offline_fraction: float = 0.05
    # The routing policy (YAML, services/control/policy.schema.json), reloaded when it changes.
    policy_file: str = "config/policy.yaml"
    # Usage records are written to the store in batches, this often.
    usage_flush_s: float = 1.0
    # Label token and cost counters with the tenant too (one series per tenant and tier).
    tenant_metrics: bool = False

    def __post_init__(self) -> None:
        require(
            self.redis_url == "" or self.redis_url.startswith(("redis://", "rediss://")),
            "control.redis_url",
            "must be empty or a redis:// or rediss:// URL",
        )
        require(0 < self.redis_port < 65536, "control.redis_port", "must be 1..65535")
        require(
            self.admin_key_digest == "" or bool(_SHA256.match(self.admin_key_digest)),
            "control.admin_key_digest",
            "must be a lowercase sha256 hex digest of the admin key",
        )
        require(0 < self.lease_fraction <= 1, "control.lease_fraction", "must be in (0, 1]")
        require(self.lease_ttl_s > 0, "control.lease_ttl_s", "must be positive")
        require(self.registry_refresh_s > 0, "control.registry_refresh_s", "must be positive")
        require(self.store_timeout_s > 0, "control.store_timeout_s", "must be positive")
        require(
            self.offline in OFFLINE_RULES,
            "control.offline",
            f"must be one of {', '.join(OFFLINE_RULES)}",
        )
        require(0 <= self.offline_fraction <= 1, "control.offline_fraction", "must be 0..1")
        require(self.usage_flush_s > 0, "control.usage_flush_s", "must be positive")

    def store_url(self) -> str:
        """The store's URL: redis_url, else the local mesh's redis-server."""
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    def store_url_shown(self) -> str:
        """store_url() with its password, if it has one, masked: for logs and status."""
        url = self.store_url()
        password = urlsplit(url).password
        return url if password is None else url.replace(f":{password}@", ":***@", 1)
