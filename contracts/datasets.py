"""The dataset manifest: how a corpus dataset (ingest or dedup output) is laid out in the artifact store.

Every service that reads a dataset goes through this module; ``DatasetRef.manifest_uri`` points at
a ``manifest.json`` whose shards are JSON-lines files (gzip or zstd by extension) with a ``text``
field per line, their paths relative to the manifest's folder (absolute URIs are accepted too).
"""

from __future__ import annotations

import json
from typing import Any

import fsspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class DatasetError(ValueError):
    """A dataset that cannot be read as given (missing, malformed manifest): never succeeds on retry."""


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    path: str = Field(description="Relative to the manifest's folder, or an absolute URI.")
    sha256: str | None = None
    documents: int | None = None
    bytes: int | None = None


class DatasetManifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    dataset_id: str
    documents: int = Field(ge=0)
    shards: list[ShardEntry]


def read_manifest(manifest_uri: str) -> DatasetManifest:
    try:
        with fsspec.open(manifest_uri, "rt", encoding="utf-8") as f:
            raw: Any = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"dataset manifest not found: {manifest_uri}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read dataset manifest {manifest_uri}: {exc}") from None
    try:
        return DatasetManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DatasetError(f"invalid dataset manifest {manifest_uri}: {problems}") from None


def shard_uri(manifest_uri: str, shard: ShardEntry) -> str:
    if "://" in shard.path or shard.path.startswith("/"):
        return shard.path
    return f"{manifest_uri.rsplit('/', 1)[0]}/{shard.path}"


def shard_uris(manifest_uri: str, manifest: DatasetManifest | None = None) -> list[str]:
    manifest = manifest or read_manifest(manifest_uri)
    return [shard_uri(manifest_uri, s) for s in manifest.shards]
