"""What a client of the services sends: its bearer token, over TLS where the stack speaks it.

Service-to-service calls (the finetuner and evaluator asking the registry, the gateway asking the
registry and its workers, the agent runtime asking the gateway) and the CLI build their channels and
HTTP headers here, from the settings (``PUYU_AUTH_TOKEN`` / ``PUYU_AUTH_TOKEN_FILE``, ``PUYU_TLS_*``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shared.settings import CommonSettings


@dataclass(frozen=True)
class ClientAuth:
    token: str | None = None
    tls: bool = False
    ca_file: Path | None = None  # None with tls: the system's trusted CAs
    cert_file: Path | None = None  # presented where the server asks for a client certificate
    key_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: CommonSettings, token: str | None = None) -> ClientAuth:
        """``token``: overrides the settings' (e.g. the CLI's token found in a stack's home)."""
        token = token or settings.client_token()
        return cls(
            token=token or None,
            tls=settings.tls_clients,
            ca_file=settings.tls_ca_file,
            cert_file=settings.tls_cert_file if settings.tls_key_file else None,
            key_file=settings.tls_key_file if settings.tls_cert_file else None,
        )

    # ------------------------------------------------------------------------------ HTTP (httpx)
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def verify(self) -> str | bool:
        return str(self.ca_file) if self.ca_file else True

    @property
    def cert(self) -> tuple[str, str] | None:
        return (str(self.cert_file), str(self.key_file)) if self.cert_file and self.key_file else None

    def httpx_options(self) -> dict[str, Any]:
        """``headers``, ``verify`` and ``cert`` for an ``httpx.Client`` / ``AsyncClient``."""
        options: dict[str, Any] = {"headers": self.headers(), "verify": self.verify}
        if self.cert:
            options["cert"] = self.cert
        return options

    # ------------------------------------------------------------------------------ gRPC
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self, target: str) -> grpc.aio.Channel:
        """An aio channel to ``target`` that sends the token with every call."""
        interceptors = _token_interceptors(self.metadata()) if self.token else None
        if not self.tls:
            return grpc.aio.insecure_channel(target, interceptors=interceptors)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.cert and self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert and self.cert_file else None,
        )
        return grpc.aio.secure_channel(target, credentials, interceptors=interceptors)


def _with_metadata(details: Any, extra: tuple[tuple[str, str], ...]) -> grpc.aio.ClientCallDetails:
    metadata = (*tuple(details.metadata or ()), *extra)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files an interceptor under the first kind it implements: one class per kind.
class _UnaryUnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_metadata(details, self.metadata), request)


class _UnaryStreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_metadata(details, self.metadata), request)


class _StreamUnaryToken(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(_with_metadata(details, self.metadata), requests)


class _StreamStreamToken(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(_with_metadata(details, self.metadata), requests)


def _token_interceptors(metadata: tuple[tuple[str, str], ...]) -> list[grpc.aio.ClientInterceptor]:
    kinds = (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)
    return [kind(metadata) for kind in kinds]
