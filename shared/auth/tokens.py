"""Bearer tokens: only their SHA-256 is stored, next to the principal and role that hold them.

The tokens file has one JSON object a line, ``{"principal": ..., "role": ..., "sha256": ...}``
(blank lines and lines starting with ``#`` are skipped). A lookup hashes the presented token and
compares it with every stored hash in constant time, so neither the match nor its position leaks
through timing; a token is never logged or kept in memory beyond the request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.auth.principals import Principal, Role

TOKEN_PREFIX = "puyu_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    principal: str
    role: Role
    sha256: str

    def to_json(self) -> str:
        return json.dumps({"principal": self.principal, "role": self.role.label, "sha256": self.sha256})


def read_entries(path: Path) -> list[TokenEntry]:
    entries = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            raw = json.loads(line)
            entry = TokenEntry(
                str(raw["principal"]), Role.parse(str(raw["role"])), str(raw["sha256"]).lower()
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: not a token entry ({exc})") from None
        if len(entry.sha256) != 64:
            raise ValueError(f"{path}:{n}: sha256 must be 64 hex digits")
        entries.append(entry)
    return entries


def write_entries(path: Path, entries: Iterable[TokenEntry]) -> None:
    """Write the tokens file (mode 0600; it holds hashes only, but names who may do what)."""
    data = "".join(e.to_json() + "\n" for e in entries).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


class TokenStore:
    def __init__(self, entries: Iterable[TokenEntry] = ()) -> None:
        self._entries: list[TokenEntry] = []
        for entry in entries:
            self.add(entry)

    @classmethod
    def from_file(cls, path: Path | None) -> TokenStore:
        return cls(read_entries(path) if path is not None else ())

    def add(self, entry: TokenEntry) -> None:
        if all(e.sha256 != entry.sha256 for e in self._entries):
            self._entries.append(entry)

    def add_api_keys(self, keys: Iterable[str], role: Role = Role.READER) -> None:
        """Plain API keys (the gateway's) as tokens: each its own principal, named by a hash prefix."""
        for key in keys:
            digest = token_hash(key)
            self.add(TokenEntry(f"api-key:{digest[:8]}", role, digest))

    def __len__(self) -> int:
        return len(self._entries)

    def principal(self, token: str) -> Principal | None:
        digest = token_hash(token).encode()
        found: Principal | None = None
        for entry in self._entries:  # no early exit: the time does not depend on where it matched
            if hmac.compare_digest(digest, entry.sha256.encode()) and found is None:
                found = Principal(entry.principal, entry.role)
        return found
