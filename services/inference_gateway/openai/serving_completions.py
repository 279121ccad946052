"""``/v1/completions``: prompts (texts or token ids) in, text out (streamed or whole), with echo and
legacy logprobs; ``max_tokens`` 0 with ``echo`` scores the prompt without generating (as vLLM)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from services.inference_gateway.openai.accumulator import CompletionChoiceAccumulator, finish_reason, usage
from services.inference_gateway.openai.admission import APIError
from services.inference_gateway.openai.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    UsageInfo,
)
from services.inference_gateway.openai.serving_engine import (
    DONE,
    Answer,
    OpenAIServing,
    ResponseHead,
    sse,
    stream_error,
    validated,
)
from services.inference_gateway.openai.streams import PeekableStream, merge_streams


class OpenAIServingCompletion(OpenAIServing):
    async def create_completion(self, request: CompletionRequest) -> Answer[CompletionResponse]:
        want_logprobs = request.logprobs is not None
        params = validated(
            lambda: request.sampling_params(
                self.default_max_tokens,
                request.logprobs,
                request.echo and want_logprobs,
                echo=request.echo,
            )
        )
        prompts = validated(request.prompts)
        started = time.monotonic()
        streams, headers = await self.open_choices(
            request.model, prompts, params, request.n, started, not request.stream
        )
        head = ResponseHead.new("cmpl", request.model)
        choices = [
            CompletionChoiceAccumulator(p.text, echo=request.echo, logprobs=want_logprobs)
            for p in prompts
            for _ in range(request.n)
        ]
        if request.stream:
            return Answer(self._stream(request, head, streams, choices, started), headers)
        return Answer(await self._whole(request, head, streams, choices, started), headers)

    async def _stream(
        self,
        request: CompletionRequest,
        head: ResponseHead,
        streams: list[PeekableStream],
        choices: list[CompletionChoiceAccumulator],
        started: float,
    ) -> AsyncIterator[str]:
        async for i, delta in self.admission.timed(merge_streams(streams), request.model, started):
            if delta.finish_reason == "error":
                yield stream_error(delta)
                return
            text, logprobs = choices[i].add(delta)
            if text or delta.finish_reason or logprobs is not None:
                choice = CompletionChoice(
                    index=i, text=text, logprobs=logprobs, finish_reason=finish_reason(delta.finish_reason)
                )
                yield sse(_chunk(head, [choice]))
        if request.include_usage:
            yield sse(_chunk(head, [], usage(choices, request.n)))
        yield DONE

    async def _whole(
        self,
        request: CompletionRequest,
        head: ResponseHead,
        streams: list[PeekableStream],
        choices: list[CompletionChoiceAccumulator],
        started: float,
    ) -> CompletionResponse:
        deltas = self.admission.timed(merge_streams(streams), request.model, started, streaming=False)
        async for i, delta in deltas:
            if delta.finish_reason == "error":
                raise APIError(500, delta.error or "generation failed", "server_error")
            choices[i].add(delta)
        return CompletionResponse(
            id=head.id,
            created=head.created,
            model=head.model,
            choices=[
                CompletionChoice(
                    index=i,
                    text=c.text,
                    logprobs=c.logprobs,
                    finish_reason=finish_reason(c.last.finish_reason if c.last else None),
                )
                for i, c in enumerate(choices)
            ],
            usage=usage(choices, request.n),
        )


def _chunk(
    head: ResponseHead, choices: list[CompletionChoice], usage_: UsageInfo | None = None
) -> CompletionStreamResponse:
    return CompletionStreamResponse(
        id=head.id, created=head.created, model=head.model, choices=choices, usage=usage_
    )
