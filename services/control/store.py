"""The shared store of the control plane: Redis (or Valkey), reached at one URL by every
region's gateways. Key registry, lease counters and usage records; every multi-key update is
one Lua script, so it is atomic on the server.

Keys (`{...}` is a Redis Cluster hash tag: one tenant's or key's data in one slot):
  ragmesh:registry:version        INT   bumped by every registry change
  ragmesh:tenants                 HASH  tenant name -> Tenant JSON
  ragmesh:keys                    HASH  key id -> ApiKey JSON
  ragmesh:{<scope>}:<counter>     HASH  `spent`, and per gateway `held:<id>`, `exp:<id>` (ms)
  ragmesh:{t:<tenant>}:usage      STREAM one entry per request, its id the time in ms
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.errors import Unavailable

VERSION = "ragmesh:registry:version"
TENANTS = "ragmesh:tenants"
KEYS = "ragmesh:keys"

# take(counter): report `spent` of this gateway's lease, drop other gateways' expired leases
# (their unspent allowance returns), grant up to `want` of what the cap leaves, and extend
# this gateway's lease. A cap of -1 means none (a budget with only a soft cap).
# ARGV: gateway id, cap, want, spent, lease ttl ms, counter ttl s.
# Returns {granted, spent by all, held by all gateways after the grant}.
_TAKE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local gw, cap, want, spent_delta = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local fields = redis.call('HGETALL', KEYS[1])
local spent, held, own = 0, 0, 0
local values = {}
for i = 1, #fields, 2 do values[fields[i]] = fields[i + 1] end
spent = tonumber(values['spent'] or '0') + spent_delta
for name, value in pairs(values) do
  if string.sub(name, 1, 5) == 'held:' then
    local id = string.sub(name, 6)
    if id == gw then
      own = tonumber(value)
    elseif tonumber(values['exp:' .. id] or '0') < now_ms then
      redis.call('HDEL', KEYS[1], name, 'exp:' .. id)
    else
      held = held + tonumber(value)
    end
  end
end
own = math.max(own - spent_delta, 0)
local granted = 0
if cap < 0 then
  granted = want
else
  granted = math.max(math.min(want, cap - spent - held - own), 0)
end
own = own + granted
redis.call('HSET', KEYS[1], 'spent', spent, 'held:' .. gw, own,
  'exp:' .. gw, now_ms + tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
return {granted, spent, held + own}
"""


@dataclass(frozen=True)
class Taken:
    """A take's answer: what this gateway got, and the counter's state after it."""

    granted: int
    spent: int  # reported spent by every gateway
    held: int  # allowance out in leases, this gateway's included


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
        cap: int,
        want: int,
        spent: int,
        lease_ttl_ms: int,
        counter_ttl_s: int,
    ) -> Taken:
        args: list[str | int] = [gateway, cap, want, spent, lease_ttl_ms, counter_ttl_s]
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
        """XADD each (stream, fields), in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, fields in entries:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            await self._run(pipe.execute())

    async def usage(self, stream: str, start_ms: int, end_ms: int) -> list[dict[str, str]]:
        """The entries of `stream` from `start_ms` to `end_ms` inclusive, with `ts` (ms)."""
        rows = await self._run(self._redis.xrange(stream, min=str(start_ms), max=f"{end_ms}"))
        return [{**fields, "ts": entry.split("-", 1)[0]} for entry, fields in rows]

    async def ping(self) -> bool:
        try:
            return bool(await self._run(self._redis.ping()))
        except Unavailable:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
