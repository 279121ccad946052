"""The OpenAI API's routes: parse the request, call its serving class, return the answer.

Every route is behind admission (shared.auth's tokens, the API keys among them; the generating ones
also per-caller rate limits); errors
are answered in OpenAI's shape (``{"error": {...}}``), request validation errors as 400 as OpenAI does.
``/tokenize`` and ``/detokenize`` are vLLM's (no ``/v1``), behind the same API keys.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from services.inference_gateway.core.limits import Limits
from services.inference_gateway.metrics import REJECTED
from services.inference_gateway.openai.admission import Admission, APIError
from services.inference_gateway.openai.protocol import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorInfo,
    ErrorResponse,
    ModelList,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from services.inference_gateway.openai.serving_chat import OpenAIServingChat
from services.inference_gateway.openai.serving_completions import OpenAIServingCompletion
from services.inference_gateway.openai.serving_engine import Answer
from services.inference_gateway.openai.serving_models import OpenAIServingModels
from services.inference_gateway.openai.serving_tokenization import OpenAIServingTokenization
from services.inference_gateway.router import Router
from shared.auth.http import AuthFailure, authenticator_of


def install_openai_api(app: FastAPI, router: Router, limits: Limits, *, default_max_tokens: int = 16) -> None:
    """Add the OpenAI routes, their admission checks and OpenAI-shaped error bodies to ``app``."""
    admission = Admission(limits)
    # the API keys are tokens of the app's authenticator: on a service, the one its gRPC port uses too
    authenticator_of(app).add_api_keys(limits.api_keys)
    app.exception_handler(AuthFailure)(_auth_failure)
    app.exception_handler(APIError)(_api_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.include_router(
        make_router(
            admission,
            OpenAIServingModels(router),
            OpenAIServingCompletion(router, admission, default_max_tokens),
            OpenAIServingChat(router, admission, default_max_tokens),
            OpenAIServingTokenization(router),
        )
    )


def make_router(
    admission: Admission,
    models: OpenAIServingModels,
    completions: OpenAIServingCompletion,
    chat: OpenAIServingChat,
    tokenization: OpenAIServingTokenization,
) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/models", dependencies=[Depends(admission.authorize)])
    async def list_models() -> ModelList:
        return models.list_models()

    @api.post("/v1/completions", response_model=None, dependencies=[Depends(admission.admit)])
    async def create_completion(request: CompletionRequest) -> Response:
        return _response(await completions.create_completion(request))

    @api.post("/v1/chat/completions", response_model=None, dependencies=[Depends(admission.admit)])
    async def create_chat_completion(request: ChatRequest) -> Response:
        return _response(await chat.create_chat_completion(request))

    @api.post("/tokenize", dependencies=[Depends(admission.authorize)])
    async def tokenize(request: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
        return await tokenization.tokenize(request)

    @api.post("/detokenize", dependencies=[Depends(admission.authorize)])
    async def detokenize(request: DetokenizeRequest) -> DetokenizeResponse:
        return await tokenization.detokenize(request)

    return api


def _response(answer: Answer[BaseModel]) -> Response:
    if isinstance(answer.body, BaseModel):
        return JSONResponse(answer.body.model_dump(), headers=answer.headers)
    return StreamingResponse(answer.body, media_type="text/event-stream", headers=answer.headers)


def _error_response(error: ErrorInfo, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=error).model_dump(), status_code=status, headers=headers)


async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return _error_response(
        ErrorInfo(message=exc.message, type=exc.type, code=exc.code), exc.status, exc.headers
    )


async def _auth_failure(_: Request, exc: AuthFailure) -> JSONResponse:
    REJECTED.labels("auth").inc()
    code = "invalid_api_key" if exc.status_code == 401 else "permission_denied"
    error = ErrorInfo(message=str(exc.detail), type="invalid_request_error", code=code)
    return _error_response(error, exc.status_code, dict(exc.headers or {}))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
    error = ErrorInfo(message="invalid request: " + "; ".join(parts), type="invalid_request_error")
    return _error_response(error, 400)
