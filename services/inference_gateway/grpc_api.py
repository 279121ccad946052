"""gRPC ``puyu.inference.v1.Inference``: server-streaming Generate (stops when the client cancels) and ListModels.

On the gateway a request is routed (a worker process, else the in-process pool); on a worker, and
for any request with ``local_only``, it runs on this process's own engines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from contracts.proto.puyu.inference.v1 import inference_pb2, inference_pb2_grpc
from services.inference_gateway.core.engine import EngineClosed
from services.inference_gateway.core.pool import ModelNotFound
from services.inference_gateway.core.routing import NoWorker, Overloaded
from services.inference_gateway.core.sampling import InvalidRequest
from services.inference_gateway.router import Router
from services.inference_gateway.wire import delta_to_chunk, params_from_proto, prompt_from_request
from shared.auth import Role
from shared.auth.grpc import rpc_role

SERVICE_NAME = "puyu.inference.v1.Inference"


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, router: Router, default_max_tokens: int = 16) -> None:
        self.router = router
        self.default_max_tokens = default_max_tokens

    @rpc_role(Role.READER)
    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        try:
            params = params_from_proto(request.params, self.default_max_tokens)
            prompt = prompt_from_request(request)
            stream = await self.router.open(request.model, prompt, params, local_only=request.local_only)
        except ModelNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except (EngineClosed, NoWorker) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        worker = self.router.instance
        try:
            async for delta in stream:
                if delta.finish_reason == "error":
                    await context.abort(grpc.StatusCode.INTERNAL, delta.error or "generation failed")
                yield delta_to_chunk(delta, request.model, worker)
                if delta.finish_reason or context.cancelled():
                    return
        finally:
            # client gone (CancelledError lands here) or done: closing the stream cancels the engine request
            await stream.aclose()  # type: ignore[attr-defined]

    @rpc_role(Role.READER)
    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        return inference_pb2.ListModelsResponse(
            models=[
                inference_pb2.ServedModel(
                    name=e.name, model_name=e.model_name, version=e.version, state=e.state, worker=e.worker
                )
                for e in self.router.models(with_draining=True)
            ]
        )
