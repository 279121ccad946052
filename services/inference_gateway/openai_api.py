"""The OpenAI-compatible HTTP API (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``) over a pool.

Streams are Server-Sent Events with ``stream_options.include_usage``; ``n > 1`` runs n sequences
(their prompt blocks come from the prefix cache); logprobs and echo follow the OpenAI shapes; tools
produce OpenAI ``tool_calls``, streamed whole (``tools.ToolStream``). Admission (API keys, per-key
rate limits → 429, queue limits → 503 with Retry-After, timeouts) is in ``admission``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.inference_gateway.admission import Admission, APIError, Limits
from services.inference_gateway.core.engine import Delta, TokenLogprob
from services.inference_gateway.core.prompts import Prompt
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams
from services.inference_gateway.core.tools import ToolStream, parse_tool_calls
from services.inference_gateway.metrics import observe_delta
from services.inference_gateway.pool import ModelNotFound, ModelPool
from services.inference_gateway.router import NoWorker, Overloaded, Router


def _error(
    status: int, message: str, type_: str, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        status_code=status,
        headers=headers,
    )


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, ge=0, le=1)
    top_k: int = Field(default=0, ge=0, description="Extension (as vLLM): 0 is off.")
    repetition_penalty: float = Field(default=1.0, gt=0, description="Extension (as vLLM).")
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def params(
        self,
        default_max_tokens: int,
        logprobs: int | None = None,
        prompt_logprobs: bool = False,
        json_schema: str | None = None,
    ) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            max_tokens=self._max_tokens() or default_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(stop),
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            json_schema=json_schema,
        ).validate()

    def _max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None

    def schema_text(self) -> str | None:
        """The JSON schema the output must match, None for free text."""
        if self.type == "json_object":
            return json.dumps({"type": "object"})
        if self.type == "json_schema":
            if self.json_schema is None:
                raise APIError(
                    400, "response_format json_schema needs a json_schema", "invalid_request_error"
                )
            return json.dumps(self.json_schema.schema_ or {"type": "object"})
        return None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None

    def _max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def plain_messages(self) -> list[dict[str, Any]]:
        out = []
        for m in self.messages:
            msg = m.model_dump(exclude_none=True)
            if isinstance(m.content, list):  # content parts: keep the text ones
                msg["content"] = "".join(str(p.get("text", "")) for p in m.content if p.get("type") == "text")
            msg.setdefault("content", "")
            out.append(msg)
        return out

    def tool_names(self) -> set[str]:
        if not self.tools or self.tool_choice == "none":
            return set()
        names = {
            t.get("function", {}).get("name") for t in self.tools if t.get("type", "function") == "function"
        }
        return {n for n in names if n}


def _usage(last: list[Delta], n: int = 1) -> dict[str, Any]:
    prompt = sum(d.prompt_tokens for d in last) // n  # each prompt counted once, not once per choice
    completion = sum(d.completion_tokens for d in last)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": max((d.cached_tokens for d in last), default=0)},
    }


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _finish(reason: str | None) -> str | None:
    return "stop" if reason == "cancelled" else reason


def _chat_lp(lps: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> list[dict[str, Any]]:
    return [
        {
            "token": t.token,
            "logprob": t.logprob,
            "bytes": list(t.token.encode()),
            "top_logprobs": [{"token": a, "logprob": v, "bytes": list(a.encode())} for a, v in t.top],
        }
        for t in lps
    ]


class _CompletionLp:
    """Accumulates the legacy completions ``logprobs`` object (tokens, token_logprobs, top_logprobs, text_offset)."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.obj: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }

    def add(
        self, lps: tuple[TokenLogprob | None, ...] | list[TokenLogprob], tokens: list[str] | None = None
    ) -> dict[str, list[Any]]:
        part: dict[str, list[Any]] = {k: [] for k in self.obj}
        for i, t in enumerate(lps):
            token = t.token if t is not None else (tokens[i] if tokens else "")
            part["tokens"].append(token)
            part["token_logprobs"].append(t.logprob if t is not None else None)
            part["top_logprobs"].append(dict(t.top) if t is not None else None)
            part["text_offset"].append(self.offset)
            self.offset += len(token)
        for k, v in part.items():
            self.obj[k].extend(v)
        return part


