"""How a process proves who it is to NATS: an NKEY seed (or a user credentials file) and TLS trust.

Services take it from their settings (``PUYU_NATS_NKEY_SEED_FILE`` or ``PUYU_NATS_CREDS_FILE``,
``PUYU_NATS_TLS_CA_FILE``); the local stack generates one per service (``shared.bus.natsauth``).
With none, a process connects without credentials, which works only against a NATS that has no
users (someone's own server): it says so once, as anyone who reaches that server may forge events.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nkeys

from shared.bus.permissions import inbox_prefix

if TYPE_CHECKING:
    from faststream.nats.security import NatsSecurity
    from nats.aio.client import Client

    from shared.settings import CommonSettings

log = logging.getLogger(__name__)
_CREDS_SEED = re.compile(rb"-----BEGIN USER NKEY SEED-----\s*(\S+)\s*------END USER NKEY SEED------")


_MSG_ID_KEY_CONTEXT = b"puyu nats-msg-id v1\0"  # domain separation: this key is used for nothing else
SEAL = "~"  # between an event id and its tag in Nats-Msg-Id


def seal_message_id(key: bytes | None, subject: str, event_id: str) -> str:
    """The ``Nats-Msg-Id`` of event ``event_id`` on ``subject``: the id and an HMAC of both under the
    publisher's key. JetStream's duplicate window is stream-wide and trusts whatever id a publisher
    sends, so a plain event id could be claimed first by any service that may publish on the stream
    (its fact then dropped as a duplicate); a sealed one only by whoever holds the key. Deterministic,
    so a re-publish (a retry, a second finisher, another replica) is still stored once."""
    if key is None:
        return event_id
    tag = hmac.new(key, f"{subject}\n{event_id}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{event_id}{SEAL}{tag}"


class NatsAuthError(RuntimeError):
    """NATS refused this process's identity (or its lack of one)."""


@dataclass(frozen=True)
class NatsIdentity:
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None  # a client certificate, where the server asks for one
    tls_key_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> NatsIdentity:
        return cls(
            nkey_seed_file=settings.nats_nkey_seed_file,
            creds_file=settings.nats_creds_file,
            tls_ca_file=settings.nats_tls_ca_file,
            tls_cert_file=settings.nats_tls_cert_file,
            tls_key_file=settings.nats_tls_key_file,
        )

    @classmethod
    def from_env(cls) -> NatsIdentity:
        from shared.settings import CommonSettings

        return cls.from_settings(CommonSettings())

    @property
    def anonymous(self) -> bool:
        return self.nkey_seed_file is None and self.creds_file is None

    def public_key(self) -> str | None:
        seed = self._seed()
        if seed is None:
            return None
        keys = nkeys.from_seed(bytearray(seed))
        try:
            return str(keys.public_key.decode())
        finally:
            keys.wipe()

    def _seed(self) -> bytes | None:
        if self.nkey_seed_file is not None:
            return self.nkey_seed_file.read_bytes().strip()
        if self.creds_file is not None:
            found = _CREDS_SEED.search(self.creds_file.read_bytes())
            if not found:
                raise NatsAuthError(f"{self.creds_file}: no user NKEY seed in this credentials file")
            return found.group(1)
        return None

    def message_id_key(self) -> bytes | None:
        """The key that seals this identity's message ids (``seal_message_id``), derived from its seed:
        replicas sharing an identity seal alike; without a seed there is nothing to seal with."""
        seed = self._seed()
        return None if seed is None else hashlib.sha256(_MSG_ID_KEY_CONTEXT + seed).digest()

    def inbox_prefix(self) -> str:
        key = self.public_key()
        return inbox_prefix(key) if key else "_INBOX"

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_ca_file is None and self.tls_cert_file is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca_file) if self.tls_ca_file else None)
        if self.tls_cert_file is not None:
            context.load_cert_chain(
                str(self.tls_cert_file), str(self.tls_key_file) if self.tls_key_file else None
            )
        return context

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments of ``nats.connect`` for this identity."""
        options: dict[str, Any] = {"inbox_prefix": self.inbox_prefix()}
        if self.creds_file is not None:
            options["user_credentials"] = str(self.creds_file)
        elif self.nkey_seed_file is not None:
            options["nkeys_seed"] = str(self.nkey_seed_file)
        if (context := self.ssl_context()) is not None:
            options["tls"] = context
        return options

    def broker_security(self) -> NatsSecurity | None:
        """The same identity as FastStream's ``security=``."""
        from faststream.nats.security import NatsCredentials, NatsNKey, NatsSecurity

        context = self.ssl_context()
        if self.creds_file is not None:
            return NatsCredentials.from_file(self.creds_file, ssl_context=context)
        if self.nkey_seed_file is not None:
            return NatsNKey.from_file(self.nkey_seed_file, ssl_context=context)
        return NatsSecurity(ssl_context=context) if context is not None else None


def check_connection(nc: Client, identity: NatsIdentity, who: str) -> None:
    """Warn when a process runs on a NATS that anyone may publish to."""
    info = getattr(nc, "_server_info", {}) or {}
    if identity.anonymous and not info.get("auth_required"):
        log.warning(
            "%s: connected to NATS at %s without credentials, and it asks for none: anyone who reaches "
            "it can publish events (set PUYU_NATS_NKEY_SEED_FILE against a NATS with users)",
            who,
            nc.connected_url.geturl() if nc.connected_url else "?",
        )


def describe_refusal(exc: BaseException, identity: NatsIdentity, url: str) -> NatsAuthError | None:
    """A readable error for NATS's authorization refusal, or None when ``exc`` is something else."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if "authorization" not in text and "authentication" not in text:
        return None
    if identity.anonymous:
        return NatsAuthError(
            f"NATS at {url} requires credentials: set PUYU_NATS_NKEY_SEED_FILE (or PUYU_NATS_CREDS_FILE)"
        )
    return NatsAuthError(f"NATS at {url} refused the identity {identity.public_key()}: {exc}")
