"""Committed generated files (gRPC stubs, event schemas) match what the generators produce now."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path

from contracts import export_schemas

ROOT = Path(__file__).resolve().parents[2]
STUB_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")


# Lines that name the generator's version, not the contract: grpcio-tools' patch releases change them.
GENERATOR_VERSIONS = (
    (re.compile(r"GRPC_GENERATED_VERSION = '[^']*'"), "GRPC_GENERATED_VERSION = ..."),
    (re.compile(r"# Protobuf Python Version: .*"), "# Protobuf Python Version: ..."),
    (re.compile(r"ValidateProtobufRuntimeVersion\([^)]*\)"), "ValidateProtobufRuntimeVersion(...)"),
)


def _without_versions(text: str) -> str:
    for pattern, replacement in GENERATOR_VERSIONS:
        text = pattern.sub(replacement, text)
    return text


def _generated(base: Path, sub: str) -> dict[str, str]:
    files: dict[str, str] = {}
    for pattern in STUB_PATTERNS:
        for path in (base / sub).rglob(pattern):
            files[path.relative_to(base).as_posix()] = _without_versions(path.read_text())
    return files


def _diff(rel: str, committed: str, fresh: str) -> str:
    lines = difflib.unified_diff(
        committed.splitlines(keepends=True),
        fresh.splitlines(keepends=True),
        f"committed/{rel}",
        f"fresh/{rel}",
    )
    return "".join(list(lines)[:40])


def test_grpc_stubs_match_protos(tmp_path: Path) -> None:
    # In a child process: grpcio-tools' protoc links a full C++ protobuf that corrupts the heap of a process
    # which also loads sentencepiece's (a later test then aborted in SentencePiece's model loader).
    # grpcio-tools is a dev dependency: missing is a failure, not a skip.
    subprocess.run(
        [sys.executable, "-m", "contracts.codegen", str(tmp_path)], cwd=ROOT, check=True, timeout=120
    )
    fresh = _generated(tmp_path, "contracts/proto")
    committed = _generated(ROOT, "contracts/proto")
    assert fresh, "protoc generated nothing"
    assert sorted(fresh) == sorted(committed), "stubs missing or stale: run `make proto`"
    stale = [_diff(rel, committed[rel], fresh[rel]) for rel in sorted(fresh) if fresh[rel] != committed[rel]]
    assert not stale, "gRPC stubs differ from contracts/proto: run `make proto`\n" + "\n".join(stale)


def test_event_schemas_match_models(tmp_path: Path) -> None:
    export_schemas.export(tmp_path)
    committed_dir = ROOT / "contracts" / "schemas"
    fresh = {p.relative_to(tmp_path).as_posix(): p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(committed_dir).as_posix(): p.read_text()
        for p in committed_dir.rglob("*")
        if p.is_file()
    }
    assert sorted(fresh) == sorted(committed), "schema files missing or stale: run `make schemas`"
    stale = [_diff(rel, committed[rel], fresh[rel]) for rel in sorted(fresh) if fresh[rel] != committed[rel]]
    assert not stale, "event schemas differ from contracts/events: run `make schemas`\n" + "\n".join(stale)


def test_export_is_deterministic() -> None:
    assert export_schemas.render() == export_schemas.render()
