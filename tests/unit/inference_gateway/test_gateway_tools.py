"""Tool calls end to end with the official openai client: a tiny model taught to call a tool, parsed and streamed."""

import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import uvicorn

from services.inference_gateway.cli import build_serve_app
from services.inference_gateway.core.limits import Limits
from services.inference_gateway.core.tools import ToolStream, parse_tool_calls
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
    names = {"get_weather"}
    content, calls = parse_tool_calls("Let me check. " + CALL, names)
    assert content == "Let me check." and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Velm"}
    assert (
        parse_tool_calls('{"name": "get_weather", "parameters": {"city": "X"}}', names)[1][0].name
        == "get_weather"
    )
    assert parse_tool_calls('{"name": "other", "arguments": {}}', names)[1] == []  # not an offered tool
    assert parse_tool_calls("<tool_call>{broken", names) == ("<tool_call>{broken", [])
    ts = ToolStream(names)
    text = "Sure. " + CALL
    streamed = "".join(ts.feed(text[i : i + 3]) for i in range(0, len(text), 3))
    assert streamed == "Sure. "  # the call is never streamed as text
    rest, calls = ts.finish()
    assert rest == "" and calls[0].name == "get_weather"
    plain = ToolStream(names)
    assert "".join(plain.feed(p) for p in ["Hel", "lo <", "b>"]) + plain.finish()[0] == "Hello <b>"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = build_serving_model(tmp_path_factory.mktemp("tools") / "tool-model", seed=3)
    teach_reply(path, f"User: {QUESTION}\nAssistant:", " " + CALL)
    app, _ = build_serve_app(
        path,
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
    # streamed: the call arrives whole, in OpenAI's delta format, and no tag leaks into the content
    chunks = list(
        client.chat.completions.create(model="tooly", messages=msgs, tools=TOOLS, temperature=0, stream=True)
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert "<tool_call>" not in content
    assert deltas[0].function.name == "get_weather" and deltas[0].index == 0
    assert json.loads("".join(d.function.arguments for d in deltas)) == {"city": "Velm"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
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