def install_openai_api(
    app: FastAPI,
    pool: ModelPool | Router,
    *,
    api_key: str | None = None,
    default_max_tokens: int = 16,
    limits: Limits | None = None,
) -> Admission:
    """Add the OpenAI routes, their admission checks and OpenAI-shaped error bodies to ``app``."""
    limits = limits or Limits()
    if api_key and api_key not in limits.api_keys:
        limits.api_keys = (*limits.api_keys, api_key)
    admission = Admission(limits)
    router = pool if isinstance(pool, Router) else Router(pool, max_queue=limits.max_queue)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.type, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
        return _error(400, "invalid request: " + "; ".join(parts), "invalid_request_error")

    async def start(
        name: str, prompt: Prompt, params: SamplingParams, t0: float, whole: bool
    ) -> AsyncIterator[Delta]:
        try:
            return await router.open(name, prompt, params, whole=whole, timeout=admission.time_left(t0))
        except ModelNotFound as exc:
            raise APIError(404, str(exc), "invalid_request_error", "model_not_found") from None
        except InvalidRequest as exc:
            raise APIError(400, str(exc), "invalid_request_error") from None
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

    async def start_n(
        name: str, prompt: Prompt, params: SamplingParams, n: int, t0: float, whole: bool
    ) -> tuple[list[_Peek], dict[str, str]]:
        """The n streams of one request, and the response header naming where the first one runs."""
        streams = []
        try:
            for i in range(n):  # distinct seeds, so n seeded samples differ yet reproduce
                p = params if params.seed is None or i == 0 else _reseed(params, params.seed + i)
                streams.append(_Peek(await start(name, prompt, p, t0, whole)))
            worker = await streams[0].peek()
        except BaseException:
            for s in streams:
                await s.aclose()
            raise
        return streams, {"X-Puyu-Worker": worker}

    @app.get("/v1/models", dependencies=[Depends(admission.authorize)])
    async def list_models() -> dict[str, Any]:
        entries = {e.name: e for e in reversed(router.models())}  # a name once, this process's first
        data = [
            {
                "id": e.name,
                "object": "model",
                "created": 0,
                "owned_by": "puyu",
                "root": e.model_name,
                "version": e.version,
            }
            for e in sorted(entries.values(), key=lambda e: e.name)
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/completions", response_model=None)
    async def completions(
        body: CompletionRequest, key: str = Depends(admission.admit)
    ) -> Response | dict[str, Any]:
        params = _params(
            body.params, default_max_tokens, body.logprobs, body.echo and body.logprobs is not None
        )
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or any(not p for p in prompts):
            raise APIError(
                400, "prompt must be a non-empty string or list of non-empty strings", "invalid_request_error"
            )
        rid, created, t0 = f"cmpl-{uuid.uuid4().hex}", int(time.time()), time.monotonic()
        streams: list[_Peek] = []
        headers: dict[str, str] = {}
        try:
            for p in prompts:
                got, h = await start_n(body.model, Prompt(text=p), params, body.n, t0, not body.stream)
                streams += got
                headers = headers or h
        except BaseException:
            for st in streams:
                await st.aclose()
            raise
        base = {"id": rid, "object": "text_completion", "created": created, "model": body.model}
        prompt_of = [p for p in prompts for _ in range(body.n)]
        lp_acc = [_CompletionLp(len(p) if body.echo else 0) for p in prompt_of]

        def head(i: int, d: Delta) -> tuple[str, dict[str, list[Any]] | None]:
            """Echoed prompt text and prompt logprobs, for the first delta of choice ``i``."""
            if not body.echo:
                return "", None
            lp = None
            if body.logprobs is not None and d.prompt_logprobs is not None:
                lp_acc[i].offset = 0
                lp = lp_acc[i].add(d.prompt_logprobs, [d.prompt_first_token or ""])
                lp_acc[i].offset = len(prompt_of[i])
            return prompt_of[i], lp

        if body.stream:

            async def events() -> AsyncIterator[str]:
                lasts: list[Delta] = []
                seen: set[int] = set()
                async for i, d in admission.timed(_merge(streams), body.model, t0):
                    if d.finish_reason == "error":
                        yield _sse({"error": {"message": d.error, "type": "server_error"}})
                        return
                    text, lp = "", None
                    if i not in seen:
                        seen.add(i)
                        text, lp = head(i, d)
                    if body.logprobs is not None and d.logprobs:
                        part = lp_acc[i].add(d.logprobs)
                        lp = {k: (lp or {}).get(k, []) + v for k, v in part.items()}
                    text += d.text
                    if text or d.finish_reason or lp:
                        choice = {
                            "index": i,
                            "text": text,
                            "logprobs": lp,
                            "finish_reason": _finish(d.finish_reason),
                        }
                        yield _sse({**base, "choices": [choice]})
                    if d.finish_reason:
                        lasts.append(d)
                if body.include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(lasts, body.n)})
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

        choices: list[dict[str, Any]] = [{} for _ in streams]
        texts = [""] * len(streams)
        lasts: list[Delta] = []
        async for i, d in admission.timed(_merge(streams), body.model, t0, streaming=False):
            if d.finish_reason == "error":
                raise APIError(500, d.error or "generation failed", "server_error")
            if not choices[i]:
                choices[i] = {"index": i}
                texts[i], _ = head(i, d)
            texts[i] += d.text
            if body.logprobs is not None:
                lp_acc[i].add(d.logprobs)
            if d.finish_reason:
                lasts.append(d)
                choices[i].update(
                    text=texts[i],
                    logprobs=lp_acc[i].obj if body.logprobs is not None else None,
                    finish_reason=_finish(d.finish_reason),
                )
        return JSONResponse({**base, "choices": choices, "usage": _usage(lasts, body.n)}, headers=headers)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, key: str = Depends(admission.admit)) -> Response | dict[str, Any]:
        top = (body.top_logprobs or 0) if body.logprobs else None
        schema = body.response_format.schema_text() if body.response_format else None
        params = _params(body.params, default_max_tokens, top, False, schema)
        messages, tools, names = body.plain_messages(), body.tools, body.tool_names()
        t0 = time.monotonic()
        prompt = Prompt(messages=messages, tools=tools)
        streams, headers = await start_n(body.model, prompt, params, body.n, t0, not body.stream)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "created": created, "model": body.model}

        if body.stream:

            async def events() -> AsyncIterator[str]:
                chunk = {**base, "object": "chat.completion.chunk"}

                def emit(i: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> str:
                    lpo = {"content": _chat_lp(lp)} if lp else None
                    return _sse(
                        {
                            **chunk,
                            "choices": [
                                {"index": i, "delta": delta, "logprobs": lpo, "finish_reason": finish}
                            ],
                        }
                    )

                for i in range(len(streams)):
                    yield emit(i, {"role": "assistant", "content": ""})
                parsers = [ToolStream(names) for _ in streams]
                lasts: list[Delta] = []
                async for i, d in admission.timed(_merge(streams), body.model, t0):
                    if d.finish_reason == "error":
                        yield _sse({"error": {"message": d.error, "type": "server_error"}})
                        return
                    text = parsers[i].feed(d.text) if names else d.text
                    if text or d.logprobs:
                        yield emit(i, {"content": text}, lp=d.logprobs if body.logprobs else None)
                    if d.finish_reason is None:
                        continue
                    lasts.append(d)
                    finish = _finish(d.finish_reason)
                    if names:
                        rest, calls = parsers[i].finish()
                        if rest:
                            yield emit(i, {"content": rest})
                        if calls:
                            yield emit(i, {"tool_calls": [c.openai(k) for k, c in enumerate(calls)]})
                            finish = "tool_calls"
                    yield emit(i, {}, finish)
                if body.include_usage:
                    yield _sse({**chunk, "choices": [], "usage": _usage(lasts, body.n)})
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

        texts = [""] * len(streams)
        lps: list[list[TokenLogprob]] = [[] for _ in streams]
        choices: list[dict[str, Any]] = [{} for _ in streams]
        lasts = []
        async for i, d in admission.timed(_merge(streams), body.model, t0, streaming=False):
            if d.finish_reason == "error":
                raise APIError(500, d.error or "generation failed", "server_error")
            texts[i] += d.text
            lps[i] += d.logprobs
            if d.finish_reason is None:
                continue
            lasts.append(d)
            content, calls = parse_tool_calls(texts[i], names) if names else (texts[i], [])
            message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
            if calls:
                message["tool_calls"] = [c.openai() for c in calls]
            choices[i] = {
                "index": i,
                "message": message,
                "logprobs": {"content": _chat_lp(lps[i])} if body.logprobs else None,
                "finish_reason": "tool_calls" if calls else _finish(d.finish_reason),
            }
        return JSONResponse(
            {**base, "object": "chat.completion", "choices": choices, "usage": _usage(lasts, body.n)},
            headers=headers,
        )

    return admission


def _reseed(params: SamplingParams, seed: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, seed=seed)


def _params(make: Callable[..., SamplingParams], *args: Any) -> SamplingParams:
    try:
        return make(*args)
    except InvalidRequest as exc:
        raise APIError(400, str(exc), "invalid_request_error") from None


class _Peek:
    """A started stream whose first delta can be looked at (for the worker header) before it is consumed."""

    def __init__(self, stream: AsyncIterator[Delta]) -> None:
        self._stream = stream
        self._first: Delta | None = None

    async def peek(self) -> str:
        if self._first is None:
            self._first = await anext(self._stream)
        return self._first.worker

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delta]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            if first.finish_reason is not None:
                return
        async for d in self._stream:
            yield d

    async def aclose(self) -> None:
        await self._stream.aclose()  # type: ignore[attr-defined]  # cancels the generation if unfinished


async def _merge(streams: list[_Peek]) -> AsyncIterator[tuple[int, Delta]]:
    """Interleave the choices' streams as their deltas come; closing this closes (cancels) them all."""
    if len(streams) == 1:
        try:
            async for d in streams[0]:
                observe_delta(d)
                yield 0, d
        finally:
            await streams[0].aclose()
        return
    q: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, s: _Peek) -> None:
        try:
            async for d in s:
                await q.put((i, d))
        except BaseException as exc:
            await q.put((i, exc))
        finally:
            await q.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    open_ = len(tasks)
    try:
        while open_:
            i, item = await q.get()
            if item is None:
                open_ -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                observe_delta(item)
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            await s.aclose()
