"""The references every area's events share: artifacts, datasets and model versions, by URI and digest.

Events carry URIs and checksums of artifacts, never blobs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Contracts refuse fields they do not know: a typo is an error, not a silently ignored value."""

    model_config = ConfigDict(extra="forbid")


class ArtifactRef(StrictModel):
    uri: str = Field(description="Artifact store URI (file://..., s3://...) of a file or folder.")
    sha256: str = Field(
        description="Checksum: of the file, or of the folder's sorted file list and contents."
    )
    size_bytes: int = Field(ge=0)


class DatasetRef(StrictModel):
    dataset_id: str
    manifest_uri: str
    digest: str = Field(description="sha256 of the manifest.")


class ModelRef(StrictModel):
    model_name: str
    version: int = Field(ge=1)


__all__ = ["StrictModel", "ArtifactRef", "DatasetRef", "ModelRef"]
