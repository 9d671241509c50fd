"""The shared store of the control plane: Redis (or Valkey), reached at one URL by every
region's gateways. Key registry, lease counters and usage records; every multi-key update is
one Lua script, so it is atomic on the server.

Keys (`{...}` is a Redis Cluster hash tag: one tenant's or key's data in one slot):
  ragmesh:registry:version        INT   bumped by every registry change
  ragmesh:tenants                 HASH  tenant name -> Tenant JSON
  ragmesh:keys                    HASH  key id -> ApiKey JSON
  ragmesh:{<scope>}:<counter>     HASH  `spent`, and per gateway `held:<id>` (allowance),
                                        `owed:<id>` (reserved), `exp:<id>` (ms)
  ragmesh:{t:<tenant>}:usage      STREAM one entry per request, its id the time in ms
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.errors import Unavailable

VERSION = "ragmesh:registry:version"
# Usage records older than this are trimmed from their stream as new ones are written.
USAGE_RETENTION_MS = 400 * 86_400_000
TENANTS = "ragmesh:tenants"
KEYS = "ragmesh:keys"

# take(counter): report what this gateway spent, holds unreserved (`allowance`) and has
# reserved for requests in flight (`reserved`); return other gateways' expired allowance to
# the cap (their reservations stay theirs, counted, until they report what those became; a
# gateway that never comes back strands them until the window ends); grant up to `want` of
# what the cap leaves; extend this gateway's lease. A cap of -1 means none (a budget with
# only a soft cap).
# ARGV: gateway id, cap, want, spent, reserved, allowance, lease ttl ms, counter ttl s.
# Returns {granted, spent by all, held and reserved by all gateways after the grant}.
_TAKE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local gw, cap, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local reserved, allowance = tonumber(ARGV[5]), tonumber(ARGV[6])
local fields = redis.call('HGETALL', KEYS[1])
local values = {}
for i = 1, #fields, 2 do values[fields[i]] = fields[i + 1] end
local spent = tonumber(values['spent'] or '0') + tonumber(ARGV[4])
local others = 0
for name, value in pairs(values) do
  if string.sub(name, 1, 5) == 'held:' and string.sub(name, 6) ~= gw then
    local id = string.sub(name, 6)
    local owed = tonumber(values['owed:' .. id] or '0')
    if tonumber(value) > 0 and tonumber(values['exp:' .. id] or '0') < now_ms then
      redis.call('HSET', KEYS[1], name, 0)
      value = '0'
    end
    others = others + tonumber(value) + owed
  end
end
local own = allowance + reserved
local granted = want
if cap >= 0 then
  granted = math.max(math.min(want, cap - spent - others - own), 0)
end
redis.call('HSET', KEYS[1], 'spent', spent, 'held:' .. gw, allowance + granted,
  'owed:' .. gw, reserved, 'exp:' .. gw, now_ms + tonumber(ARGV[7]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
return {granted, spent, others + own + granted}
"""


@dataclass(frozen=True)
class Taken:
    """A take's answer: what this gateway got, and the counter's state after it."""

    granted: int
    spent: int  # reported spent by every gateway
    held: int  # allowance and reservations out in leases, this gateway's included


class Store:
    """The shared store, with every call bounded by `timeout_s`.

    Raises Unavailable("control store unreachable: ...") when the store does not answer in
    time or refuses the connection."""

    def __init__(self, url: str, timeout_s: float, shown: str = "") -> None:
        self.url = shown or url  # as logs and status show it: no password
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
            health_check_interval=0,
        )
        self._take = self._redis.register_script(_TAKE)

    async def _run(self, call: Any) -> Any:
        try:
            return await call
        except (RedisError, OSError) as exc:
            raise Unavailable(f"control store unreachable: {type(exc).__name__}") from exc

    async def take(
        self,
        counter: str,
        gateway: str,
        *,
        cap: int,
        want: int,
        spent: int,
        reserved: int,
        allowance: int,
        lease_ttl_ms: int,
        counter_ttl_s: int,
    ) -> Taken:
        """One lease take on `counter` (the _TAKE script above)."""
        args: list[str | int] = [
            gateway,
            cap,
            want,
            spent,
            reserved,
            allowance,
            lease_ttl_ms,
            counter_ttl_s,
        ]
        granted, total, held = await self._run(self._take(keys=[counter], args=args))
        return Taken(int(granted), int(total), int(held))

    async def version(self) -> int:
        return int(await self._run(self._redis.get(VERSION)) or 0)

    async def records(self, table: str) -> dict[str, dict[str, Any]]:
        """Every record of TENANTS or KEYS, by name or id."""
        raw = await self._run(self._redis.hgetall(table))
        return {name: json.loads(value) for name, value in raw.items()}

    async def record(self, table: str, name: str) -> dict[str, Any] | None:
        raw = await self._run(self._redis.hget(table, name))
        return None if raw is None else json.loads(raw)

    async def put(self, table: str, name: str, record: Mapping[str, Any], *, new: bool) -> bool:
        """Writes a record and bumps the registry version in one transaction. `new`: only if
        no record of that name exists (returns False then)."""
        value = json.dumps(record, sort_keys=True)
        async with self._redis.pipeline(transaction=True) as pipe:
            if new:
                pipe.hsetnx(table, name, value)
            else:
                pipe.hset(table, name, value)
            pipe.incr(VERSION)
            written, _ = await self._run(pipe.execute())
        return bool(written) or not new

    async def append_usage(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """XADD each (stream, fields), in one round trip, trimming entries older than
        USAGE_RETENTION_MS (approximately: whole stream nodes)."""
        oldest = f"{int(time.time() * 1000) - USAGE_RETENTION_MS}-0"
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, fields in entries:
                pipe.xadd(stream, fields, minid=oldest, approximate=True)  # type: ignore[arg-type]
            await self._run(pipe.execute())

    async def usage(self, stream: str, start_ms: int, end_ms: int) -> list[dict[str, str]]:
        """The fields of `stream`'s entries written from `start_ms` to `end_ms` inclusive."""
        rows = await self._run(self._redis.xrange(stream, min=str(start_ms), max=str(end_ms)))
        return [fields for _, fields in rows]

    async def close(self) -> None:
        await self._redis.aclose()
