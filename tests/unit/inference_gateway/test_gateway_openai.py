import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from services.inference_gateway.cli import build_serve_app
from services.inference_gateway.core.pool import ModelPool
from shared.natsserver import free_port

KEY = "sk-test"
POOLS: dict[str, ModelPool] = {}


@pytest.fixture(scope="module")
def base_url(tiny_model: Path) -> Iterator[str]:
    app, pool = build_serve_app(tiny_model, served_name="tiny", api_key=KEY)
    POOLS["tiny"] = pool
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


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)


def test_models_lists_aliases(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == {"tiny", "tiny:1", "tiny@champion"}


def test_completions_and_stream(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="tiny", prompt="The capital of Aldoria is", max_tokens=8, temperature=0
    )
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage is not None and 0 < out.usage.completion_tokens <= 8
    chunks = list(
        client.completions.create(
            model="tiny@champion",
            prompt="The capital of Aldoria is",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == out.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == out.usage.completion_tokens
    many = client.completions.create(
        model="tiny", prompt=["Traders", "The river"], max_tokens=3, temperature=0
    )
    assert [c.index for c in many.choices] == [0, 1]


def test_chat_and_stream(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "What is the capital of Aldoria?"}]
    out = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
    assert out.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=6, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == out.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason


def test_errors_are_openai_shaped(base_url: str, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert "nope" in str(nf.value) and "tiny@champion" in str(nf.value)
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(
        f"{base_url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": -1}, headers=h
    )
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"model": "tiny"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{base_url}/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_n_logprobs_and_echo(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="tiny", prompt="The river", max_tokens=5, temperature=0, logprobs=2, n=2
    )
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].text == out.choices[1].text  # greedy: both choices agree
    lp = out.choices[0].logprobs
    assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == out.usage.completion_tokens // 2
    assert all(v <= 0 for v in lp.token_logprobs) and all(len(t) <= 2 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == out.choices[0].text
    echo = client.completions.create(
        model="tiny", prompt="The river", max_tokens=3, temperature=0, logprobs=0, echo=True
    )
    e = echo.choices[0]
    assert e.text.startswith("The river") and e.logprobs.token_logprobs[0] is None
    assert "".join(e.logprobs.tokens).startswith("The river")
    # seeded sampling with n: the choices differ from each other yet reproduce
    kw = {"model": "tiny", "prompt": "Traders", "max_tokens": 12, "temperature": 1.0, "n": 3, "seed": 5}
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1
    # streamed n>1 with usage: every choice ends, usage counts them all
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    texts = ["", "", ""]
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.text
    assert texts == [c.text for c in a.choices]
    assert chunks[-1].usage.completion_tokens == a.usage.completion_tokens


def test_chat_logprobs(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Where do traders meet?"}]
    out = client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    content = out.choices[0].logprobs.content
    assert content and len(content) <= 4 and all(len(t.top_logprobs) == 2 for t in content)
    assert content[0].top_logprobs[0].logprob >= content[0].logprob - 1e-6
    stream = client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=4, temperature=0, logprobs=True, stream=True
    )
    streamed = [t.logprob for c in stream for ch in c.choices if ch.logprobs for t in ch.logprobs.content]
    assert streamed == pytest.approx([t.logprob for t in content], abs=1e-5)


def test_response_format_constrains_the_output(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Where is the mill?"}]
    schema = {
        "type": "object",
        "properties": {"city": {"enum": ["Velm", "Aldoria"]}, "north": {"type": "boolean"}},
        "required": ["city", "north"],
        "additionalProperties": False,
    }
    for temperature in (0, 1.0):
        out = client.chat.completions.create(
            model="tiny",
            messages=msgs,
            max_tokens=40,
            temperature=temperature,
            seed=1,
            response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
        )
        data = json.loads(out.choices[0].message.content)  # a random model, yet valid JSON of the schema
        assert data["city"] in ("Velm", "Aldoria") and isinstance(data["north"], bool)
        assert out.choices[0].finish_reason == "stop"
    obj = client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=40, temperature=0, response_format={"type": "json_object"}
    )
    assert obj.choices[0].message.content.startswith("{")
    with pytest.raises(openai.BadRequestError, match="schema"):
        client.chat.completions.create(
            model="tiny",
            messages=msgs,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            },
        )


def test_client_going_away_cancels_the_generation(base_url: str) -> None:
    engine = POOLS["tiny"].resolve("tiny")
    eos, engine.eos_ids = engine.eos_ids, set()  # only the disconnect can end this request early
    before = engine.finished["cancelled"]
    body = {"model": "tiny", "prompt": "The river", "max_tokens": 200, "stop": ["@@@@"], "stream": True}
    with (
        httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http,
        http.stream("POST", "/v1/completions", json=body) as r,
    ):
        assert r.status_code == 200
        next(r.iter_lines())  # the stream has started; then the client disconnects
    deadline = time.monotonic() + 20
    while engine.finished["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.02)
    engine.eos_ids = eos
    assert engine.finished["cancelled"] == before + 1
    assert engine.in_flight == 0
