"""The gateway's API keys are tokens of the one authenticator its HTTP and gRPC ports share: a key
opens both, no key opens neither; a token from the tokens file works on both too."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest

from contracts.proto.puyu.inference.v1 import inference_pb2, inference_pb2_grpc
from services.inference_gateway.app import create_service
from services.inference_gateway.config import GatewaySettings
from services.inference_gateway.core.pool import ModelPool
from shared.auth import ClientAuth, Role
from shared.natsserver import free_port
from tests.support.auth_tokens import bearer, require_auth

KEY = "sk-gateway-key"


async def test_gateway_keys_apply_to_grpc_as_to_http(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = require_auth(tmp_path, monkeypatch)
    pool = ModelPool()
    await pool.deploy("tiny", 1, tiny_model)
    settings = GatewaySettings(
        gateway_api_key=KEY,
        gateway_grpc_port=free_port(),
        gateway_http_port=free_port(),
        gateway_route_workers=False,
    )
    runtime = create_service(settings, pool=pool).runtime
    server = runtime.build_grpc_server()
    await server.start()
    request = inference_pb2.GenerateRequest(
        model="tiny", prompt="The river", params=inference_pb2.SamplingParams(max_tokens=3)
    )
    target = f"127.0.0.1:{runtime.grpc_port}"
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            for metadata, code in [
                ((), grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", "Bearer sk-wrong"),), grpc.StatusCode.UNAUTHENTICATED),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.Generate(request, metadata=metadata):
                        pass
                assert err.value.code() == code
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ListModels(inference_pb2.ListModelsRequest(), metadata=metadata)
                assert err.value.code() == code
        # the key, and a reader's token, through the client every service uses (streamed and unary)
        for token in (KEY, tokens[Role.READER]):
            async with ClientAuth(token=token).channel(target) as channel:
                stub = inference_pb2_grpc.InferenceStub(channel)
                chunks = [c async for c in stub.Generate(request)]
                assert chunks[-1].finish_reason in ("stop", "length")
                listed = await stub.ListModels(inference_pb2.ListModelsRequest())
                assert "tiny" in {m.name for m in listed.models}
    finally:
        await server.stop(None)
        await pool.close()

    transport = httpx.ASGITransport(app=runtime.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
        refused = await http.post("/v1/completions", json=body)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert (await http.get("/v1/models", headers=bearer("sk-wrong"))).status_code == 401
        assert (await http.get("/v1/models", headers=bearer(KEY))).status_code == 200
        assert (await http.get("/v1/models", headers=bearer(tokens[Role.OPERATOR]))).status_code == 200
