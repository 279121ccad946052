"""gRPC ``puyu.inference.v1.Inference``: server-streaming Generate (stops when the client cancels) and ListModels."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from contracts.proto.puyu.inference.v1 import inference_pb2, inference_pb2_grpc
from services.inference_gateway.engine import EngineClosed
from services.inference_gateway.pool import ModelNotFound, ModelPool
from services.inference_gateway.sampling import InvalidRequest, SamplingParams

SERVICE_NAME = "puyu.inference.v1.Inference"


def params_from_proto(p: inference_pb2.SamplingParams, default_max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=p.max_tokens or default_max_tokens,
        temperature=p.temperature,
        top_p=p.top_p if 0 < p.top_p < 1 else 1.0,
        top_k=p.top_k,
        stop=tuple(p.stop),
        seed=p.seed if p.has_seed else None,
    ).validate()


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, pool: ModelPool, default_max_tokens: int = 16) -> None:
        self.pool = pool
        self.default_max_tokens = default_max_tokens

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        try:
            params = params_from_proto(request.params, self.default_max_tokens)
            engine = self.pool.resolve(request.model)
            stream = engine.stream(engine.encode(request.prompt), params, request.request_id or None)
            first = await stream.__anext__()  # submits: errors surface here as gRPC statuses
        except ModelNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except EngineClosed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        delta = first
        try:
            while True:
                if delta.finish_reason == "error":
                    await context.abort(grpc.StatusCode.INTERNAL, delta.error or "generation failed")
                yield inference_pb2.GenerateChunk(
                    text=delta.text,
                    completion_tokens=delta.completion_tokens,
                    prompt_tokens=delta.prompt_tokens,
                    finish_reason=delta.finish_reason or "",
                    model=request.model,
                )
                if delta.finish_reason or context.cancelled():
                    return
                delta = await stream.__anext__()
        finally:
            # client gone (CancelledError lands here) or done: closing the stream cancels the engine request
            await stream.aclose()  # type: ignore[attr-defined]

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        return inference_pb2.ListModelsResponse(
            models=[
                inference_pb2.ServedModel(
                    name=name, model_name=s.model_name, version=s.version, state=s.state
                )
                for name, s in self.pool.entries()
            ]
        )
