"""Regenerate the committed gRPC stubs from contracts/proto (``make proto``; a test checks for drift).

Protos live under ``contracts/proto/puyu/...`` and are compiled with the repository root as the
include path, so the generated imports (``from contracts.proto.puyu...``) resolve from the import root.
Run it as a process of its own (``python -m contracts.codegen``): protoc's C++ protobuf, once loaded, corrupts
the heap of a process that also loads sentencepiece's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "contracts" / "proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path = ROOT) -> None:
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    for proto in proto_files():
        rel = proto.relative_to(ROOT).as_posix()
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT}",
                f"-I{well_known}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                rel,
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed on {rel}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
