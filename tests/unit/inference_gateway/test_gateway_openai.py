import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from services.inference_gateway.cli import build_serve_app
from shared.natsserver import free_port

KEY = "sk-test"


@pytest.fixture(scope="module")
def base_url(tiny_model: Path) -> Iterator[str]:
    app, _ = build_serve_app(tiny_model, served_name="tiny", api_key=KEY)
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
