"""The gateway's client of a worker process: ``puyu.inference.v1.Inference/Generate`` over gRPC.

Errors come back as the exceptions the router acts on: ``WorkerGone`` (the worker is unreachable or
stopped: try another, and stop routing to it), ``WorkerBusy`` (its queue is full, or it no longer
serves the name: try another), ``InvalidRequest`` (no worker would take it), and a failure during
generation as a last delta with ``finish_reason="error"``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import grpc

from contracts.proto.puyu.inference.v1 import inference_pb2 as pb
from contracts.proto.puyu.inference.v1 import inference_pb2_grpc
from services.inference_gateway.core.engine import Delta
from services.inference_gateway.core.prompts import Prompt
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams
from services.inference_gateway.wire import chunk_to_delta, params_to_proto, prompt_into
from shared.auth import ClientAuth

# statuses after which another worker may well serve the request; any other means the worker is gone
_BUSY = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}


_CLOSE_GRACE_S = 3600.0  # a dropped channel's running calls may take as long as a request may


class WorkerGone(ConnectionError):
    def __init__(self, instance: str, detail: str) -> None:
        super().__init__(f"worker {instance}: {detail}")
        self.instance = instance


class WorkerBusy(RuntimeError):
    def __init__(self, instance: str, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(f"worker {instance}: {detail}")
        self.instance, self.code = instance, code


class WorkerClients:
    """One gRPC channel per worker address, reused by every request to it (``auth``: the gateway's
    token and TLS, which the workers check as any service does)."""

    def __init__(self, auth: ClientAuth | None = None) -> None:
        self.auth = auth or ClientAuth()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._retired: list[grpc.aio.Channel] = []  # dropped, closing once their calls end

    def stub(self, target: str) -> inference_pb2_grpc.InferenceStub:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = self.auth.channel(target)
        return inference_pb2_grpc.InferenceStub(channel)

    def forget(self, target: str) -> None:
        """Drop the channel to a worker that failed: a worker back at that address gets a fresh one
        (a failed channel retries its connection with back-off, and fails calls meanwhile). Calls
        still running on it (a stopping worker finishing its requests) keep it until they end."""
        channel = self._channels.pop(target, None)
        if channel is not None:
            self._retired.append(channel)
            task = asyncio.ensure_future(channel.close(grace=_CLOSE_GRACE_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            task.add_done_callback(
                lambda _: self._retired.remove(channel) if channel in self._retired else None
            )

    async def close(self) -> None:
        channels, self._channels = [*self._channels.values(), *self._retired], {}
        self._retired = []
        for task in list(self._closing):
            task.cancel()
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()

    async def stream(
        self,
        instance: str,
        target: str,
        model: str,
        prompt: Prompt,
        params: SamplingParams,
        *,
        whole: bool = False,
    ) -> AsyncGenerator[Delta, None]:
        """The request's deltas from one worker; closing the iterator cancels the call (and the generation).

        ``whole``: deliver nothing until the generation is complete, so that a worker dying midway is
        a ``WorkerGone`` before the first delta and the router can run it again elsewhere (a caller
        that answers only at the end loses nothing by waiting).
        """
        request = pb.GenerateRequest(model=model, params=params_to_proto(params), local_only=True)
        prompt_into(request, prompt)
        call = self.stub(target).Generate(request)
        held: list[Delta] = []
        sent_any = False
        failure: Exception | None = None
        try:
            async for chunk in call:
                delta = chunk_to_delta(chunk)
                if whole:
                    held.append(delta)
                    if delta.finish_reason is None:
                        continue
                    for d in held:
                        yield d
                    return
                sent_any = True
                yield delta
                if delta.finish_reason is not None:
                    return
            failure = WorkerGone(instance, "the stream ended without a last chunk")
        except grpc.aio.AioRpcError as exc:
            code, detail = exc.code(), exc.details() or exc.code().name
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidRequest(detail) from None
            if code == grpc.StatusCode.INTERNAL:  # the generation itself failed on the worker
                yield Delta("", 0, 0, "error", error=detail, worker=instance)
                return
            failure = WorkerBusy(instance, code, detail) if code in _BUSY else WorkerGone(instance, detail)
        finally:
            if not call.done():
                call.cancel()  # the worker sees the cancellation and stops generating
        if sent_any:  # tokens went out already: this stream cannot move elsewhere, it ends in error
            yield Delta("", 0, 0, "error", error=f"{failure}", worker=instance)
            return
        assert failure is not None
        raise failure
