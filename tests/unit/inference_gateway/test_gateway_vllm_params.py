"""How puyu's sampling parameters map onto vLLM's (``core/vllm_engine/params.py``; plain data, no vLLM).

What each mapping must give is vLLM's documented meaning of its fields (``vllm.SamplingParams``):
greedy is temperature 0, ``top_p`` lies in (0, 1], ``prompt_logprobs`` is a count of alternatives,
at least one token is generated. The end-to-end comparison with puyu's engine and transformers runs
vLLM itself (tests/integration/test_gateway_vllm_engine.py, test_gateway_workers.py).
"""

from __future__ import annotations

import pytest

from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams
from services.inference_gateway.core.vllm_engine.params import vllm_sampling_kwargs


def test_greedy_and_off_values_become_vllms() -> None:
    kw = vllm_sampling_kwargs(SamplingParams(temperature=0.005, top_p=0.0, top_k=0), 4, 256)
    assert (kw["temperature"], kw["top_p"], kw["top_k"]) == (0.0, 1.0, 0)
    kw = vllm_sampling_kwargs(SamplingParams(temperature=0.7, top_p=0.9, top_k=5, seed=3), 4, 256)
    assert (kw["temperature"], kw["top_p"], kw["top_k"], kw["seed"]) == (0.7, 0.9, 5, 3)


def test_a_default_max_tokens_is_cut_by_the_context_a_clients_is_not() -> None:
    default = SamplingParams(max_tokens=16, max_tokens_is_default=True)
    assert vllm_sampling_kwargs(default, 250, 256)["max_tokens"] == 6
    assert vllm_sampling_kwargs(SamplingParams(max_tokens=16), 200, 256)["max_tokens"] == 16


def test_scoring_only_generates_one_token_without_logprobs() -> None:
    kw = vllm_sampling_kwargs(SamplingParams(max_tokens=0, prompt_logprobs=True, logprobs=2), 4, 256)
    assert (kw["max_tokens"], kw["logprobs"], kw["prompt_logprobs"]) == (1, None, 2)
    kw = vllm_sampling_kwargs(SamplingParams(max_tokens=4, prompt_logprobs=True), 4, 256)
    assert kw["prompt_logprobs"] == 0  # the prompt tokens' own logprobs, no alternatives


def test_options_pass_through() -> None:
    params = SamplingParams(
        stop=("\n", "END"),
        ignore_eos=True,
        min_tokens=3,
        repetition_penalty=1.2,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        skip_special_tokens=False,
        logprobs=0,
    )
    kw = vllm_sampling_kwargs(params, 4, 256)
    assert kw["stop"] == ["\n", "END"] and kw["ignore_eos"] and kw["min_tokens"] == 3
    assert (kw["repetition_penalty"], kw["presence_penalty"], kw["frequency_penalty"]) == (1.2, 0.5, -0.5)
    assert kw["skip_special_tokens"] is False and kw["logprobs"] == 0 and kw["prompt_logprobs"] is None
    assert vllm_sampling_kwargs(SamplingParams(), 4, 256)["stop"] is None


@pytest.mark.parametrize(
    ("schema", "says"), [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object")]
)
def test_a_bad_schema_is_refused_before_vllm_sees_it(schema: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        vllm_sampling_kwargs(SamplingParams(json_schema=schema), 4, 256)
    assert vllm_sampling_kwargs(SamplingParams(json_schema='{"type": "object"}'), 4, 256)["json_schema"] == {
        "type": "object"
    }
