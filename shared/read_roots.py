"""Where jobs may read their inputs: the artifact store and the configured data roots.

A job names its inputs by path or URI, and the service reads them with its own rights: on a shared
host a caller must not get it to read whatever it names (``/etc/passwd``, another tenant's folders).
Paths are resolved (symlinks, ``..``) before they are compared, so a link inside a root that points
out of it is outside.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from pathlib import Path

from shared.artifacts import local_path, uri_within
from shared.errors import Refusal
from shared.settings import CommonSettings


class OutsideReadRoots(Refusal, ValueError):
    """An input outside every root this service may read from."""


class ReadRoots:
    def __init__(self, roots: Sequence[str | Path]) -> None:
        self.roots = tuple(str(r) for r in roots)

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> ReadRoots:
        return cls(settings.read_roots)

    def allows(self, source: str | Path) -> bool:
        return any(uri_within(str(source), root) for root in self.roots)

    def require(self, source: str | Path, what: str = "source") -> None:
        """Refuse ``source`` (a path, a glob or a URI) unless it lies under a root."""
        if not self.allows(_without_magic(str(source))):
            raise OutsideReadRoots(
                f"{what} {source} is outside the folders this service may read "
                f"({', '.join(self.roots)}; PUYU_DATA_ROOTS adds folders)"
            )

    def require_all(self, sources: Iterable[str | Path], what: str = "source") -> None:
        for source in sources:
            self.require(source, what)


def _without_magic(source: str) -> str:
    """A glob's fixed leading part (``/data/**/*.txt`` → ``/data``): what it can match lies below it;
    the files it matches are checked one by one where they are read."""
    path = local_path(source)
    if path is None or not glob.has_magic(str(path)):
        return source
    fixed = []
    for part in path.parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."
