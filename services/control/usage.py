"""Usage records: one per request, written to the shared store in batches, off the hot path;
read back per tenant over a time range, grouped by day, tier or key.

Each flush appends one entry per tenant to its stream `ragmesh:{t:<tenant>}:usage` (Redis
XADD): one field `r`, its records as a JSON array of arrays in UsageRecord's field order,
and the schema's numbers (services/common/schemas.py USAGE_RECORDS): `v`, the version that
wrote it, and `rb`, the oldest that reads it (absent: 0). A later version may append fields
to a record, which this one reads past. A range read is XRANGE over the entries' ids (their
write times), then each record's own time.
Durable as the store is configured: the local mesh's redis-server appends every write to its
AOF and fsyncs each second.
Records wait in this gateway's buffer while the store is unreachable (at most
MAX_BUFFERED; the newest are dropped past that, and counted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

from services.common.errors import InvalidArgument, Unavailable
from services.common.schemas import USAGE_RECORDS
from services.control import metrics
from services.control.store import Store

LOGGER = logging.getLogger(__name__)
MAX_BUFFERED = 100_000
GROUPS = ("day", "tier", "key", "model")
MAX_RANGE_MS = 366 * 86_400_000
# Records wait in a gateway's buffer while the store is away: an entry may be written this
# long after its records (an outage longer than that shows them outside the range read).
FLUSH_MARGIN_MS = 3_600_000


def stream(tenant: str) -> str:
    return f"ragmesh:{{t:{tenant}}}:usage"


class UsageRecord(NamedTuple):
    """One request's usage. Tokens are the model's counts; cost in US dollars; `ts_ms` the
    time it was recorded (epoch ms)."""

    tenant: str
    key_id: str
    tier: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cache_status: str
    region: str
    trace_id: str
    routing_reason: str
    outcome: str  # ok, cancelled, failed
    ts_ms: int


@dataclass(frozen=True)
class UsageRow:
    """A group's totals: `group` is a UTC date (YYYY-MM-DD), a tier, a key id or a model."""

    group: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


def check_query(start_ms: int, end_ms: int, group_by: str) -> None:
    """Raises InvalidArgument for a range or a grouping that query() does not take."""
    if group_by not in GROUPS:
        raise InvalidArgument(f"group_by: must be one of {', '.join(GROUPS)}", field="group_by")
    if not 0 <= start_ms <= end_ms or end_ms - start_ms > MAX_RANGE_MS:
        raise InvalidArgument(
            "start, end: need start <= end, at most 366 days apart", field="start"
        )


class UsageLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._buffer: dict[str, list[UsageRecord]] = defaultdict(list)
        self._buffered = 0
        self.dropped = 0

    def record(self, record: UsageRecord) -> None:
        """Queues one record (no I/O); past MAX_BUFFERED, drops it and counts it."""
        if self._buffered >= MAX_BUFFERED:
            self.dropped += 1
            metrics.USAGE_DROPPED.inc()
            return
        self._buffer[record.tenant].append(record)
        self._buffered += 1

    async def flush(self) -> int:
        """Writes what is queued, one stream entry per tenant (its records as one JSON array);
        returns how many records. Raises Unavailable (then they stay queued)."""
        batch, self._buffer = self._buffer, defaultdict(list)
        if not batch:
            return 0
        version = {"v": str(USAGE_RECORDS.version), "rb": str(USAGE_RECORDS.readable_by)}
        entries = [
            (stream(tenant), {"r": json.dumps(records), **version})
            for tenant, records in batch.items()
        ]
        try:
            await self.store.append_usage(entries)
        except Unavailable:
            for tenant, records in batch.items():  # back in front, still counted
                self._buffer[tenant][:0] = records
            raise
        count = sum(len(records) for records in batch.values())
        self._buffered -= count  # counted until written: the bound holds during a flush
        return count

    async def run(self, every_s: float) -> None:
        failing = False
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.flush()
                failing = False
            except Unavailable as exc:
                if not failing:  # once per outage
                    LOGGER.warning("usage records kept for later: %s", exc.message)
                failing = True

    async def query(self, tenant: str, start_ms: int, end_ms: int, group_by: str) -> list[UsageRow]:
        """`tenant`'s usage from `start_ms` to `end_ms` (epoch ms, inclusive), grouped by
        `group_by` (day, tier, key, model), sorted by group. Raises InvalidArgument for a bad
        range or grouping, Unavailable when the store is unreachable, FailedPrecondition for
        records of a schema version this release may not read."""
        check_query(start_ms, end_ms, group_by)
        totals: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
        # An entry holds the records of one flush: written at most FLUSH_MARGIN_MS after them.
        entries = await self.store.usage(stream(tenant), start_ms, end_ms + FLUSH_MARGIN_MS)
        for entry in entries:
            USAGE_RECORDS.check(int(entry.get("v", 0)), int(entry.get("rb", 0)))
            for fields in json.loads(entry["r"]):
                record = UsageRecord(*fields[: len(UsageRecord._fields)])
                if record.tenant != tenant or not start_ms <= record.ts_ms <= end_ms:
                    continue
                if group_by == "day":
                    group = time.strftime("%Y-%m-%d", time.gmtime(record.ts_ms / 1000))
                else:
                    group = getattr(record, "key_id" if group_by == "key" else group_by)
                row = totals[group]
                row[0] += 1
                row[1] += record.input_tokens
                row[2] += record.output_tokens
                row[3] += record.cost_usd
        return [
            UsageRow(group, int(r[0]), int(r[1]), int(r[2]), round(r[3], 9))
            for group, r in sorted(totals.items())
        ]
