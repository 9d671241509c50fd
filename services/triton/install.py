"""Lays out Triton from the `nvidia-pytriton` wheel: its server binary and python backend.

The wheel is installed with --no-deps; only `tritonserver` and the python backend are used.
The backend stub for Python 3.11 goes beside `libtriton_python.so`, where Triton looks for it.

    python -m services.triton.install build/triton
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path


def wheel_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def server_binary() -> Path:
    return wheel_root() / "bin" / "tritonserver"


def library_dir() -> Path:
    """The wheel's bundled shared libraries; the copied stub finds them on LD_LIBRARY_PATH."""
    return wheel_root().parents[1] / "nvidia_pytriton.libs"


def _copy(source: Path, folder: Path) -> None:
    """Copies unless an identical-size copy is there (a running stub can't be overwritten)."""
    target = folder / source.name
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        shutil.copy2(source, target)


def install(target: Path) -> Path:
    """Copies the python backend and its 3.11 stub into `target`/backends/python."""
    root = wheel_root()
    backend = target / "backends" / "python"
    backend.mkdir(parents=True, exist_ok=True)
    for item in (root / "backends" / "python").glob("*.*"):
        _copy(item, backend)
    _copy(root / "python_backend_stubs" / "3.11" / "triton_python_backend_stub", backend)
    return target / "backends"


if __name__ == "__main__":
    print(install(Path(sys.argv[1] if len(sys.argv) > 1 else "build/triton")))
