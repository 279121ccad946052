"""Requests and responses of the OpenAI API, as pydantic models (the fields and their order are what
clients of OpenAI's API read; ``None`` fields that OpenAI omits are left out, see ``_OmitNone``).

Where the OpenAI spec leaves behaviour open, vLLM's server is the reference: its sampling extras that
puyu implements are read under vLLM's names (``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``,
``min_tokens``, ``stop_token_ids``), ``tool_choice`` is checked as vLLM checks it, a completions prompt may be token ids, ``/tokenize`` and ``/detokenize`` have vLLM's
shapes, and a field puyu does not know is accepted and named in a warning in the log, as vLLM does
(``OpenAIRequest``), so that clients sending extras of other servers still work.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from services.inference_gateway.core.prompts import Prompt
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams
from services.inference_gateway.core.tool_choice import ToolPlan, plan_tools

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- requests


class OpenAIRequest(BaseModel):
    """A request body: fields puyu does not know are accepted and logged as ignored (as vLLM does),
    never refused and never silently dropped."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="wrap")
    @classmethod
    def _log_unknown_fields(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        result = handler(data)
        if isinstance(data, dict):
            known = {a for name, f in cls.model_fields.items() for a in (name, f.alias) if a}
            if unknown := sorted(data.keys() - known):
                log.warning("fields present in the request but ignored: %s", ", ".join(unknown))
        return result


class StreamOptions(BaseModel):
    include_usage: bool = False


TokenId = Annotated[int, Field(ge=0)]


class SamplingRequest(OpenAIRequest):
    """What completions and chat requests share: the model and how to sample."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, ge=0, le=1)
    top_k: int = Field(default=0, ge=0, description="Extension (as vLLM): 0 is off.")
    min_p: float = Field(default=0.0, ge=0, le=1, description="Extension (as vLLM): 0 is off.")
    repetition_penalty: float = Field(default=1.0, gt=0, description="Extension (as vLLM).")
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = Field(
        default=None, description="Extension (as vLLM): these tokens end the output (not in its text)."
    )
    # OpenAI's: token id (as a JSON key) -> bias in [-100, 100] added to its logit
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(default=False, description="Extension (as vLLM): go on past EOS.")
    min_tokens: int = Field(
        default=0, ge=0, description="Extension (as vLLM): no EOS or stop string before this many tokens."
    )
    user: str | None = None  # OpenAI's end-user id: accepted, not used

    def sampling_params(
        self,
        default_max_tokens: int,
        logprobs: int | None = None,
        prompt_logprobs: bool = False,
        json_schema: str | None = None,
        *,
        echo: bool = False,
        skip_special_tokens: bool = True,
    ) -> SamplingParams:
        """The engine's parameters; ``InvalidRequest`` when they do not hold together."""
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        requested = self.requested_max_tokens()
        return SamplingParams(
            max_tokens=max(default_max_tokens, self.min_tokens) if requested is None else requested,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            stop=tuple(stop),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            logit_bias=self._logit_bias(),
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            json_schema=json_schema,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            skip_special_tokens=skip_special_tokens,
            echo=echo,
            max_tokens_is_default=requested is None,
        ).validate()

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def _logit_bias(self) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` keyed by token id; InvalidRequest naming a key that is no token id."""
        bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            try:
                bias[int(key)] = value
            except ValueError:
                raise InvalidRequest(f"logit_bias keys must be token ids, got {key!r}") from None
        return tuple(sorted(bias.items()))

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingRequest):
    # as OpenAI and vLLM: a text, texts, token ids (lm-evaluation-harness sends these), lists of them
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    # 0 with echo: the prompt is scored (its logprobs), nothing is generated (as vLLM)
    max_tokens: int | None = Field(default=None, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False

    def prompts(self) -> list[Prompt]:
        """The prompts, one per choice group; ``InvalidRequest`` when one is empty."""
        given = self.prompt
        one = isinstance(given, str) or (bool(given) and all(isinstance(t, int) for t in given))
        items = cast("list[str | list[int]]", [given] if one else given)
        if not items or any(not p for p in items):
            raise InvalidRequest(
                "prompt must be a non-empty string or token id list, or a list of non-empty ones"
            )
        return [Prompt(text=p) if isinstance(p, str) else Prompt(ids=tuple(p)) for p in items]


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
                raise InvalidRequest("response_format json_schema needs a json_schema")
            return json.dumps(self.json_schema.schema_ or {"type": "object"})
        return None


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # false: one call at most
    response_format: ResponseFormat | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def plain_messages(self) -> list[dict[str, Any]]:
        """The messages as the chat template reads them: text content only; the arguments of earlier
        tool calls as objects, not JSON text (what tool-use templates expect, as vLLM passes them)."""
        out = []
        for m in self.messages:
            msg = m.model_dump(exclude_none=True)
            if isinstance(m.content, list):  # content parts: keep the text ones
                msg["content"] = "".join(str(p.get("text", "")) for p in m.content if p.get("type") == "text")
            msg.setdefault("content", "")
            if isinstance(msg.get("tool_calls"), list):
                msg["tool_calls"] = [_arguments_as_object(c) for c in msg["tool_calls"]]
            out.append(msg)
        return out

    def tool_plan(self) -> ToolPlan:
        """How ``tools`` are used (``tool_choice``); InvalidRequest naming what does not hold together."""
        plan = plan_tools(self.tools, self.tool_choice, self.parallel_tool_calls)
        if plan.schema is not None and self.response_format and self.response_format.type != "text":
            raise InvalidRequest(
                "tool_choice that forces a call cannot be combined with response_format: "
                "both constrain the output"
            )
        return plan


def _arguments_as_object(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"] or "{}")
    except json.JSONDecodeError:
        return call  # not JSON: the template gets the text as it came
    return {**call, "function": {**function, "arguments": arguments}}


class TokenizeCompletionRequest(OpenAIRequest):
    """``/tokenize`` of a text (vLLM's shape)."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(OpenAIRequest):
    """``/tokenize`` of chat messages rendered with the model's template (vLLM's shape)."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False  # the template adds what the model needs
    return_token_strs: bool = False
    tools: list[dict[str, Any]] | None = None

    def plain_messages(self) -> list[dict[str, Any]]:
        return ChatRequest.model_construct(messages=self.messages).plain_messages()


class DetokenizeRequest(OpenAIRequest):
    model: str | None = None
    tokens: list[TokenId]


# --------------------------------------------------------------------------------------- responses


class _OmitNone(BaseModel):
    """Leaves out the fields named in ``omit_when_none`` while they are None (OpenAI sends them only
    when they have a value), and keeps every other None as ``null``."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if not (v is None and k in self.omit_when_none)}


class ErrorInfo(BaseModel):
    message: str | None
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class StreamErrorInfo(BaseModel):
    message: str | None
    type: str


class StreamError(BaseModel):
    """The last event of a stream whose generation failed."""

    error: StreamErrorInfo


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ModelCard(_OmitNone):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "puyu"
    root: str
    version: int
    quantization: str | None = None  # awq-int4-g128 ...; left out for full-precision weights

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"quantization"})


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# completions


class CompletionLogprobs(BaseModel):
    """The legacy completions ``logprobs`` object: per token its text, logprob, top alternatives and
    offset in the choice's text."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)

    def extend(self, other: CompletionLogprobs) -> None:
        self.tokens += other.tokens
        self.token_logprobs += other.token_logprobs
        self.top_logprobs += other.top_logprobs
        self.text_offset += other.text_offset


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo


class CompletionStreamResponse(_OmitNone):
    omit_when_none = frozenset({"usage"})

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# chat


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object as text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatResponseMessage(_OmitNone):
    omit_when_none = frozenset({"reasoning_content", "tool_calls"})

    role: Literal["assistant"] = "assistant"
    reasoning_content: str | None = None  # the model's thinking, apart from the answer (vLLM's name)
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    created: int
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaFunctionCall(_OmitNone):
    omit_when_none = frozenset({"name", "arguments"})

    name: str | None = None  # on a call's first delta only
    arguments: str | None = None


class DeltaToolCall(_OmitNone):
    """A piece of a streamed call: its first piece carries ``id``, ``type`` and the function's name, every
    later one only more text of the arguments (a client joins the strings of equal ``index``)."""

    omit_when_none = frozenset({"id", "type"})

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(_OmitNone):
    omit_when_none = frozenset({"role", "reasoning_content", "content", "tool_calls"})

    role: Literal["assistant"] | None = None
    reasoning_content: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionStreamResponse(_OmitNone):
    omit_when_none = frozenset({"usage"})

    id: str
    created: int
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


# tokenization


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str
