"""The sample corpus: Python standard library documentation, harvested from docstrings.

Real text nobody on this team wrote, available offline wherever Python is. One Markdown
document per module: its docstring, then each public class and function.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

MODULES = (
    "argparse", "asyncio", "base64", "bisect", "collections", "contextlib", "csv",
    "dataclasses", "datetime", "functools", "hashlib", "heapq", "itertools", "json",
    "logging", "pathlib", "random", "re", "shutil", "sqlite3", "statistics", "string",
    "subprocess", "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.parse",
    "uuid", "zipfile",
)  # fmt: skip
MAX_CHARS = 12_000  # bounds the first ingest's embedding time on a 2-core machine
# Questions the sample corpus answers, for the load tools and benchmarks.
QUESTIONS = (
    "How do I parse a JSON string into a Python object?",
    "What does functools.lru_cache do?",
    "How do I create a temporary directory that is removed afterwards?",
    "How can I run a command in a subprocess and capture its output?",
    "What is a named tuple and how do I make one?",
    "How do I read rows from a CSV file?",
    "How do I match a regular expression at the start of a string?",
    "What is the difference between a deque and a list?",
    "How do I copy a directory tree?",
    "How do I format a datetime as an ISO 8601 string?",
)


def _members(module: object) -> list[tuple[str, str]]:
    found = []
    for name, member in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(member) or inspect.isfunction(member)):
            continue
        if getattr(member, "__module__", None) != getattr(module, "__name__", None):
            continue
        doc = inspect.getdoc(member)
        if doc:
            found.append((name, doc))
    return found


def module_markdown(name: str) -> str:
    module = importlib.import_module(name)
    doc = inspect.getdoc(module) or ""
    parts = [f"# {name} (Python standard library)\n\n{doc}\n"]
    parts += [f"## {name}.{member}\n\n{text}\n" for member, text in _members(module)]
    text = "\n".join(parts)
    return text[:MAX_CHARS].rsplit("\n", 1)[0] if len(text) > MAX_CHARS else text


def harvest(out_dir: Path) -> list[Path]:
    """Writes one Markdown file per module into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in MODULES:
        path = out_dir / f"python-{name.replace('.', '-')}.md"
        path.write_text(module_markdown(name), encoding="utf-8")
        paths.append(path)
    return paths
