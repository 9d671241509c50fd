"""A wheel of the project runs: built from a copy of the sources, installed into a fresh
venv, `ragmesh --help` works and every module it carries imports, away from the checkout.

The fresh venv gets the dependencies from the project's venv (a .pth line naming its
site-packages: no network, and none of its own .pth files, so not the editable install)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's python, with the wheel installed."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT / "services", source / "services")
    shutil.copytree(ROOT / "build" / "gen" / "ragmesh", source / "build" / "gen" / "ragmesh")
    shutil.copy(ROOT / "pyproject.toml", source)
    dist = work / "dist"
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source, cwd=work)
    (wheel,) = dist.glob("ragmesh-*.whl")
    venv.create(work / "venv", with_pip=False)
    python = work / "venv" / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=work)
    Path(site.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, cwd=work)
    return python


def test_the_command_runs(installed: Path) -> None:
    out = _run(installed.parent / "ragmesh", "--help", cwd=installed.parents[2])
    assert "usage: ragmesh" in out


# Imported only inside Triton's python-backend stub, which provides its module.
IN_TRITON_ONLY = {"services.contract.backend"}


def test_every_module_imports_from_the_wheel(installed: Path) -> None:
    script = f"""
import importlib, pkgutil, services, ragmesh
for package in (services, ragmesh):
    assert "site-packages" in package.__path__[0], package.__path__  # the wheel's, not ours
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if module.name not in {IN_TRITON_ONLY!r}:
            importlib.import_module(module.name)
        print(module.name)
"""
    carried = set(_run(installed, "-c", script, cwd=installed.parents[2]).split())
    ours = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "services").rglob("*.py")
    } - {"services"}
    assert ours <= carried, sorted(ours - carried)
