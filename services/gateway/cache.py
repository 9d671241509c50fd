"""The exact-match answer cache: recent answers by tenant, corpus version and request.

An entry answers the same request (same tenant, corpus version, question and parameters)
while it is fresh. A new corpus version changes the key, so an ingest never serves a stale
answer. While retrieval is down, the gateway looks up the tenant's last corpus version it
saw; while that version is fresh, it looks up an exact hit before asking retrieval at all.
Only deterministic answers (temperature 0) are cached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class AnswerCache(Generic[V]):
    def __init__(
        self, entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._versions: dict[str, tuple[str, float]] = {}

    def get(self, key: Hashable) -> V | None:
        """The fresh entry under `key`, if any (least recently used entries go first)."""
        found = self._entries.get(key)
        if found is None:
            return None
        stored_at, value = found
        if self._clock() - stored_at > self._ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        if self._max == 0:
            return
        self._entries[key] = (self._clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def saw_version(self, tenant: str, version: str) -> None:
        """Retrieval answered with, or a write made, the tenant's corpus `version` now. A
        number below the one already seen (a search that read the corpus before a write
        this gateway saw end) says nothing new: it is left out."""
        seen = self._versions.get(tenant)
        if seen is None or not _older(version, seen[0]):
            self._versions[tenant] = (version, self._clock())

    def last_version(self, tenant: str, within_s: float | None = None) -> str | None:
        """The tenant's corpus version at its last successful retrieval or write; None if
        there was none (or, with `within_s`, none that many seconds ago or later)."""
        found = self._versions.get(tenant)
        if found is None or (within_s is not None and self._clock() - found[1] > within_s):
            return None
        return found[0]


def _older(version: str, than: str) -> bool:
    """Whether corpus `version` (retrieval's counter, in decimal) is below `than`."""
    return version.isdigit() and than.isdigit() and int(version) < int(than)
