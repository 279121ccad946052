"""Who a caller is (a principal) and what it may do (its role).

Roles are ordered: each may do what the ones below it may.

- ``reader``: list and get (models, versions, audit, jobs, agents, tools, sessions it owns) and
  inference (generation changes no state);
- ``operator``: also submit jobs, register versions, promote, set aliases and tags, roll back, run
  agents and tools;
- ``admin``: everything, including what is reserved to administrators.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Role(IntEnum):
    READER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: one of {', '.join(r.label for r in cls)}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    def may(self, role: Role) -> bool:
        return self.role >= role


# Who calls a service whose authentication is off (auth_required false, no token configured).
ANONYMOUS = Principal("anonymous", Role.ADMIN)


class AuthError(Exception):
    """A call refused by authentication or authorisation; the message never holds the token."""


class Unauthenticated(AuthError):
    """No token, or one that no principal holds (HTTP 401, gRPC UNAUTHENTICATED)."""


class PermissionDenied(AuthError):
    """A known principal whose role is below the one required (HTTP 403, gRPC PERMISSION_DENIED)."""
