"""Tool calls end to end with the official openai client: a tiny model taught to call a tool, its call
parsed, streamed piece by piece (the client's stream helper joins the pieces into the whole answer's
call), ``tool_choice`` none / named / required (forced calls against a reference: transformers' greedy
decoding under xgrammar's own logits processor, with vLLM's schemas written out here), refusals as 400s;
and the parser on its own: every chunking of a text gives the whole answer's content and calls."""

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
import uvicorn
import xgrammar as xgr
from transformers import AutoModelForCausalLM, AutoTokenizer
from xgrammar.contrib.hf import LogitsProcessor as XgrammarLogitsProcessor

from services.inference_gateway.cli import build_serve_app
from services.inference_gateway.core.limits import Limits
from services.inference_gateway.core.sampling import InvalidRequest
from services.inference_gateway.core.tool_choice import ToolPlan, plan_tools
from services.inference_gateway.core.tools import ToolParser, parse_tool_calls
from shared.natsserver import free_port
from tests.support.tiny_model import build_serving_model, teach_reply

QUESTION = "What is the weather in Velm?"
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Velm"}}</tool_call>'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_parse_tool_calls_and_stream_holdback() -> None:
    names = ToolPlan(frozenset({"get_weather"}))
    content, calls = parse_tool_calls("Let me check. " + CALL, names)
    assert content == "Let me check." and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Velm"}
    assert (
        parse_tool_calls('{"name": "get_weather", "parameters": {"city": "X"}}', names)[1][0].name
        == "get_weather"
    )
    assert parse_tool_calls('{"name": "other", "arguments": {}}', names)[1] == []  # not an offered tool
    assert parse_tool_calls("<tool_call>{broken", names) == ("<tool_call>{broken", [])
    ts = ToolParser(names)
    text = "Sure. " + CALL
    streamed = "".join(ts.feed(text[i : i + 3])[0] for i in range(0, len(text), 3))
    assert streamed == "Sure. "  # the call is never streamed as text
    rest, _ = ts.finish()
    assert rest == "" and ts.whole()[1][0].name == "get_weather"
    plain = ToolParser(names)
    assert "".join(plain.feed(p)[0] for p in ["Hel", "lo <", "b>"]) + plain.finish()[0] == "Hello <b>"


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = build_serving_model(tmp_path_factory.mktemp("tools") / "tool-model", seed=3)
    return teach_reply(path, f"User: {QUESTION}\nAssistant:", " " + CALL)


@pytest.fixture(scope="module")
def base_url(tool_model: Path) -> Iterator[str]:
    app, _ = build_serve_app(
        tool_model,
        served_name="tooly",
        default_max_tokens=100,
        limits=Limits(api_keys=("k1", "k2"), requests_per_minute=0),
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_tool_calls_with_openai_client(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="k2", max_retries=0)
    msgs = [{"role": "user", "content": QUESTION}]
    out = client.chat.completions.create(model="tooly", messages=msgs, tools=TOOLS, temperature=0)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Velm"}
    # streamed as OpenAI streams a call: index, id, type and name once, then the arguments in pieces;
    # no tag leaks into the content
    chunks = list(
        client.chat.completions.create(model="tooly", messages=msgs, tools=TOOLS, temperature=0, stream=True)
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert "<tool_call>" not in content
    first, rest = deltas[0], deltas[1:]
    assert (first.index, first.type, first.function.name) == (0, "function", "get_weather")
    assert first.id and first.id.startswith("call_")
    assert len(rest) > 1 and all(d.index == 0 and d.id is None and d.function.name is None for d in rest)
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the client's streaming helper joins the pieces into the call of the whole answer
    with client.chat.completions.stream(model="tooly", messages=msgs, tools=TOOLS, temperature=0) as stream:
        joined = stream.get_final_completion().choices[0]
    assert joined.finish_reason == "tool_calls" and joined.message.tool_calls is not None
    assert [(c.function.name, c.function.arguments) for c in joined.message.tool_calls] == [
        (call.function.name, call.function.arguments)
    ]
    # without tools the same answer is plain text
    plain = client.chat.completions.create(model="tooly", messages=msgs, temperature=0)
    assert plain.choices[0].message.content.strip() == CALL and not plain.choices[0].message.tool_calls


def test_metrics_and_second_key(base_url: str) -> None:
    r = httpx.get(f"{base_url}/v1/models", headers={"Authorization": "Bearer k1"})
    assert r.status_code == 200
    assert httpx.get(f"{base_url}/v1/models", headers={"Authorization": "Bearer k3"}).status_code == 401
    text = httpx.get(f"{base_url}/metrics/").text
    assert "puyu_gateway_requests_total" in text and "puyu_engine_free_blocks" in text
    assert "puyu_gateway_time_to_first_token_seconds_bucket" in text


# ------------------------------------------------------------------------------------ tool_choice

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Velm", "Aldoria", "Copper Hill"]}},
    "required": ["city"],
    "additionalProperties": False,
}
ZONE = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
FORCED_TOOLS = [
    {"type": "function", "function": {"name": "get_time", "parameters": ZONE}},
    {"type": "function", "function": {"name": "get_weather", "parameters": CITY}},
]
# vLLM's schema for tool_choice "required" with parallel_tool_calls false, written out
REQUIRED_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "maxItems": 1,
    "items": {
        "type": "object",
        "anyOf": [
            {
                "properties": {"name": {"type": "string", "enum": [name]}, "parameters": params},
                "required": ["name", "parameters"],
            }
            for name, params in (("get_time", ZONE), ("get_weather", CITY))
        ],
    },
}


