"""What the serving classes share: starting a request's choices on the router, mapping the router's
refusals to OpenAI errors, and the Server-Sent Events framing."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel

from services.inference_gateway.core.engine import Delta
from services.inference_gateway.core.pool import ModelNotFound
from services.inference_gateway.core.prompts import Prompt
from services.inference_gateway.core.routing import NoWorker, Overloaded
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams
from services.inference_gateway.openai.admission import Admission, APIError
from services.inference_gateway.openai.protocol import StreamError, StreamErrorInfo
from services.inference_gateway.openai.streams import PeekableStream
from services.inference_gateway.router import Router

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel, covariant=True)

DONE = "data: [DONE]\n\n"


def sse(event: BaseModel) -> str:
    """One Server-Sent Event carrying ``event`` as JSON (``json.dumps``' spacing, as clients have seen)."""
    return f"data: {json.dumps(event.model_dump())}\n\n"


def stream_error(delta: Delta) -> str:
    return sse(StreamError(error=StreamErrorInfo(message=delta.error, type="server_error")))


def invalid_request(exc: InvalidRequest) -> APIError:
    return APIError(400, str(exc), "invalid_request_error")


def validated(make: Callable[[], T]) -> T:
    """``make()``, with its ``InvalidRequest`` answered as a 400."""
    try:
        return make()
    except InvalidRequest as exc:
        raise invalid_request(exc) from None


@dataclass(frozen=True)
class ResponseHead:
    """The fields that a response and every chunk of its stream repeat."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> ResponseHead:
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model)


@dataclass(frozen=True)
class Answer(Generic[R]):
    """A serving class's answer: a whole response, or a stream of Server-Sent Events; and its headers."""

    body: R | AsyncIterator[str]
    headers: dict[str, str] = field(default_factory=dict)


class OpenAIServing:
    def __init__(self, router: Router, admission: Admission, default_max_tokens: int) -> None:
        self.router, self.admission, self.default_max_tokens = router, admission, default_max_tokens

    async def _open(
        self, model: str, prompt: Prompt, params: SamplingParams, started: float, whole: bool
    ) -> AsyncIterator[Delta]:
        admission = self.admission
        try:
            return await self.router.open(
                model, prompt, params, whole=whole, timeout=admission.time_left(started)
            )
        except ModelNotFound as exc:
            raise APIError(404, str(exc), "invalid_request_error", "model_not_found") from None
        except InvalidRequest as exc:
            raise invalid_request(exc) from None
        except Overloaded as exc:
            admission.rejected("queue_full")
            raise APIError(503, str(exc), "server_error", "queue_full", {"Retry-After": "1"}) from None
        except NoWorker as exc:
            raise APIError(503, str(exc), "server_error", headers={"Retry-After": "1"}) from None
        except TimeoutError:  # still queued at the deadline: the request was cancelled
            admission.rejected("timeout")
            raise APIError(
                504,
                f"request timed out after {admission.limits.request_timeout_s:g}s",
                "server_error",
                "timeout",
            ) from None

    async def open_choices(
        self, model: str, prompts: list[Prompt], params: SamplingParams, n: int, started: float, whole: bool
    ) -> tuple[list[PeekableStream], dict[str, str]]:
        """The streams of ``n`` choices per prompt, and the response header naming where the first runs.

        Choice ``i`` of a prompt samples with seed ``seed + i``, so n seeded samples differ yet reproduce.
        """
        streams: list[PeekableStream] = []
        headers: dict[str, str] = {}
        try:
            for prompt in prompts:
                first = len(streams)
                for i in range(n):
                    reseeded = params if params.seed is None or i == 0 else _reseed(params, params.seed + i)
                    streams.append(PeekableStream(await self._open(model, prompt, reseeded, started, whole)))
                worker = await streams[first].worker()
                headers = headers or {"X-Puyu-Worker": worker}
        except BaseException:
            for s in streams:
                await s.aclose()
            raise
        return streams, headers


def _reseed(params: SamplingParams, seed: int) -> SamplingParams:
    return dataclasses.replace(params, seed=seed)
