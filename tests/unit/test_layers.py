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
    "control": 2,  # tenants, keys, leases, usage, the routing policy
    "guardrails": 2,  # prompt injection, groundedness: checks the planes share
    "gateway": 3,  # the planes
    "retrieval": 3,
    "console": 3,
    "edge": 3,
    "supervisor": 4,  # starts and stops the planes
    "cli": 5,
}


def _modules_imported(path: Path) -> set[str]:
    """Every module name a file imports, at any depth of its code: `import a.b`, `from a
    import b` (a.b, for `from services import cli`), relative imports resolved from the
    file's package, and `importlib.import_module("a.b")` or `__import__("a.b")` with a
    literal name."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Call) and node.args and _is_import_call(node.func):
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
    return found


def _is_import_call(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__")


def _rooms_imported(path: Path) -> set[str]:
    """The rooms of services/ that a module imports."""
    parts = (name.split(".") for name in _modules_imported(path))
    return {p[1] for p in parts if p[0] == "services" and len(p) > 1}


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


def test_the_models_import_only_the_contract() -> None:
    """The models' venv holds the project without its dependencies: only services.contract
    (the standard library and Triton's own module besides) is theirs to import."""
    rooms = {
        room for path in (ROOT / "triton_models").rglob("*.py") for room in _rooms_imported(path)
    }
    assert rooms <= {"contract"}


def test_dodged_imports_are_seen() -> None:
    probe = ROOT / "services" / "config" / "probe_for_test_layers.py"
    probe.write_text(
        "import importlib\n"
        "from services import cli\n"
        "from ..supervisor import up\n"
        "importlib.import_module('services.gateway')\n",
        encoding="utf-8",
    )
    try:
        assert _rooms_imported(probe) == {"cli", "supervisor", "gateway"}
    finally:
        probe.unlink()


def test_tests_never_run_their_own_event_loop() -> None:
    """asyncio.run() in a test closes the loop pytest-asyncio runs the other tests on, so a
    later test in the same run fails with "no current event loop" (a test of the reference
    stacks did): an async test awaits instead."""
    calls = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute)
        and node.attr == "run"
        and isinstance(node.value, ast.Name)
        and node.value.id == "asyncio"
    ]
    assert not calls, calls
