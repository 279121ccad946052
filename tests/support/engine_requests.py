"""The same requests through any serving engine (puyu's ``Engine``, ``VllmEngine``), as plain JSON.

``run_requests(engine, requests)`` runs each request (``{"prompt_ids": [...], "params": {...}}``, the
fields of ``SamplingParams``) and returns what came back: the whole output, logprobs, prompt logprobs,
or the refusal. ``python -m tests.support.engine_requests`` does it on vLLM in the Python it runs in
(``.venv-vllm``): the model folder and the requests as JSON on stdin, the results as the last line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from services.inference_gateway.core.engine.output import TokenLogprob
from services.inference_gateway.core.engine_api import ServingEngine
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams


def _lp(t: TokenLogprob | None) -> list[Any] | None:
    return None if t is None else [t.token_id, t.token, t.logprob, [list(a) for a in t.top]]


def _tuples(value: Any) -> Any:
    """JSON lists as the tuples ``SamplingParams`` holds (``stop``, ``stop_token_ids``, ``logit_bias``)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


async def _one(engine: ServingEngine, request: dict[str, Any]) -> dict[str, Any]:
    params = SamplingParams(**{k: _tuples(v) for k, v in request["params"].items()})
    try:
        deltas = [d async for d in engine.stream(list(request["prompt_ids"]), params)]
    except InvalidRequest as exc:
        return {"refused": str(exc)}
    last = deltas[-1]
    prompt_lp = next((d.prompt_logprobs for d in deltas if d.prompt_logprobs is not None), None)
    return {
        "text": "".join(d.text for d in deltas),
        "finish_reason": last.finish_reason,
        "error": last.error,
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "logprobs": [_lp(t) for d in deltas for t in d.logprobs],
        "prompt_logprobs": None if prompt_lp is None else [_lp(t) for t in prompt_lp],
        "prompt_text": next((d.prompt_text for d in deltas if d.prompt_text is not None), None),
    }


def run_requests(engine: ServingEngine, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [await _one(engine, r) for r in requests]

    return asyncio.run(run())


def main() -> None:
    from services.inference_gateway.core.vllm_engine.engine import VllmEngine

    job = json.load(sys.stdin)
    engine = VllmEngine.load(job["model"], dtype="float32", vllm_args={"enforce_eager": True})
    try:
        results = run_requests(engine, job["requests"])
    finally:
        engine.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
