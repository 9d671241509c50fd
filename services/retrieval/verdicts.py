"""The ingest scan: each chunk's injection verdict, and where a chunk row keeps it.

A chunk is scanned once, by `scan`, when its document is chunked at the governance point
(RetrievalCore.chunk); the corpus log carries the verdicts with the chunks, so replicas and
replays store what the governance point stored, as they do its vectors. A verdict is the
name of the rule services/guardrails/injection.py matched, "" for a clean chunk.

Milvus keeps the verdict in the row's `metadata` JSON under KEY, not in a column of its
own: Milvus Lite cannot add a field to an existing collection (UNIMPLEMENTED), and the
metadata field keeps collections made before the scan working as they are. KEY lies
outside the metadata key grammar (services/common/validation.py), and `check_reserved`
refuses the prefix besides, so no caller's metadata or filter can name it. A row written
before the scan has no KEY: its text is scanned when it is read (once per row when the
hot index loads), so old corpora are screened too, until re-ingest stores a verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from services.common.errors import InvalidArgument
from services.guardrails.injection import detect

RESERVED_PREFIX = "ragmesh."
KEY = f"{RESERVED_PREFIX}injection"


def verdict(text: str) -> str:
    """The rule `text` matches, "" for clean."""
    finding = detect(text)
    return finding.rule if finding is not None else ""


def scan(chunks: Iterable[str]) -> list[str]:
    """Each chunk's verdict, in order."""
    return [verdict(chunk) for chunk in chunks]


def check_reserved(values: Mapping[str, str], field: str) -> None:
    """InvalidArgument naming `field.<key>` for a key the store keeps for itself."""
    for key in values:
        if key.startswith(RESERVED_PREFIX):
            name = f"{field}.{key[:64]}"
            raise InvalidArgument(
                f"{name}: keys starting with {RESERVED_PREFIX!r} are reserved", field=name
            )


def stored(metadata: Mapping[str, str], injection: str) -> dict[str, str]:
    """A row's metadata JSON: the document's metadata and the chunk's verdict."""
    return {**metadata, KEY: injection}


def split(value: Any, text: str) -> tuple[dict[str, str], str]:
    """A row's metadata JSON read back: the document's metadata, and the verdict (that of
    `text` scanned now, for a row written before the scan)."""
    metadata = {str(k): str(v) for k, v in (value or {}).items()}
    injection = metadata.pop(KEY, None)
    return metadata, verdict(text) if injection is None else injection
