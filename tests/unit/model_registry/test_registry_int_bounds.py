"""Integers no stored version can have (above the INTEGER columns, above 2**63) are a 400 on REST and
INVALID_ARGUMENT on gRPC naming the field, on SQLite and PostgreSQL, never a 500 from the driver."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from test_registry_core import _pg_engine, art

from contracts.proto.puyu.registry.v1 import registry_pb2 as pb
from contracts.proto.puyu.registry.v1 import registry_pb2_grpc
from services.model_registry.core import InvalidInput
from services.model_registry.core.database import make_engine, migrate
from services.model_registry.core.registry import Registry
from services.model_registry.core.store import MAX_VERSION
from services.model_registry.grpc_api import RegistryServicer
from services.model_registry.http_api import make_router

HUGE = [2**63, 2**64 + 5, -(2**64), MAX_VERSION + 1]  # SQLite cannot bind the first three
INT64_MAX = 2**63 - 1  # the most a gRPC int64 field carries: above PostgreSQL's INTEGER


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        e = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
        yield e
        e.dispose()
    else:
        yield from _pg_engine()


@pytest.fixture
def reg(engine: Engine) -> Registry:
    migrate(engine)
    registry = Registry(engine)
    registry.register_version("m", art(1))
    return registry


@pytest.fixture
async def rest(reg: Registry) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(make_router(reg))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://registry") as client:
        yield client


@pytest.fixture
async def stub(reg: Registry) -> AsyncIterator[registry_pb2_grpc.ModelRegistryStub]:
    server = grpc.aio.server()
    registry_pb2_grpc.add_ModelRegistryServicer_to_server(RegistryServicer(reg), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield registry_pb2_grpc.ModelRegistryStub(channel)
    finally:
        await server.stop(None)


def test_core_refuses_numbers_no_version_can_have(reg: Registry) -> None:
    for n in [*HUGE, 0]:
        with pytest.raises(
            InvalidInput, match=rf"^version must be an integer from 1 to {MAX_VERSION}, got {n}$"
        ):
            reg.get_version("m", version=n)
    with pytest.raises(InvalidInput, match=r"^version must be"):
        reg.resolve(f"m:{2**64}")
    assert reg.get_version("m", version=1).version == 1


@pytest.mark.parametrize("n", HUGE)
async def test_rest_integer_parameters_out_of_range_are_400(rest: httpx.AsyncClient, n: int) -> None:
    calls = [
        rest.get(f"/v1/models/m/versions/{n}"),
        rest.get(f"/v1/models/m/versions/{n}/card"),
        rest.patch(f"/v1/models/m/versions/{n}/tags", json={"set": {"k": "v"}}),
    ]
    if n > 0:  # a body version below 1 was already refused by its model (a 422 naming body.version)
        calls.append(rest.post("/v1/models/m/promote", json={"version": n}))
    for call in calls:
        response = await call
        assert response.status_code == 400, response.text
        assert response.json()["detail"].startswith("version must be an integer from 1 to")
    assert (await rest.get(f"/v1/audit?limit={n}")).status_code == 200  # clamped to [1, 1000]
    assert (await rest.get("/v1/models/m/versions/1")).status_code == 200
    assert (await rest.get("/v1/models/m/versions/9")).status_code == 404


async def test_grpc_int_fields_out_of_range_are_invalid_argument(
    stub: registry_pb2_grpc.ModelRegistryStub,
) -> None:
    calls = {
        "version": [
            stub.GetVersion(pb.GetVersionRequest(model_name="m", version=INT64_MAX)),
            stub.GetModelCard(pb.GetVersionRequest(model_name="m", version=-INT64_MAX)),
            stub.SetAlias(pb.SetAliasRequest(model_name="m", alias="staging", version=INT64_MAX)),
            stub.SetTags(pb.SetTagsRequest(model_name="m", version=MAX_VERSION + 1, set={"k": "v"})),
        ],
        "parent_version": [
            stub.RegisterVersion(
                pb.RegisterVersionRequest(
                    model_name="m",
                    artifact=pb.Artifact(uri="file:///tmp/ckpt/2", sha256="2" * 64, size_bytes=INT64_MAX),
                    parent_model="m",
                    parent_version=INT64_MAX,
                )
            )
        ],
    }
    for field, rpcs in calls.items():
        for rpc in rpcs:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await rpc
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith(f"{field} must be an integer from 1 to")
    audit = await stub.ListAudit(pb.ListAuditRequest(model_name="m", limit=2**31 - 1))
    assert [e.action for e in audit.entries] == ["register"]
    assert (await stub.GetVersion(pb.GetVersionRequest(model_name="m", version=1))).version == 1
