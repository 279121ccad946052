"""Callers of every service's HTTP and gRPC APIs: bearer tokens with roles, checked the same way on
both (``http.requires`` / ``grpc.rpc_role`` declare, ``Authenticator`` decides), TLS from files."""

from shared.auth.authenticator import Authenticator
from shared.auth.client import ClientAuth
from shared.auth.principals import (
    ANONYMOUS,
    AuthError,
    PermissionDenied,
    Principal,
    Role,
    Unauthenticated,
)

__all__ = [
    "ANONYMOUS",
    "AuthError",
    "Authenticator",
    "ClientAuth",
    "PermissionDenied",
    "Principal",
    "Role",
    "Unauthenticated",
]
