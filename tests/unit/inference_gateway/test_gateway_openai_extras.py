"""What the OpenAI API does beyond OpenAI's spec, as vLLM does it: the engine's ``ignore_eos``,
``min_tokens``, scoring-only ``max_tokens`` 0 and context refusals; InternLM2 tool calls and
``<think>`` reasoning, whole and streamed; request bodies with token-id prompts and unknown fields."""

import json
import logging
from pathlib import Path

import pytest
import torch

from services.inference_gateway.core.engine import Engine
from services.inference_gateway.core.reasoning import ReasoningStream, split_reasoning
from services.inference_gateway.core.sampling import InvalidRequest, SamplingParams, check_context
from services.inference_gateway.core.tool_choice import ToolPlan
from services.inference_gateway.core.tools import ToolParser, parse_tool_calls
from services.inference_gateway.openai.protocol import ChatRequest, CompletionRequest

NAMES = ToolPlan(frozenset({"get_weather"}))
INTERNLM2 = (
    '<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Velm"}}<|action_end|>'
)


@pytest.fixture(scope="module")
def engine(tiny_model: Path):
    eng = Engine.load(tiny_model, max_batch_size=4, dtype=torch.float32).start()
    yield eng
    eng.close()


def _greedy_first(engine: Engine, ids: list[int]) -> int:
    with torch.no_grad():
        return int(engine.model(torch.tensor([ids])).logits[0, -1].argmax())


async def test_min_tokens_and_ignore_eos_hold_off_the_end(engine: Engine) -> None:
    ids = engine.encode("The river")
    eos, engine.eos_ids = engine.eos_ids, {_greedy_first(engine, ids)}  # greedy ends at once...
    try:
        greedy = SamplingParams(max_tokens=6, temperature=0)
        assert (await engine.generate(ids, greedy)).completion_tokens == 0
        # ...unless min_tokens masks the end (another token is chosen) or ignore_eos runs past it
        held = await engine.generate(ids, SamplingParams(max_tokens=6, temperature=0, min_tokens=3))
        assert held.completion_tokens >= 3
        ignored = await engine.generate(ids, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
        assert ignored.completion_tokens == 6 and ignored.finish_reason == "length"
        # stop strings too wait for min_tokens
        text = (await engine.generate(ids, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))).text
        stop = text[:1]
        stopped = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, stop=(stop,))
        assert (await engine.generate(ids, stopped)).text == ""
        late = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, stop=(stop,), min_tokens=6)
        assert (await engine.generate(ids, late)).completion_tokens == 6
    finally:
        engine.eos_ids = eos


async def test_scoring_only_and_context_refusals(engine: Engine) -> None:
    ids = engine.encode("The river runs north")
    scored = await engine.generate(ids, SamplingParams(max_tokens=0, prompt_logprobs=True, logprobs=0))
    assert scored.completion_tokens == 0 and scored.text == "" and scored.finish_reason == "length"
    assert scored.prompt_logprobs is not None and len(scored.prompt_logprobs) == len(ids)
    with pytest.raises(InvalidRequest, match="max_tokens must be at least 1, got 0"):
        await engine.generate(ids, SamplingParams(max_tokens=0))
    with pytest.raises(InvalidRequest, match=r"Token id 99999 is out of vocabulary"):
        await engine.generate([*ids, 99999], SamplingParams(max_tokens=1))
    full = list(range(5, 5 + engine.max_positions))
    with pytest.raises(InvalidRequest, match=f"You passed {len(full)} input tokens and requested 1 output"):
        await engine.generate(full, SamplingParams(max_tokens=1))
    # a whole context is scored (nothing generated), and a default max_tokens is cut, never refused
    assert (await engine.generate(full, SamplingParams(max_tokens=0, echo=True))).completion_tokens == 0
    near = full[:-3]
    cut = await engine.generate(
        near, SamplingParams(max_tokens=16, max_tokens_is_default=True, ignore_eos=True)
    )
    assert cut.finish_reason == "length" and cut.completion_tokens == 3


def test_context_check_words_the_lengths_as_vllm() -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_context(250, SamplingParams(max_tokens=10), 256)
    assert str(exc.value) == (
        "You passed 250 input tokens and requested 10 output tokens. However, the model's context length "
        "is only 256 tokens, resulting in a maximum input length of 246 tokens. Please reduce the length "
        "of the input prompt."
    )
    with pytest.raises(InvalidRequest, match="max_tokens=300 cannot be greater than"):
        check_context(4, SamplingParams(max_tokens=300), 256)
    with pytest.raises(InvalidRequest, match="min_tokens"):
        SamplingParams(max_tokens=2, min_tokens=3).validate()


