"""Generates Python code, .pyi stubs and Envoy's descriptor set from protos/.

    python -m services.common.protogen protos build/gen

protoc writes absolute imports (`from ragmesh.v1 import ...`), so the output folder joins
the venv's sys.path through a .pth file. Generated code is never edited or committed.
"""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
from pathlib import Path

from grpc_tools import protoc

DESCRIPTOR_SET = "ragmesh.pb"


def _googleapis_dir() -> str:
    """The site-packages folder holding google/api/*.proto (googleapis-common-protos)."""
    spec = importlib.util.find_spec("google.api.annotations_pb2")
    if spec is None or spec.origin is None:
        raise RuntimeError("googleapis-common-protos is not installed")
    return str(Path(spec.origin).parents[2])


def _protoc(source: Path, *args: str) -> None:
    includes = [source, Path(protoc.__file__).parent / "_proto", _googleapis_dir()]
    argv = ["grpc_tools.protoc", *(f"-I{i}" for i in includes), *args]
    if protoc.main(argv) != 0:
        raise RuntimeError("protoc failed: " + " ".join(argv))


def generate(source: Path, out: Path) -> list[str]:
    protos = [str(p.relative_to(source)) for p in sorted(source.rglob("*.proto"))]
    out.mkdir(parents=True, exist_ok=True)
    _protoc(source, f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *protos)
    # Envoy's descriptor set also holds google.rpc's error details, so the transcoder can
    # print the BadRequest details of an error as JSON.
    _protoc(
        source,
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={out / DESCRIPTOR_SET}",
        *protos,
        "google/rpc/error_details.proto",
    )
    for folder in {p.parent for p in out.rglob("*_pb2.py")}:
        for parent in [folder, *folder.parents]:
            if parent == out:
                break
            (parent / "__init__.py").touch()
    return protos


def install(out: Path) -> None:
    """Puts `out` on the running venv's sys.path (a .pth file): `make gen` does, once."""
    pth = Path(sysconfig.get_paths()["purelib"]) / "ragmesh_generated.pth"
    pth.write_text(f"{out.resolve()}\n", encoding="utf-8")


if __name__ == "__main__":
    src, dst = (Path(a) for a in sys.argv[1:3])
    print(f"generated {len(generate(src, dst))} protos into {dst}")
    install(dst)
