"""``puyu.inference.v1`` messages to and from the engine's types: what a gateway and a worker exchange."""

from __future__ import annotations

from contracts.proto.puyu.inference.v1 import inference_pb2 as pb
from services.inference_gateway.core.engine import Delta, TokenLogprob
from services.inference_gateway.core.prompts import Prompt
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams


def params_to_proto(p: SamplingParams) -> pb.SamplingParams:
    """The message a worker receives. A default ``max_tokens`` goes as 0 (the worker's default, cut by
    the context as a local one is); scoring only (``max_tokens`` 0) goes as ``score_only``."""
    return pb.SamplingParams(
        max_tokens=0 if p.max_tokens_is_default or p.max_tokens == 0 else p.max_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=p.top_k,
        min_p=p.min_p,
        stop=list(p.stop),
        stop_token_ids=list(p.stop_token_ids),
        logit_bias=dict(p.logit_bias),
        seed=p.seed or 0,
        has_seed=p.seed is not None,
        repetition_penalty=p.repetition_penalty,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        logprobs=p.logprobs or 0,
        has_logprobs=p.logprobs is not None,
        prompt_logprobs=p.prompt_logprobs,
        json_schema=p.json_schema or "",
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
        score_only=p.max_tokens == 0 and not p.max_tokens_is_default,
        keep_special_tokens=not p.skip_special_tokens,
        echo=p.echo,
    )


def params_from_proto(p: pb.SamplingParams, default_max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=0 if p.score_only else p.max_tokens or default_max_tokens,
        max_tokens_is_default=not p.max_tokens and not p.score_only,
        temperature=p.temperature,
        top_p=p.top_p if 0 < p.top_p < 1 else 1.0,
        top_k=p.top_k,
        min_p=p.min_p,
        stop=tuple(p.stop),
        stop_token_ids=tuple(p.stop_token_ids),
        logit_bias=tuple(sorted(p.logit_bias.items())),
        seed=p.seed if p.has_seed else None,
        repetition_penalty=p.repetition_penalty or 1.0,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        logprobs=p.logprobs if p.has_logprobs else None,
        prompt_logprobs=p.prompt_logprobs,
        json_schema=p.json_schema or None,
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
        skip_special_tokens=not p.keep_special_tokens,
        echo=p.echo,
    ).validate()


def prompt_into(request: pb.GenerateRequest, prompt: Prompt) -> None:
    if prompt.ids is not None:
        request.prompt_ids.extend(prompt.ids)
    elif prompt.messages is not None:
        request.chat_json = prompt.chat_json()
    else:
        request.prompt = prompt.text or ""


def prompt_from_request(request: pb.GenerateRequest) -> Prompt:
    """The request's prompt; InvalidRequest when it has none or several."""
    given = [bool(request.prompt), bool(request.prompt_ids), bool(request.chat_json)]
    if sum(given) != 1:
        raise InvalidRequest("a request needs exactly one of prompt, prompt_ids or chat_json")
    if request.prompt_ids:
        return Prompt(ids=tuple(request.prompt_ids))
    if request.chat_json:
        try:
            return Prompt.from_chat_json(request.chat_json)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    return Prompt(text=request.prompt)


def _lp_to_proto(t: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        token_id=t.token_id,
        token=t.token,
        logprob=t.logprob,
        top=[pb.TopLogprob(token=a, logprob=v) for a, v in t.top],
    )


def _lp_from_proto(t: pb.TokenLogprob) -> TokenLogprob:
    return TokenLogprob(t.token_id, t.token, t.logprob, tuple((a.token, a.logprob) for a in t.top))


def delta_to_chunk(d: Delta, model: str, worker: str) -> pb.GenerateChunk:
    chunk = pb.GenerateChunk(
        text=d.text,
        completion_tokens=d.completion_tokens,
        prompt_tokens=d.prompt_tokens,
        finish_reason=d.finish_reason or "",
        model=model,
        logprobs=[_lp_to_proto(t) for t in d.logprobs],
        cached_tokens=d.cached_tokens,
        worker=d.worker or worker,
    )
    if d.prompt_logprobs is not None:
        chunk.has_prompt_logprobs = True
        chunk.prompt_logprobs.extend(_lp_to_proto(t) for t in d.prompt_logprobs[1:] if t is not None)
        chunk.prompt_first_token = d.prompt_first_token or ""
    if d.prompt_text is not None:
        chunk.has_prompt_text = True
        chunk.prompt_text = d.prompt_text
    return chunk


def chunk_to_delta(c: pb.GenerateChunk) -> Delta:
    prompt_lp: tuple[TokenLogprob | None, ...] | None = None
    if c.has_prompt_logprobs:
        prompt_lp = (None, *(_lp_from_proto(t) for t in c.prompt_logprobs))
    return Delta(
        text=c.text,
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        finish_reason=c.finish_reason or None,
        logprobs=tuple(_lp_from_proto(t) for t in c.logprobs),
        prompt_logprobs=prompt_lp,
        cached_tokens=c.cached_tokens,
        prompt_first_token=c.prompt_first_token if c.has_prompt_logprobs else None,
        worker=c.worker,
        prompt_text=c.prompt_text if c.has_prompt_text else None,
    )
