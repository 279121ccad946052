"""The one check every HTTP route and gRPC method goes through: who is calling, and may it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from shared.auth.principals import ANONYMOUS, PermissionDenied, Principal, Role, Unauthenticated
from shared.auth.tokens import TokenStore, read_entries
from shared.settings import CommonSettings

log = logging.getLogger(__name__)
RELOAD_CHECK_S = 1.0  # how often the tokens file's modification time is looked at


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (a bare token is taken as is)."""
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if not rest:
        return scheme or None
    return rest.strip() if scheme.lower() == "bearer" else None


class Authenticator:
    """Tokens from a file (re-read when it changes, so a rotation needs no restart) and plain API
    keys added by the service (the gateway's); ``required`` False lets callers in as an anonymous
    admin while no token at all is configured (development only)."""

    def __init__(
        self, tokens_file: Path | None = None, *, required: bool = True, api_keys: Iterable[str] = ()
    ) -> None:
        self.tokens_file = tokens_file
        self.required = required
        self._api_keys: list[tuple[tuple[str, ...], Role]] = []
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._checked = 0.0
        self._checked_once = False
        self._store = TokenStore()
        self._load()
        if api_keys:
            self.add_api_keys(api_keys)

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> Authenticator:
        return cls(settings.auth_tokens_file, required=settings.auth_required)

    def add_api_keys(self, keys: Iterable[str], role: Role = Role.READER) -> None:
        keys = tuple(keys)
        with self._lock:
            self._api_keys.append((keys, role))
            self._store.add_api_keys(keys, role)

    @property
    def open(self) -> bool:
        """Nobody is checked: authentication is off and no token is configured."""
        self._maybe_reload()
        return not self.required and len(self._store) == 0

    def authenticate(self, authorization: str | None) -> Principal:
        if self.open:
            return ANONYMOUS
        token = bearer_token(authorization)
        principal = self._store.principal(token) if token else None
        if principal is None:
            raise Unauthenticated("missing or invalid token" if token else "a bearer token is required")
        return principal

    def authorize(self, authorization: str | None, role: Role) -> Principal:
        principal = self.authenticate(authorization)
        if not principal.may(role):
            raise PermissionDenied(
                f"{principal.name} ({principal.role.label}) may not do this: {role.label} required"
            )
        return principal

    # ------------------------------------------------------------------------------ the tokens file
    def _maybe_reload(self) -> None:
        if self.tokens_file is None or time.monotonic() - self._checked < RELOAD_CHECK_S:
            return
        self._load()

    def _load(self) -> None:
        self._checked = time.monotonic()
        if self.tokens_file is None:
            return
        try:
            mtime = self.tokens_file.stat().st_mtime
        except OSError:
            mtime = None
        if mtime == self._mtime and self._checked_once:
            return
        self._checked_once = True
        if mtime is None:
            log.warning(
                "tokens file %s is missing: only the service's own keys are accepted", self.tokens_file
            )
        try:
            entries = read_entries(self.tokens_file) if mtime is not None else []
        except ValueError as exc:  # a broken edit keeps the tokens in force until it is fixed
            log.error("tokens file not reloaded: %s", exc)
            return
        store = TokenStore(entries)
        with self._lock:
            for keys, role in self._api_keys:
                store.add_api_keys(keys, role)
            self._store, self._mtime = store, mtime
        log.info("tokens loaded: %d principals from %s", len(entries), self.tokens_file)
