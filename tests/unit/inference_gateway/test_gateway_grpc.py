import asyncio
from pathlib import Path

import grpc
import pytest

from contracts.proto.puyu.inference.v1 import inference_pb2, inference_pb2_grpc
from services.inference_gateway.core.pool import ModelPool
from services.inference_gateway.grpc_api import InferenceServicer
from services.inference_gateway.router import Router
from shared.natsserver import free_port


async def test_generate_list_and_cancel(tiny_model: Path) -> None:
    pool = ModelPool()
    await pool.deploy("tiny", 3, tiny_model)
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(Router(pool)), server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            listed = await stub.ListModels(inference_pb2.ListModelsRequest())
            assert {m.name for m in listed.models} == {"tiny", "tiny:3", "tiny@champion"}
            req = inference_pb2.GenerateRequest(
                model="tiny:3", prompt="The river", params=inference_pb2.SamplingParams(max_tokens=6)
            )
            chunks = [c async for c in stub.Generate(req)]
            assert chunks[-1].finish_reason in ("stop", "length") and chunks[-1].completion_tokens <= 6
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.Generate(inference_pb2.GenerateRequest(model="nope", prompt="x")):
                    pass
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            # a client that goes away stops the generation on the engine
            call = stub.Generate(
                inference_pb2.GenerateRequest(
                    model="tiny",
                    prompt="The river",
                    params=inference_pb2.SamplingParams(max_tokens=200, stop=["@@@"]),
                )
            )
            await call.read()
            call.cancel()
            engine = pool.resolve("tiny")
            for _ in range(200):
                if engine.in_flight == 0:
                    break
                await asyncio.sleep(0.02)
            assert engine.in_flight == 0
            assert engine.finished["cancelled"] == 1
    finally:
        await server.stop(None)
        await pool.close()
