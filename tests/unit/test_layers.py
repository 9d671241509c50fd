"""The rooms of services/ and their floors: a module imports from its own room or from a room
on a lower floor, never from one beside or above it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Ground floor first. Rooms on one floor know nothing of each other.
FLOORS = {
    "config": 0,  # the mesh's schema, parsed once
    "contract": 0,  # the tier contract: the prompt's format, the tensors, the models' helpers
    "common": 1,  # errors, gRPC plumbing, telemetry, metrics, validation, tokens
    "triton": 2,  # the Triton client: generation, embeddings, model control
    "client": 2,  # the gateway's client library, documents, the sample corpus
    "gateway": 3,  # the planes
    "retrieval": 3,
    "console": 3,
    "edge": 3,
    "supervisor": 4,  # starts and stops the planes
    "cli": 5,
}


def _rooms_imported(path: Path) -> set[str]:
    """The rooms of services/ that a module imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "services" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_room_has_a_floor() -> None:
    rooms = {p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").is_file()}
    assert rooms == set(FLOORS)


def test_imports_only_go_down() -> None:
    upward = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        room = path.relative_to(ROOT / "services").parts[0]
        if room not in FLOORS:
            continue  # services/__init__.py
        for other in _rooms_imported(path) - {room}:
            if FLOORS[other] >= FLOORS[room]:
                upward.append(f"{path.relative_to(ROOT)} imports services.{other}")
    assert not upward, "\n".join(upward)
