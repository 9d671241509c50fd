"""The schema versions of the data a release writes, so that rings N and N-1 read each
other's data (docs/deploy.md, "Data across releases").

Each kind of durable data carries two numbers beside it: the schema version that wrote it,
and the oldest schema version that can read it (`readable_by`), as SQLite's file header
keeps a write and a read version. A change a previous release can still read (a field
added, which it ignores) keeps `readable_by`; a change it cannot raises `readable_by` to
the new version, and that previous release then refuses the data with a message naming
both versions instead of misreading it. Data from before versions were kept is version 0.

A release reads data whose `readable_by` is at most its own version and whose version is
at least its `oldest`, the oldest version it still knows how to read; it refuses the rest
with FailedPrecondition (a deployment's state, not the request's fault).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import FailedPrecondition


@dataclass(frozen=True)
class Schema:
    """One kind of data: `name` for messages, `version` what this release writes, `oldest`
    the oldest version it reads, `readable_by` the oldest version that reads what it writes."""

    name: str
    version: int
    oldest: int
    readable_by: int

    def check(self, written: int, readable_by: int) -> None:
        """Raises FailedPrecondition when data written by schema `written`, readable by
        `readable_by` and later, is not data this release may read."""
        if readable_by > self.version:
            raise FailedPrecondition(
                f"{self.name}: written by schema version {written}, which versions before "
                f"{readable_by} cannot read; this release reads {self.oldest} to {self.version}"
                ": roll forward, or restore the data from before the upgrade"
            )
        if written < self.oldest:
            raise FailedPrecondition(
                f"{self.name}: written by schema version {written}, older than this release "
                f"reads ({self.oldest} to {self.version}): upgrade through an earlier release"
            )


# Version 1 adds only the versions themselves, which version 0 ignores.
CORPUS_LOG = Schema("corpus log", version=1, oldest=0, readable_by=0)
USAGE_RECORDS = Schema("usage records", version=1, oldest=0, readable_by=0)
MILVUS_COLLECTION = Schema("Milvus collections", version=1, oldest=0, readable_by=0)
