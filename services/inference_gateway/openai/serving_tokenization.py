"""``/tokenize`` and ``/detokenize`` (vLLM's shapes): a text, or chat messages rendered with the model's
template, to token ids and back, with the tokenizer of a model this process serves.

The tokenizer lives with the engine: a model served only by worker processes has none here, and is
answered 501 (the inference contract carries generations, not tokenizations).
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.inference_gateway.core.engine_api import ServingEngine
from services.inference_gateway.core.pool import ModelNotFound
from services.inference_gateway.core.prompts import check_prompt_ids
from services.inference_gateway.core.sampling import InvalidRequest
from services.inference_gateway.openai.admission import APIError
from services.inference_gateway.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from services.inference_gateway.openai.serving_engine import validated
from services.inference_gateway.router import Router


class OpenAIServingTokenization:
    def __init__(self, router: Router) -> None:
        self.router = router

    async def tokenize(self, request: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
        engine = self._engine(request.model)
        ids = await asyncio.to_thread(validated, lambda: _token_ids(engine, request))
        strs = list(engine.tokenizer.convert_ids_to_tokens(ids)) if request.return_token_strs else None
        return TokenizeResponse(
            count=len(ids), max_model_len=engine.max_positions, tokens=ids, token_strs=strs
        )

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        engine = self._engine(request.model)
        if request.tokens:
            validated(lambda: check_prompt_ids(request.tokens, vocab_size=engine.vocab_size))
        return DetokenizeResponse(prompt=engine.tokenizer.decode(request.tokens))

    def _engine(self, name: str | None) -> ServingEngine:
        """The engine of ``name`` in this process; without a name, the one model this process serves."""
        pool = self.router.pool
        local = pool.named() if pool is not None else []
        if name is None:
            engines = {id(s.engine): s.engine for _, s in local}
            if len(engines) != 1:
                raise APIError(
                    400, "model is required: more than one model is served", "invalid_request_error"
                )
            return next(iter(engines.values()))
        try:
            if pool is None:
                raise ModelNotFound(name, [])
            return pool.resolve(name)
        except ModelNotFound as exc:
            if name in self.router.served_names():
                raise APIError(
                    501,
                    f"model {name!r} is served by worker processes only: no tokenizer here",
                    "server_error",
                ) from None
            raise APIError(404, str(exc), "invalid_request_error", "model_not_found") from None


def _token_ids(engine: ServingEngine, request: TokenizeCompletionRequest | TokenizeChatRequest) -> list[int]:
    tokenizer = engine.tokenizer
    if isinstance(request, TokenizeCompletionRequest):
        return list(tokenizer(request.prompt, add_special_tokens=request.add_special_tokens)["input_ids"])
    if request.continue_final_message and request.add_generation_prompt:
        raise InvalidRequest("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequest(f"model {engine.name!r} has no chat template")
    kwargs: dict[str, Any] = {
        "tools": request.tools or None,
        "add_generation_prompt": request.add_generation_prompt,
        "continue_final_message": request.continue_final_message,
        "tokenize": False,
    }
    try:
        text = tokenizer.apply_chat_template(request.plain_messages(), **kwargs)
    except Exception as exc:  # a template that rejects these messages (roles, order) says why
        raise InvalidRequest(f"the chat template of {engine.name!r} rejected the messages: {exc}") from None
    return list(tokenizer(text, add_special_tokens=request.add_special_tokens)["input_ids"])