def test_prompt_forms_and_unknown_fields(caplog: pytest.LogCaptureFixture) -> None:
    def prompts(prompt: object) -> list[tuple[str | None, tuple[int, ...] | None]]:
        body = {"model": "m", "prompt": prompt}
        return [(p.text, p.ids) for p in CompletionRequest.model_validate(body).prompts()]

    assert prompts("a") == [("a", None)]
    assert prompts(["a", "b"]) == [("a", None), ("b", None)]
    assert prompts([1, 2]) == [(None, (1, 2))]
    assert prompts([[1, 2], [3]]) == [(None, (1, 2)), (None, (3,))]
    for empty in ("", [], [[1], []]):
        with pytest.raises(InvalidRequest, match="non-empty"):
            prompts(empty)
    with caplog.at_level(logging.WARNING):
        request = CompletionRequest.model_validate(
            {"model": "m", "prompt": "a", "ignore_eos": True, "min_tokens": 2, "best_of": 3, "zz": 1}
        )
    assert "ignored: best_of, zz" in caplog.text and "ignore_eos" not in caplog.text
    params = request.sampling_params(16)
    assert params.ignore_eos and params.min_tokens == 2 and params.max_tokens_is_default
    # tool calls sent back in the history reach the template with their arguments as objects
    chat = ChatRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c", "content": "2"},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
    )
    assert chat.plain_messages()[1]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    assert chat.tool_plan().reads_calls


def test_internlm2_tool_calls_whole_and_streamed() -> None:
    content, calls = parse_tool_calls("Let me look." + INTERNLM2, NAMES)
    assert content == "Let me look." and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Velm"})
    ]
    two = parse_tool_calls(INTERNLM2 + "\n" + INTERNLM2.replace("Velm", "Aldoria"), NAMES)[1]
    assert [json.loads(c.arguments)["city"] for c in two] == ["Velm", "Aldoria"]
    # markers dropped by a detokenizer that skipped special tokens: the bare object is still a call
    assert parse_tool_calls('\n{"name": "get_weather", "parameters": {"city": "Velm"}}', NAMES)[1]
    # the code interpreter's block is not a function call
    code = "<|action_start|><|interpreter|>\nprint(1)<|action_end|>"
    assert parse_tool_calls(code, NAMES) == (code, [])
    text = "Sure. " + INTERNLM2
    for step in (1, 4, 9):
        stream = ToolParser(NAMES)
        streamed = "".join(stream.feed(text[i : i + step])[0] for i in range(0, len(text), step))
        rest, _ = stream.finish()
        assert streamed == "Sure. " and rest == "" and stream.whole()[1][0].name == "get_weather"


@pytest.mark.parametrize(
    ("text", "reasoning", "content"),
    [
        ("<think>\nthe mill\n</think>\n\nVelm.", "\nthe mill\n", "Velm."),
        ("  <think>cut short", "cut short", ""),
        ("No thinking. <think>x</think>", None, "No thinking. <think>x</think>"),
        ("<thin", None, "<thin"),
    ],
)
def test_reasoning_apart_whole_and_streamed(text: str, reasoning: str | None, content: str) -> None:
    assert split_reasoning(text) == (reasoning, content)
    for step in (1, 3, 8):
        stream = ReasoningStream()
        pieces = [stream.feed(text[i : i + step]) for i in range(0, len(text), step)] + [stream.finish()]
        assert "".join(r for r, _ in pieces) == (reasoning or "")
        assert "".join(c for _, c in pieces) == content


def test_every_option_reaches_a_worker() -> None:
    from services.inference_gateway.wire import params_from_proto, params_to_proto

    for sent in (
        SamplingParams(ignore_eos=True, max_tokens=8),
        SamplingParams(min_tokens=3, max_tokens=8),
        SamplingParams(max_tokens=0, echo=True, prompt_logprobs=True),
        SamplingParams(skip_special_tokens=False, echo=True),
    ):
        assert params_from_proto(params_to_proto(sent), 32) == sent
    default = params_from_proto(
        params_to_proto(SamplingParams(max_tokens=16, max_tokens_is_default=True)), 32
    )
    assert (
        default.max_tokens == 32 and default.max_tokens_is_default
    )  # the worker's default, cut by its context
    asked = params_from_proto(params_to_proto(SamplingParams(max_tokens=5)), 32)
    assert asked.max_tokens == 5 and not asked.max_tokens_is_default
