"""The registry's audit log names the authenticated principal of a change, over REST and gRPC; an
``actor`` a caller writes in the body is ignored, and a reader cannot change anything."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest

from contracts.events import ArtifactRef
from contracts.proto.puyu.registry.v1 import registry_pb2, registry_pb2_grpc
from services.model_registry.app import create_service
from services.model_registry.config import RegistrySettings
from services.model_registry.core.database import migrate
from shared.auth import ClientAuth, Role
from shared.natsserver import free_port
from tests.support.auth_tokens import PRINCIPALS, bearer, require_auth

pytestmark = pytest.mark.integration


async def test_audit_log_records_the_authenticated_principal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = require_auth(tmp_path, monkeypatch)
    settings = RegistrySettings(
        home=tmp_path / "home", registry_grpc_port=free_port(), registry_http_port=free_port()
    )
    service = create_service(settings)
    registry, runtime = service.core, service.runtime
    migrate(registry.engine)
    for n in (1, 2):
        uri = f"{settings.artifact_root_uri}/models/audited/{n}"
        registry.register_version("audited", ArtifactRef(uri=uri, sha256=f"{n:064x}", size_bytes=1))

    transport = httpx.ASGITransport(app=runtime.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as http:
        forged = {"version": 1, "reason": "looks good", "actor": "someone-else"}
        denied = await http.post(
            "/v1/models/audited/promote", json=forged, headers=bearer(tokens[Role.READER])
        )
        assert denied.status_code == 403
        r = await http.post("/v1/models/audited/promote", json=forged, headers=bearer(tokens[Role.OPERATOR]))
        assert r.status_code == 200, r.text
        r = await http.post(
            "/v1/models/audited/rollback", json={"actor": "nobody"}, headers=bearer(tokens[Role.ADMIN])
        )
        assert r.status_code in (200, 400), r.text  # with nothing to roll back to, a refusal

    server = runtime.build_grpc_server()
    await server.start()
    try:
        target = f"127.0.0.1:{runtime.grpc_port}"
        async with ClientAuth(token=tokens[Role.OPERATOR]).channel(target) as channel:
            stub = registry_pb2_grpc.ModelRegistryStub(channel)
            await stub.SetAlias(
                registry_pb2.SetAliasRequest(model_name="audited", alias="staging", version=2)
            )
        async with ClientAuth(token=tokens[Role.READER]).channel(target) as channel:
            stub = registry_pb2_grpc.ModelRegistryStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Rollback(registry_pb2.RollbackRequest(model_name="audited"))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            audit = await stub.ListAudit(registry_pb2.ListAuditRequest(model_name="audited"))
    finally:
        await server.stop(None)

    actors = {(e.action, e.actor) for e in audit.entries}
    operator = PRINCIPALS[Role.OPERATOR]
    assert ("someone-else" not in {a for _, a in actors}) and ("nobody" not in {a for _, a in actors})
    assert ("manual_promote", operator) in actors and ("set_alias", operator) in actors, actors
