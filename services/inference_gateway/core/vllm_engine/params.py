"""puyu's ``SamplingParams`` as the keywords of vLLM's ``SamplingParams`` (plain data: no vLLM import).

What differs and how it is bridged:
- greedy: puyu samples greedily below ``MIN_TEMPERATURE``; vLLM at temperature 0, so it gets 0;
- ``top_p`` 0 means off in puyu (as 1 does); vLLM wants a value in (0, 1];
- a default ``max_tokens`` (not the client's) is cut to what the context leaves, as puyu's engine
  stops a sequence at the context's end;
- scoring only (``max_tokens`` 0, with prompt logprobs or echo): vLLM generates at least one token,
  so one is generated and dropped from the output (``DeltaMaker``);
- ``prompt_logprobs`` is a flag in puyu with ``logprobs`` alternatives; vLLM takes their count;
- ``echo`` is done by the adapter (the prompt decoded on the first delta), as puyu's engine does it;
- ``json_schema`` goes to vLLM's structured outputs (xgrammar), ``skip_special_tokens`` as it is;
- ``min_p``, ``stop_token_ids`` and ``logit_bias`` mean what vLLM's mean (puyu follows vLLM there).
"""

from __future__ import annotations

import json
from typing import Any

from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams


def scoring_only(params: SamplingParams) -> bool:
    return params.max_tokens == 0


def vllm_sampling_kwargs(params: SamplingParams, prompt_tokens: int, max_positions: int) -> dict[str, Any]:
    """Keywords for ``vllm.SamplingParams`` asking what ``params`` asks (validated and checked against
    the context by the caller); InvalidRequest for what vLLM cannot do as asked."""
    max_tokens = params.max_tokens
    if params.max_tokens_is_default:
        max_tokens = min(max_tokens, max_positions - prompt_tokens)
    kwargs: dict[str, Any] = {
        "max_tokens": max(1, max_tokens),
        "min_tokens": params.min_tokens,
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": params.top_p if 0 < params.top_p < 1 else 1.0,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "seed": params.seed,
        "stop": list(params.stop) or None,
        "stop_token_ids": list(params.stop_token_ids) or None,
        "logit_bias": dict(params.logit_bias) or None,
        "repetition_penalty": params.repetition_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "ignore_eos": params.ignore_eos,
        "skip_special_tokens": params.skip_special_tokens,
        "logprobs": None if scoring_only(params) else params.logprobs,
        "prompt_logprobs": (params.logprobs or 0) if params.prompt_logprobs else None,
    }
    if params.json_schema is not None:
        kwargs["json_schema"] = _schema(params.json_schema)
    return kwargs


def _schema(raw: str) -> dict[str, Any]:
    """The JSON schema of ``response_format`` as an object; InvalidRequest before any compute otherwise."""
    try:
        schema = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"json_schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise InvalidRequest(f"json_schema must be a JSON object, got {type(schema).__name__}")
    return schema
