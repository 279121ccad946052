"""The OpenAI-compatible HTTP API (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``) over a pool."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.inference_gateway.engine import Delta, Engine, EngineClosed
from services.inference_gateway.pool import ModelNotFound, ModelPool
from services.inference_gateway.sampling import InvalidRequest, SamplingParams


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


def _error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}, status_code=status
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
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    def params(self, default_max_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            max_tokens=self._max_tokens() or default_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(stop),
            seed=self.seed,
        ).validate()

    def _max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def _max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def plain_messages(self) -> list[dict[str, Any]]:
        out = []
        for m in self.messages:
            content = m.content
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
            out.append({"role": m.role, "content": content or ""})
        return out


def _usage(d: Delta) -> dict[str, int]:
    return {
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": d.completion_tokens,
        "total_tokens": d.prompt_tokens + d.completion_tokens,
    }


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _finish(reason: str | None) -> str | None:
    return "stop" if reason == "cancelled" else reason


def install_openai_api(
    app: FastAPI, pool: ModelPool, *, api_key: str | None = None, default_max_tokens: int = 16
) -> None:
    """Add the OpenAI routes, their auth check and OpenAI-shaped error bodies to ``app``."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.type, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
        return _error(400, "invalid request: " + "; ".join(parts), "invalid_request_error")

    if api_key:

        @app.middleware("http")
        async def _auth(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            if request.url.path.startswith("/v1/"):
                given = request.headers.get("authorization", "")
                if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                    return _error(
                        401, "invalid or missing API key", "invalid_request_error", "invalid_api_key"
                    )
            return await call_next(request)

    def engine_for(name: str) -> Engine:
        try:
            return pool.resolve(name)
        except ModelNotFound as exc:
            raise APIError(404, str(exc), "invalid_request_error", "model_not_found") from None

    async def start(
        name: str, ids_of: Callable[[Engine], list[int]], params: SamplingParams
    ) -> AsyncIterator[Delta]:
        # a switch may retire the engine between resolve and submit: resolve again (the new one is up)
        for _ in range(3):
            engine = engine_for(name)
            try:
                it = engine.stream(ids_of(engine), params)
                first = await it.__anext__()
            except EngineClosed:
                continue
            except InvalidRequest as exc:
                raise APIError(400, str(exc), "invalid_request_error") from None
            return _prepend(first, it)
        raise APIError(503, f"model {name!r} is switching versions, retry", "server_error")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [
            {
                "id": n,
                "object": "model",
                "created": 0,
                "owned_by": "puyu",
                "root": s.model_name,
                "version": s.version,
            }
            for n, s in pool.named()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Response | dict[str, Any]:
        params = _params(body, default_max_tokens)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt must not be empty", "invalid_request_error")
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        streams = [await start(body.model, _encoder(p), params) for p in prompts]
        base = {"id": rid, "object": "text_completion", "created": created, "model": body.model}

        if body.stream:

            async def events() -> AsyncIterator[str]:
                usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
                for index, stream in enumerate(streams):
                    async for d in stream:
                        if d.finish_reason == "error":
                            yield _sse({"error": {"message": d.error, "type": "server_error"}})
                            return
                        if d.text or d.finish_reason:
                            yield _sse(
                                {
                                    **base,
                                    "choices": [
                                        {
                                            "index": index,
                                            "text": d.text,
                                            "logprobs": None,
                                            "finish_reason": _finish(d.finish_reason),
                                        }
                                    ],
                                }
                            )
                        if d.finish_reason:
                            usage = {k: usage[k] + v for k, v in _usage(d).items()}
                if body.include_usage:
                    yield _sse({**base, "choices": [], "usage": usage})
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for index, stream in enumerate(streams):
            text, last = await _collect(stream)
            choices.append(
                {"index": index, "text": text, "logprobs": None, "finish_reason": _finish(last.finish_reason)}
            )
            usage = {k: usage[k] + v for k, v in _usage(last).items()}
        return {**base, "choices": choices, "usage": usage}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest) -> Response | dict[str, Any]:
        params = _params(body, default_max_tokens)
        messages = body.plain_messages()
        stream = await start(body.model, lambda e: e.render_chat(messages), params)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "created": created, "model": body.model}

        if body.stream:

            async def events() -> AsyncIterator[str]:
                chunk = {**base, "object": "chat.completion.chunk"}
                yield _sse(
                    {
                        **chunk,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
                last: Delta | None = None
                async for d in stream:
                    last = d
                    if d.finish_reason == "error":
                        yield _sse({"error": {"message": d.error, "type": "server_error"}})
                        return
                    if d.text:
                        yield _sse(
                            {
                                **chunk,
                                "choices": [
                                    {
                                        "index": 0,
                                        "delta": {"content": d.text},
                                        "logprobs": None,
                                        "finish_reason": None,
                                    }
                                ],
                            }
                        )
                if last is not None:
                    yield _sse(
                        {
                            **chunk,
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {},
                                    "logprobs": None,
                                    "finish_reason": _finish(last.finish_reason),
                                }
                            ],
                        }
                    )
                    if body.include_usage:
                        yield _sse({**chunk, "choices": [], "usage": _usage(last)})
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        text, last = await _collect(stream)
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": _finish(last.finish_reason),
                }
            ],
            "usage": _usage(last),
        }


def _encoder(prompt: str) -> Callable[[Engine], list[int]]:
    return lambda engine: engine.encode(prompt)


def _params(body: _Sampling, default_max_tokens: int) -> SamplingParams:
    try:
        return body.params(default_max_tokens)
    except InvalidRequest as exc:
        raise APIError(400, str(exc), "invalid_request_error") from None


async def _prepend(first: Delta, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    try:
        yield first
        if first.finish_reason is None:
            async for d in rest:
                yield d
    finally:
        await rest.aclose()  # type: ignore[attr-defined]  # cancels the engine request if unfinished


async def _collect(stream: AsyncIterator[Delta]) -> tuple[str, Delta]:
    parts: list[str] = []
    last: Delta | None = None
    async for d in stream:
        parts.append(d.text)
        last = d
    assert last is not None
    if last.finish_reason == "error":
        raise APIError(500, last.error or "generation failed", "server_error")
    return "".join(parts), last
