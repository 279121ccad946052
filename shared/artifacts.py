"""The artifact store: large files (shards, checkpoints, eval details) addressed by URI.

A local folder by default (``file://``), any fsspec filesystem otherwise (``s3://`` through s3fs).
Events carry the URI and checksum returned here, never the bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import fsspec

from contracts.events import ArtifactRef
from shared.errors import Refusal

_CHUNK = 1 << 20


class OutsideArtifactStore(Refusal):
    """An artifact URI that does not lie in the configured artifact store."""


class DigestMismatch(Refusal):
    """An artifact whose contents are not the ones its sha256 names (swapped or altered)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_dir(path: Path) -> tuple[str, int]:
    """Checksum of a folder: its sorted relative paths and their contents. Returns (hex, total bytes)."""
    h = hashlib.sha256()
    total = 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0" + sha256_file(file).encode() + b"\n")
        total += file.stat().st_size
    return h.hexdigest(), total


def local_path(uri: str) -> Path | None:
    """The local path of a file:// URI or a plain path, else None."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri)
    return None


def uri_within(uri: str, root_uri: str) -> bool:
    """Whether ``uri`` names ``root_uri`` or something below it. Local paths are resolved first
    (symlinks and ``..``), so a link inside the root that points out of it is outside; remote URIs
    must share the root's scheme and bucket, and their normalised path lie under the root's."""
    path, root = local_path(uri), local_path(root_uri)
    if root is not None:
        return path is not None and path.resolve().is_relative_to(root.resolve())
    if path is not None:
        return False
    u, r = urlparse(uri), urlparse(root_uri)
    if (u.scheme, u.netloc) != (r.scheme, r.netloc) or "\x00" in u.path:
        return False
    u_path = posixpath.normpath("/" + u.path.lstrip("/"))
    r_path = posixpath.normpath("/" + r.path.lstrip("/"))
    return u_path == r_path or u_path.startswith(r_path.rstrip("/") + "/")


def digest_of(path: Path) -> str:
    """The sha256 an ArtifactRef carries for this file or folder (as put_file / put_dir compute it)."""
    return sha256_dir(path)[0] if path.is_dir() else sha256_file(path)


class ArtifactStore:
    def __init__(self, root_uri: str, cache_dir: Path | None = None, **storage_options: Any) -> None:
        self.root_uri = root_uri.rstrip("/")
        self.fs, self._root = fsspec.core.url_to_fs(self.root_uri, **storage_options)
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "puyu-artifact-cache"
        if self.is_local:
            Path(self._root).mkdir(parents=True, exist_ok=True)

    @property
    def is_local(self) -> bool:
        return local_path(self.root_uri) is not None

    def uri(self, key: str) -> str:
        return f"{self.root_uri}/{key.strip('/')}"

    def local_staging(self, key: str) -> Path:
        """A local folder to write an artifact into before put_dir (the final place itself when local)."""
        if self.is_local:
            path = Path(self._root) / key
        else:
            path = self.cache_dir / "staging" / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put_file(self, src: Path, key: str) -> ArtifactRef:
        dest = self.uri(key)
        lp = local_path(dest)
        if lp is not None:
            if lp.resolve() != src.resolve():
                lp.parent.mkdir(parents=True, exist_ok=True)
                tmp = lp.with_name(lp.name + ".tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, lp)
        else:
            self.fs.put_file(str(src), self._path(key))
        return ArtifactRef(uri=dest, sha256=sha256_file(src), size_bytes=src.stat().st_size)

    def put_dir(self, src: Path, key: str) -> ArtifactRef:
        dest = self.uri(key)
        lp = local_path(dest)
        if lp is not None:
            if lp.resolve() != src.resolve():
                if lp.exists():
                    shutil.rmtree(lp)
                shutil.copytree(src, lp)
        else:
            self.fs.put(str(src).rstrip("/") + "/", self._path(key), recursive=True)
        digest, size = sha256_dir(src)
        return ArtifactRef(uri=dest, sha256=digest, size_bytes=size)

    def ref_for(self, uri: str) -> ArtifactRef:
        """Checksum an artifact already in the store (local only; remote stores use put_* refs)."""
        lp = local_path(uri)
        if lp is None:
            raise ValueError(f"cannot checksum remote artifact {uri} in place")
        if lp.is_dir():
            digest, size = sha256_dir(lp)
            return ArtifactRef(uri=uri, sha256=digest, size_bytes=size)
        return ArtifactRef(uri=uri, sha256=sha256_file(lp), size_bytes=lp.stat().st_size)

    def contains(self, uri: str) -> bool:
        return uri_within(uri, self.root_uri)

    def require_inside(self, uri: str) -> None:
        """Refuse an artifact outside this store: an event or a request naming any folder of the host
        (or another bucket) must not get it registered, evaluated or served."""
        if not self.contains(uri):
            raise OutsideArtifactStore(f"artifact {uri} is outside the artifact store {self.root_uri}")

    def fetch_verified(self, ref: ArtifactRef) -> Path:
        """``fetch`` an artifact of this store and check its contents against ``ref.sha256``: a folder
        swapped or altered after it was checksummed is refused, not loaded."""
        self.require_inside(ref.uri)
        path = self.fetch(ref.uri)
        actual = digest_of(path)
        if actual != ref.sha256:
            raise DigestMismatch(
                f"artifact {ref.uri} has sha256 {actual}, not the {ref.sha256 or '(none)'} it was registered with"
            )
        return path

    def fetch(self, uri: str) -> Path:
        """A local path holding the artifact (file or folder): in place for file://, else downloaded once."""
        lp = local_path(uri)
        if lp is not None:
            if not lp.exists():
                raise FileNotFoundError(f"artifact not found: {uri}")
            return lp
        fs, path = fsspec.core.url_to_fs(uri)
        dest = self.cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:24] / Path(path).name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            if fs.isdir(path):
                fs.get(path.rstrip("/") + "/", str(dest), recursive=True)
            else:
                fs.get(path, str(dest))
        return dest

    def exists(self, uri: str) -> bool:
        fs, path = fsspec.core.url_to_fs(uri)
        return bool(fs.exists(path))

    def open(self, uri: str, mode: str = "rb") -> IO[Any]:
        return fsspec.open(uri, mode).open()  # type: ignore[no-any-return]

    def write_json(self, key: str, obj: Any) -> ArtifactRef:
        data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        dest = self.uri(key)
        lp = local_path(dest)
        if lp is not None:
            lp.parent.mkdir(parents=True, exist_ok=True)
            tmp = lp.with_name(lp.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, lp)
        else:
            with self.fs.open(self._path(key), "wb") as f:
                f.write(data)
        return ArtifactRef(uri=dest, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))

    def read_json(self, uri: str) -> Any:
        with self.open(uri, "rb") as f:
            return json.loads(f.read())

    def _path(self, key: str) -> str:
        return f"{self._root.rstrip('/')}/{key.strip('/')}"
