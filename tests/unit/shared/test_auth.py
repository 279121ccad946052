"""shared.auth: tokens (hashed, constant-time lookup, file re-read), roles, the local stack's tokens,
and TLS on the gRPC and HTTP servers with a generated self-signed certificate."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import time
from pathlib import Path

import grpc
import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contracts.proto.puyu.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from shared.auth import ANONYMOUS, Authenticator, ClientAuth, PermissionDenied, Role, Unauthenticated
from shared.auth import authenticator as authenticator_module
from shared.auth.__main__ import main as auth_cli
from shared.auth.http import install_auth, requires
from shared.auth.local import ADMIN, TokenDir, cli_token, local_principals, service_principal
from shared.auth.tls import uvicorn_tls_options
from shared.auth.tokens import read_entries, token_hash
from shared.jobs_api import add_jobs_api
from shared.natsserver import free_port
from shared.service import ServiceRuntime
from shared.settings import CommonSettings
from tests.support.auth_tokens import PRINCIPALS, issue_tokens


def test_tokens_are_stored_hashed_and_checked_by_role(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    tokens = issue_tokens(path)
    text = path.read_text()
    assert all(token not in text for token in tokens.values())  # only hashes on disk
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    auth = Authenticator(path)
    for role, token in tokens.items():
        principal = auth.authorize(f"Bearer {token}", role)
        assert (principal.name, principal.role) == (PRINCIPALS[role], role)
    assert auth.authorize(f"bearer {tokens[Role.ADMIN]}", Role.OPERATOR).role is Role.ADMIN
    with pytest.raises(PermissionDenied, match="operator required"):
        auth.authorize(f"Bearer {tokens[Role.READER]}", Role.OPERATOR)
    for header in (None, "", "Bearer ", "Bearer nope", f"Basic {tokens[Role.ADMIN]}"):
        with pytest.raises(Unauthenticated) as err:
            auth.authorize(header, Role.READER)
        assert tokens[Role.ADMIN] not in str(err.value)


def test_closed_by_default_and_open_only_when_asked_with_no_token(tmp_path: Path) -> None:
    with pytest.raises(Unauthenticated):
        Authenticator().authorize(None, Role.READER)  # nothing configured: nobody gets in
    assert Authenticator(required=False).authorize(None, Role.ADMIN) == ANONYMOUS
    # once a key exists, the switch no longer opens anything
    keyed = Authenticator(required=False, api_keys=["k1"])
    with pytest.raises(Unauthenticated):
        keyed.authorize(None, Role.READER)
    assert keyed.authorize("Bearer k1", Role.READER).name == f"api-key:{token_hash('k1')[:8]}"
    with pytest.raises(PermissionDenied):
        keyed.authorize("Bearer k1", Role.OPERATOR)  # an API key is a reader


def test_a_changed_tokens_file_is_reread_and_a_broken_one_keeps_the_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(authenticator_module, "RELOAD_CHECK_S", 0.0)
    path = tmp_path / "tokens.jsonl"
    old = issue_tokens(path)
    auth = Authenticator(path, api_keys=["k1"])
    assert auth.authorize(f"Bearer {old[Role.READER]}", Role.READER)
    time.sleep(0.01)
    new = issue_tokens(path)  # rotation: the old tokens are gone
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert auth.authorize(f"Bearer {new[Role.READER]}", Role.READER)
    assert auth.authorize("Bearer k1", Role.READER)  # the service's own keys stay
    with pytest.raises(Unauthenticated):
        auth.authorize(f"Bearer {old[Role.READER]}", Role.READER)
    with caplog.at_level(logging.ERROR):
        path.write_text("{not json\n")
        os.utime(path, (time.time() + 10, time.time() + 10))
        assert auth.authorize(f"Bearer {new[Role.READER]}", Role.READER)
    assert "not reloaded" in caplog.text and new[Role.READER] not in caplog.text


def test_the_local_stack_makes_its_tokens_once_and_the_cli_finds_the_admin_token(tmp_path: Path) -> None:
    tokens = TokenDir.of_home(tmp_path)
    tokens.ensure(local_principals(("model_registry", "evaluator")))
    admin = tokens.token(ADMIN)
    auth_cli(["issue", "alice", "operator", "--file", str(tokens.tokens_file)])  # a principal added by hand
    tokens.ensure(local_principals(("model_registry", "evaluator")))
    assert tokens.token(ADMIN) == admin  # kept across starts
    entries = {e.principal: e.role for e in read_entries(tokens.tokens_file)}
    assert entries == {
        ADMIN: Role.ADMIN,
        service_principal("model_registry"): Role.READER,
        service_principal("evaluator"): Role.READER,
        "alice": Role.OPERATOR,
    }
    assert oct(tokens.root.stat().st_mode & 0o777) == "0o700"
    assert cli_token(CommonSettings(home=tmp_path)) == admin
    assert cli_token(CommonSettings(home=tmp_path, auth_token="explicit")) == "explicit"
    auth_cli(["revoke", "alice", "--file", str(tokens.tokens_file)])
    assert "alice" not in {e.principal for e in read_entries(tokens.tokens_file)}


# ---------------------------------------------------------------------------------------------- TLS
def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "puyu-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "tls.crt", folder / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


async def test_tls_on_grpc_and_http_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    tokens = issue_tokens(tmp_path / "tokens.jsonl")
    settings = CommonSettings(
        tls_cert_file=cert, tls_key_file=key, tls_ca_file=cert, auth_tokens_file=tmp_path / "tokens.jsonl"
    )
    runtime = ServiceRuntime(
        "dedup", settings, grpc_port_override=free_port(), http_port_override=free_port()
    )
    add_jobs_api(runtime, {})
    server = runtime.build_grpc_server()
    await server.start()
    target = f"127.0.0.1:{runtime.grpc_port}"
    try:
        client = ClientAuth.from_settings(settings, token=tokens[Role.OPERATOR])
        assert client.tls
        async with client.channel(target) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as err:  # past authentication, to the servicer
                await jobs_pb2_grpc.JobsStub(channel).Submit(jobs_pb2.SubmitJobRequest(kind="x"), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        async with grpc.aio.insecure_channel(target) as plain:  # plaintext gets nowhere
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        async with ClientAuth(tls=True).channel(target) as unverified:  # system CAs do not know it
            with pytest.raises(grpc.aio.AioRpcError):
                await health_pb2_grpc.HealthStub(unverified).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await server.stop(None)

    app = FastAPI()
    install_auth(app, Authenticator(tmp_path / "tokens.jsonl"))
    app.add_api_route("/v1/thing", lambda: {"ok": True}, dependencies=[requires(Role.READER)])
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_tls_options(settings)
    )
    http_server = uvicorn.Server(config)
    task = asyncio.create_task(http_server.serve())
    try:
        for _ in range(500):
            if http_server.started:
                break
            await asyncio.sleep(0.02)
        url = f"https://127.0.0.1:{port}/v1/thing"
        async with httpx.AsyncClient(**client.httpx_options()) as http:
            assert (await http.get(url)).json() == {"ok": True}
        async with httpx.AsyncClient(verify=client.verify) as http:
            assert (await http.get(url)).status_code == 401
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(url)
    finally:
        http_server.should_exit = True
        await task
