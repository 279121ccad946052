"""TLS for the gRPC and HTTP servers of a service, from certificate files (``PUYU_TLS_*``)."""

from __future__ import annotations

from typing import Any

import grpc

from shared.settings import CommonSettings


def tls_configured(settings: CommonSettings) -> bool:
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ValueError("TLS needs both PUYU_TLS_CERT_FILE and PUYU_TLS_KEY_FILE")
    return settings.tls_cert_file is not None


def grpc_server_credentials(settings: CommonSettings) -> grpc.ServerCredentials | None:
    """None: plaintext. With a client CA, clients must present a certificate it signed."""
    if not tls_configured(settings):
        return None
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    client_ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def uvicorn_tls_options(settings: CommonSettings) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments: none for plaintext."""
    if not tls_configured(settings):
        return {}
    import ssl

    options: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_cert_file),
        "ssl_keyfile": str(settings.tls_key_file),
    }
    if settings.tls_client_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.tls_client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
