"""``/v1/chat/completions``: messages in, an assistant message out (streamed or whole), with logprobs,
reasoning apart (``core.reasoning``), tool calls (``core.tools``: read from the model's own form, or
forced by ``tool_choice`` through guided decoding; streamed piece by piece as OpenAI streams them) and
JSON output constrained by ``response_format`` (``core.guided``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

from services.inference_gateway.core.engine import TokenLogprob
from services.inference_gateway.core.prompts import Prompt
from services.inference_gateway.core.tools import ToolCallDelta
from services.inference_gateway.openai.accumulator import (
    ChatChoiceAccumulator,
    chat_logprobs,
    usage,
)
from services.inference_gateway.openai.admission import APIError
from services.inference_gateway.openai.protocol import (
    ChatChoice,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    ChatRequest,
    ChatResponseMessage,
    ChatStreamChoice,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
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


class OpenAIServingChat(OpenAIServing):
    async def create_chat_completion(self, request: ChatRequest) -> Answer[ChatCompletionResponse]:
        top_logprobs = (request.top_logprobs or 0) if request.logprobs else None
        plan = validated(request.tool_plan)
        schema = validated(request.response_format.schema_text) if request.response_format else None
        # tool-call markers may be special tokens (InternLM2's): keep them in the text while calls are
        # read in the model's own form, as LMDeploy's and vLLM's parsers do; a forced call is guided JSON
        params = validated(
            lambda: request.sampling_params(
                self.default_max_tokens,
                top_logprobs,
                False,
                plan.schema or schema,
                skip_special_tokens=not plan.reads_calls or plan.schema is not None,
            )
        )
        started = time.monotonic()
        prompt = Prompt(messages=request.plain_messages(), tools=request.tools)
        streams, headers = await self.open_choices(
            request.model, [prompt], params, request.n, started, not request.stream
        )
        head = ResponseHead.new("chatcmpl", request.model)
        choices = [ChatChoiceAccumulator(plan, stream=request.stream) for _ in streams]
        if request.stream:
            return Answer(self._stream(request, head, streams, choices, started), headers)
        return Answer(await self._whole(request, head, streams, choices, started), headers)

    async def _stream(
        self,
        request: ChatRequest,
        head: ResponseHead,
        streams: list[PeekableStream],
        choices: list[ChatChoiceAccumulator],
        started: float,
    ) -> AsyncIterator[str]:
        for i in range(len(choices)):
            yield sse(_chunk(head, i, DeltaMessage(role="assistant", content="")))
        async for i, delta in self.admission.timed(merge_streams(streams), request.model, started):
            if delta.finish_reason == "error":
                yield stream_error(delta)
                return
            reasoning, content, calls = choices[i].add(delta)
            if reasoning:
                yield sse(_chunk(head, i, DeltaMessage(reasoning_content=reasoning)))
            if content or delta.logprobs:
                logprobs = delta.logprobs if request.logprobs else ()
                yield sse(_chunk(head, i, DeltaMessage(content=content), logprobs=logprobs))
            if calls:
                yield sse(_chunk(head, i, DeltaMessage(tool_calls=_call_deltas(calls))))
            if delta.finish_reason is None:
                continue
            reasoning, held_back, calls = choices[i].streamed_tail()
            if reasoning:
                yield sse(_chunk(head, i, DeltaMessage(reasoning_content=reasoning)))
            if held_back:
                yield sse(_chunk(head, i, DeltaMessage(content=held_back)))
            if calls:
                yield sse(_chunk(head, i, DeltaMessage(tool_calls=_call_deltas(calls))))
            yield sse(_chunk(head, i, DeltaMessage(), finish=choices[i].finish_reason(choices[i].called)))
        if request.include_usage:
            yield sse(_usage_chunk(head, usage(choices, request.n)))
        yield DONE

    async def _whole(
        self,
        request: ChatRequest,
        head: ResponseHead,
        streams: list[PeekableStream],
        choices: list[ChatChoiceAccumulator],
        started: float,
    ) -> ChatCompletionResponse:
        deltas = self.admission.timed(merge_streams(streams), request.model, started, streaming=False)
        async for i, delta in deltas:
            if delta.finish_reason == "error":
                raise APIError(500, delta.error or "generation failed", "server_error")
            choices[i].add(delta)
        return ChatCompletionResponse(
            id=head.id,
            created=head.created,
            model=head.model,
            choices=[_whole_choice(i, c, request.logprobs) for i, c in enumerate(choices)],
            usage=usage(choices, request.n),
        )


def _whole_choice(index: int, choice: ChatChoiceAccumulator, with_logprobs: bool) -> ChatChoice:
    reasoning, content, calls = choice.whole()
    message = ChatResponseMessage(
        reasoning_content=reasoning,
        content=content or (None if calls else ""),
        tool_calls=[
            ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls
        ]
        or None,
    )
    return ChatChoice(
        index=index,
        message=message,
        logprobs=chat_logprobs(choice.logprobs) if with_logprobs else None,
        finish_reason=choice.finish_reason(bool(calls)),
    )


def _call_deltas(calls: list[ToolCallDelta]) -> list[DeltaToolCall]:
    """OpenAI's streamed ``tool_calls``: a call's first piece with its id, type and name."""
    return [
        DeltaToolCall(
            index=c.index,
            id=c.id,
            type="function" if c.id is not None else None,
            function=DeltaFunctionCall(name=c.name, arguments=c.arguments),
        )
        for c in calls
    ]


def _chunk(
    head: ResponseHead,
    index: int,
    delta: DeltaMessage,
    *,
    finish: str | None = None,
    logprobs: Sequence[TokenLogprob] = (),
) -> ChatCompletionStreamResponse:
    choice = ChatStreamChoice(
        index=index, delta=delta, logprobs=chat_logprobs(logprobs) if logprobs else None, finish_reason=finish
    )
    return ChatCompletionStreamResponse(id=head.id, created=head.created, model=head.model, choices=[choice])


def _usage_chunk(head: ResponseHead, usage_: UsageInfo) -> ChatCompletionStreamResponse:
    return ChatCompletionStreamResponse(
        id=head.id, created=head.created, model=head.model, choices=[], usage=usage_
    )