def _guided_reference(path: Path, messages: list[dict[str, Any]], schema: dict[str, Any]) -> str:
    """transformers' greedy answer under xgrammar's own logits processor for ``schema``."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    text = tok.apply_chat_template(messages, tools=FORCED_TOOLS, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    info = xgr.TokenizerInfo.from_huggingface(
        tok, vocab_size=model.config.vocab_size, stop_token_ids=[tok.eos_token_id]
    )
    grammar = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)
    with torch.no_grad():
        out = model.generate(
            ids,
            logits_processor=[XgrammarLogitsProcessor(grammar)],
            do_sample=False,
            max_new_tokens=60,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )
    return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def _whole_and_streamed(client: openai.OpenAI, **kw: Any) -> tuple[Any, Any]:
    whole = client.chat.completions.create(model="tooly", temperature=0, **kw).choices[0]
    with client.chat.completions.stream(model="tooly", temperature=0, **kw) as stream:
        joined = stream.get_final_completion().choices[0]
    return whole, joined


def _calls(choice: Any) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]


def test_tool_choice_named_forces_that_function(base_url: str, tool_model: Path) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="k2", max_retries=0)
    msgs = [{"role": "user", "content": QUESTION}]
    choice = {"type": "function", "function": {"name": "get_time"}}
    want = _guided_reference(
        tool_model, msgs, ZONE
    )  # the output is the arguments (vLLM's schema: the parameters)
    assert json.loads(want)["zone"] in ("UTC", "CET")
    whole, joined = _whole_and_streamed(client, messages=msgs, tools=FORCED_TOOLS, tool_choice=choice)
    assert _calls(whole) == _calls(joined) == [("get_time", want)]
    assert whole.finish_reason == joined.finish_reason == "stop"  # a named call ends as "stop" (OpenAI, vLLM)
    assert whole.message.content is None


def test_tool_choice_required_forces_a_call(base_url: str, tool_model: Path) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="k2", max_retries=0)
    msgs = [{"role": "user", "content": QUESTION}]
    want = json.loads(_guided_reference(tool_model, msgs, REQUIRED_SCHEMA))
    whole, joined = _whole_and_streamed(
        client, messages=msgs, tools=FORCED_TOOLS, tool_choice="required", parallel_tool_calls=False
    )
    assert _calls(whole) == _calls(joined)
    assert [(n, json.loads(a)) for n, a in _calls(whole)] == [(c["name"], c["parameters"]) for c in want]
    assert whole.finish_reason == joined.finish_reason == "tool_calls"


def test_tool_choice_none_reads_no_call(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="k2", max_retries=0)
    msgs = [{"role": "user", "content": QUESTION}]
    whole, joined = _whole_and_streamed(client, messages=msgs, tools=TOOLS, tool_choice="none")
    for choice in (whole, joined):
        assert choice.message.content.strip() == CALL and not choice.message.tool_calls
        assert choice.finish_reason == "stop"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope'"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, 'tool_choice must be "none", "auto", "required"'),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
        ({"tool_choice": "required"}, "tool_choice needs tools"),
        ({"tools": []}, "tools must not be an empty array"),
        ({"tools": [{"type": "function", "function": {"description": "x"}}]}, r"tools\[0\].function.name"),
        (
            {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
            "cannot be combined with response_format",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}
                ],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
            },
            "invalid JSON schema in response_format or in the parameters of a forced tool",
        ),
    ],
)
def test_bad_tool_requests_are_400s(base_url: str, extra: dict[str, Any], says: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="k2", max_retries=0)
    with pytest.raises(openai.BadRequestError, match=says):
        client.chat.completions.create(
            model="tooly", messages=[{"role": "user", "content": QUESTION}], max_tokens=4, **extra
        )


def test_plan_schemas_are_vllms() -> None:
    required = plan_tools(FORCED_TOOLS, "required", False)
    assert required.schema is not None and json.loads(required.schema) == REQUIRED_SCHEMA
    assert required.names == {"get_time", "get_weather"} and required.named is None and required.single
    named = plan_tools(FORCED_TOOLS, {"type": "function", "function": {"name": "get_weather"}}, None)
    assert named.schema is not None and json.loads(named.schema) == CITY and named.named == "get_weather"
    bare = plan_tools(
        [{"type": "function", "function": {"name": "ping"}}], {"function": {"name": "ping"}}, None
    )
    assert bare.schema is not None and json.loads(bare.schema) == {"type": "object", "properties": {}}
    assert plan_tools(TOOLS, None, None).reads_calls and not plan_tools(TOOLS, "none", None).reads_calls
    assert not plan_tools(None, None, None).reads_calls and plan_tools(TOOLS, None, None).schema is None
    defs = {"$defs": {"P": {"type": "string"}}, "type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}}
    two = [{"type": "function", "function": {"name": n, "parameters": defs}} for n in ("a", "b")]
    schema = json.loads(plan_tools(two, "required", None).schema or "{}")
    assert schema["$defs"] == {"P": {"type": "string"}} and "maxItems" not in schema
    assert all("$defs" not in item["properties"]["parameters"] for item in schema["items"]["anyOf"])
    clash = [
        two[0],
        {"type": "function", "function": {"name": "c", "parameters": {"$defs": {"P": {"type": "integer"}}}}},
    ]
    with pytest.raises(InvalidRequest, match="'P'"):
        plan_tools(clash, "required", None)


# ------------------------------------------------------------------------------------ the parser

PLAN = ToolPlan(frozenset({"get_weather", "get_time"}))
I2 = '<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Velm"}}<|action_end|>'


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Let me check. " + CALL, "Let me check.", [("get_weather", '{"city": "Velm"}')]),
        (
            CALL + "\n" + CALL.replace("Velm", "Aldoria"),
            "",
            [("get_weather", '{"city": "Velm"}'), ("get_weather", '{"city": "Aldoria"}')],
        ),
        ("Sure. " + I2, "Sure.", [("get_weather", '{"city": "Velm"}')]),
        ('  {"name": "get_time", "arguments": {"zone": "UTC"}}', "", [("get_time", '{"zone": "UTC"}')]),
        ('{"arguments": {"zone": "CET"}, "name": "get_time"}', "", [("get_time", '{"zone": "CET"}')]),
        (
            '{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}',
            "",
            [("get_time", '{"zone": "UTC"}')],
        ),
        ('{"name":"get_time"}', "", [("get_time", "{}")]),
        (
            '{"name": "get_time", "arguments": {"zone": {"deep": [1, {"x": "}]"}]}}, "id": 3}',
            "",
            [("get_time", '{"zone": {"deep": [1, {"x": "}]"}]}}')],
        ),
        (
            '[{"name": "get_weather", "parameters": {"city": "A"}}, {"name": "get_time", "parameters": {}}]',
            "",
            [("get_weather", '{"city": "A"}'), ("get_time", "{}")],
        ),
        (CALL + " and then some", "and then some", [("get_weather", '{"city": "Velm"}')]),
        (
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Ve',
            "",
            [("get_weather", '{"city": "Ve')],
        ),  # cut short
        # not calls of an offered function: content, as it came
        ('{"name": "other", "arguments": {}}', '{"name": "other", "arguments": {}}', []),
        ('{"x": 1}', '{"x": 1}', []),
        ("[1, 2] is a list", "[1, 2] is a list", []),
        ("[]", "[]", []),
        ("<tool_call>{broken", "<tool_call>{broken", []),
        (
            "<|action_start|><|interpreter|>\nprint(1)<|action_end|>",
            "<|action_start|><|interpreter|>\nprint(1)<|action_end|>",
            [],
        ),
        ("Hello <b>", "Hello <b>", []),
        ("  \n", "  \n", []),
    ],
)
def test_every_chunking_streams_the_whole_answer(
    text: str, content: str, calls: list[tuple[str, str]]
) -> None:
    whole_content, whole_calls = parse_tool_calls(text, PLAN)
    assert (whole_content, [(c.name, c.arguments) for c in whole_calls]) == (content, calls)
    for step in (1, 2, 5, 13, len(text)):
        parser, streamed, pieces = ToolParser(PLAN), "", []
        for i in range(0, len(text), step):
            part, deltas = parser.feed(text[i : i + step])
            streamed, pieces = streamed + part, pieces + deltas
        part, deltas = parser.finish()
        streamed, pieces = streamed + part, pieces + deltas
        joined: dict[int, list[str]] = {}
        for d in pieces:
            if d.id is not None:  # a call's first piece: its id and name, once
                assert d.index not in joined and d.name is not None
                joined[d.index] = [d.name, ""]
            joined[d.index][1] += d.arguments
        assert [tuple(v) for v in joined.values()] == calls, step
        assert (streamed.strip() if calls else streamed) == content, step


def test_single_call_and_named_plans() -> None:
    single = ToolPlan(frozenset({"get_weather"}), single=True)
    assert [c.arguments for c in parse_tool_calls(CALL + CALL.replace("Velm", "X"), single)[1]] == [
        '{"city": "Velm"}'
    ]
    named = ToolPlan(frozenset({"get_time"}), named="get_time", single=True)
    parser = ToolParser(named)
    pieces = [d for chunk in ('{"zo', 'ne": "U', 'TC"}') for d in parser.feed(chunk)[1]]
    assert pieces[0].name == "get_time" and "".join(d.arguments for d in pieces) == '{"zone": "UTC"}'
    assert parse_tool_calls("", named) == ("", [])
