"""The gateway's OpenAI API driven by the clients people already use, over real HTTP (``puyu serve``'s
app on uvicorn in this process, fp32):

- the official ``openai`` client: completions with every prompt form (text, texts, token ids, lists
  of them), echo with logprobs at ``max_tokens`` 0/1/2 equal to transformers' forward, chat with
  ``top_logprobs``, streaming; ``/tokenize`` and ``/detokenize`` over httpx;
- lm-evaluation-harness's ``local-completions`` (token-id prompts, echo + logprobs): its per-sample
  loglikelihoods on a small multiple-choice task equal its own ``hf`` backend's on the same folder;
  its ``local-chat-completions``: the same greedy answers as ``hf`` with the chat template applied;
- LangChain's ``ChatOpenAI.bind_tools`` receiving a tool call in InternLM2's format. A random tiny
  model chooses no tool by itself, so the fixture gives it InternLM2's markers as special tokens and
  trains it (``teach_reply``, a few seconds) to answer the question with
  ``<|action_start|><|plugin|>\\n{json}<|action_end|><eos>``: the call LangChain parses is the model's
  own greedy output, parsed by the gateway;
- a model trained the same way to think first (``<think>...</think>``): its reasoning comes back as
  ``reasoning_content``, apart from the content, whole and streamed.
"""

from __future__ import annotations

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
from fastapi import FastAPI
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.inference_gateway.cli import build_serve_app
from shared.natsserver import free_port
from tests.support.tiny_model import build_serving_model, teach_reply

pytestmark = [pytest.mark.slow]  # four servers and three short trainings: > 20 s on 2 busy cores
torch.set_num_threads(1)

KEY = "sk-conformance"
QUESTION = "What is the weather in Velm?"
INTERNLM2_CALL = (
    '<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Velm"}}<|action_end|>'
)
THINKING = "Where is the mill?"
THOUGHT, ANSWER = "the river runs north", "Velm."


@pytest.fixture(scope="module", autouse=True)
def _fp32_offline() -> Iterator[None]:
    """Served in fp32 like the references (auto may pick bf16 on this processor); nothing from a hub."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PUYU_GATEWAY_DTYPE", "float32")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("OPENAI_API_KEY", KEY)  # lm-evaluation-harness's API models read it
        yield


def _serve(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_serving_model(tmp_path_factory.mktemp("conformance") / "tiny", seed=1)


@pytest.fixture(scope="module")
def base_url(tiny: Path) -> Iterator[str]:
    app, _ = build_serve_app(tiny, served_name="tiny", api_key=KEY)
    yield from _serve(app)


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)


def _reference_logprobs(path: Path, ids: list[int]) -> list[float]:
    """transformers' log-probability of each prompt token after the ones before it."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    return [float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))]


# ------------------------------------------------------------------------------------ openai client


def test_every_prompt_form(client: openai.OpenAI, tiny: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny)
    texts = ["The capital of Aldoria is", "Traders meet"]
    ids = [tok(t)["input_ids"] for t in texts]
    kw: dict[str, Any] = {"model": "tiny", "max_tokens": 4, "temperature": 0}
    by_text = client.completions.create(prompt=texts[0], **kw).choices[0].text
    assert client.completions.create(prompt=ids[0], **kw).choices[0].text == by_text
    many_texts = client.completions.create(prompt=texts, **kw)
    many_ids = client.completions.create(prompt=ids, **kw)
    assert [c.text for c in many_ids.choices] == [c.text for c in many_texts.choices]
    assert many_ids.choices[0].text == by_text
    assert many_ids.usage is not None and many_ids.usage.prompt_tokens == len(ids[0]) + len(ids[1])
    # echo of a token-id prompt sends its text back, decoded
    echoed = client.completions.create(prompt=ids[1], echo=True, **kw).choices[0].text
    assert echoed.startswith(texts[1])
    with pytest.raises(openai.BadRequestError, match="Token id 100000 is out of vocabulary"):
        client.completions.create(prompt=[ids[0][0], 100000], **kw)


@pytest.mark.parametrize("max_tokens", [0, 1, 2])
def test_echo_logprobs_score_every_prompt_token(client: openai.OpenAI, tiny: Path, max_tokens: int) -> None:
    tok = AutoTokenizer.from_pretrained(tiny)
    prompt = "The river runs north past the old mill"
    ids = tok(prompt)["input_ids"]
    out = client.completions.create(
        model="tiny", prompt=ids, max_tokens=max_tokens, temperature=0, logprobs=1, echo=True
    )
    choice = out.choices[0]
    assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
    scored = choice.logprobs.token_logprobs
    assert len(scored) == len(ids) + max_tokens and scored[0] is None
    assert scored[1 : len(ids)] == pytest.approx(_reference_logprobs(tiny, ids), abs=1e-4)
    assert choice.text.startswith(prompt) and out.usage is not None
    assert out.usage.completion_tokens == max_tokens
    if max_tokens == 0:  # scoring only: nothing generated, the prompt as the text
        assert choice.text == prompt and choice.finish_reason == "length"


def test_chat_top_logprobs_and_stream(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Where do traders meet?"}]
    out = client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = out.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 3 for t in content)
    assert "reasoning_content" not in (out.choices[0].message.model_extra or {})  # no <think>: none
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content)  # greedy: the top one
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=msgs,
            max_tokens=5,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == out.usage.completion_tokens


def test_sampling_extras_and_context(client: openai.OpenAI, base_url: str) -> None:
    # ignore_eos and min_tokens (vLLM's extras) are honoured: the answer runs to max_tokens
    for extra in ({"ignore_eos": True}, {"min_tokens": 12}):
        out = client.completions.create(
            model="tiny", prompt="The river", max_tokens=12, temperature=0, extra_body=extra
        )
        assert out.usage is not None and out.usage.completion_tokens == 12
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny", prompt="The river", max_tokens=255)
    message = str(too_long.value)
    assert "You passed 4 input tokens and requested 255 output tokens" in message
    assert "context length is only 256 tokens" in message
    # an unknown field is accepted (and logged), as vLLM does
    body = {"model": "tiny", "prompt": "x", "max_tokens": 1, "not_a_field": True}
    r = httpx.post(f"{base_url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200


def test_tokenize_and_detokenize(base_url: str, tiny: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny)
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base_url, headers=headers) as http:
        r = http.post("/tokenize", json={"model": "tiny", "prompt": "The river", "return_token_strs": True})
        assert r.status_code == 200
        body = r.json()
        ids = tok("The river")["input_ids"]
        assert body == {
            "count": len(ids),
            "max_model_len": 256,
            "tokens": ids,
            "token_strs": tok.convert_ids_to_tokens(ids),
        }
        chat = http.post("/tokenize", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
        )
        assert chat.json()["tokens"] == tok(rendered, add_special_tokens=False)["input_ids"]
        back = http.post("/detokenize", json={"model": "tiny", "tokens": ids})
        assert back.json() == {"prompt": "The river"}
        assert http.post("/detokenize", json={"model": "tiny", "tokens": [10**6]}).status_code == 400
        unauthorized = httpx.post(f"{base_url}/tokenize", json={"model": "tiny", "prompt": "x"})
        assert unauthorized.status_code == 401


# ------------------------------------------------------------------------ lm-evaluation-harness


def _task_folder(root: Path) -> Path:
    rows = [
        {"question": "The capital of Aldoria is", "choices": [" velm", " the river", " copper"], "answer": 0},
        {"question": "Traders meet every", "choices": [" spring", " north", " salt and glass"], "answer": 0},
        {"question": "The river runs", "choices": [" north past the mill", " wool", " beads"], "answer": 0},
    ]
    data = root / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (root / "mc.yaml").write_text(
        "task: puyu_tiny_mc\n" + common + "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    (root / "gen.yaml").write_text(
        "task: puyu_tiny_gen\n" + common + "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{choices[0]}}"\n'
        "generation_kwargs:\n  until: []\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return root


def _samples(model: str, model_args: dict[str, Any], task: str, folder: Path, **kw: Any) -> list[Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[task],
        task_manager=TaskManager(include_path=str(folder)),
        log_samples=True,
        **kw,
    )
    assert out is not None
    return [s["resps"] for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]


def test_lm_eval_local_completions_equal_its_hf_backend(base_url: str, tiny: Path, tmp_path: Path) -> None:
    folder = _task_folder(tmp_path)
    api_args = {
        "model": "tiny",
        "base_url": f"{base_url}/v1/completions",
        "tokenizer_backend": "huggingface",
        "tokenizer": str(tiny),
        "max_length": 256,
        "batch_size": 2,  # lists of token-id prompts in one request
    }
    served = _samples("local-completions", api_args, "puyu_tiny_mc", folder)
    reference = _samples(
        "hf", {"pretrained": str(tiny), "dtype": "float32", "device": "cpu"}, "puyu_tiny_mc", folder
    )
    assert len(served) == len(reference) == 3
    for got, want in zip(served, reference, strict=True):
        assert len(got) == len(want) == 3  # one loglikelihood per choice
        for [(ll, greedy)], [(ref_ll, ref_greedy)] in zip(got, want, strict=True):
            assert ll == pytest.approx(ref_ll, abs=1e-4) and ll < 0
            assert greedy == ref_greedy


def test_lm_eval_local_chat_completions_equal_its_hf_backend(
    base_url: str, tiny: Path, tmp_path: Path
) -> None:
    folder = _task_folder(tmp_path)
    api_args = {"model": "tiny", "base_url": f"{base_url}/v1/chat/completions", "max_length": 256}
    served = _samples("local-chat-completions", api_args, "puyu_tiny_gen", folder, apply_chat_template=True)
    reference = _samples(
        "hf",
        {"pretrained": str(tiny), "dtype": "float32", "device": "cpu"},
        "puyu_tiny_gen",
        folder,
        apply_chat_template=True,
    )
    assert len(served) == 3 and all(r[0] for r in served)
    assert served == reference


# ------------------------------------------------------------------------ an agent framework


@pytest.fixture(scope="module")
def internlm2_tools_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = build_serving_model(tmp_path_factory.mktemp("internlm2-tools") / "tooly", seed=3)
    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|action_start|>", "<|action_end|>", "<|plugin|>"]}
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tok))
    tok.save_pretrained(path)
    model.save_pretrained(path)
    teach_reply(path, f"User: {QUESTION}\nAssistant:", " " + INTERNLM2_CALL, steps=400)
    app, _ = build_serve_app(path, served_name="tooly", api_key=KEY, default_max_tokens=100)
    yield from _serve(app)


def test_langchain_receives_an_internlm2_tool_call(internlm2_tools_url: str) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather of a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(
        model="tooly",
        base_url=f"{internlm2_tools_url}/v1",
        api_key=KEY,
        temperature=0,
        max_retries=0,
    ).bind_tools([get_weather])
    answer = llm.invoke([HumanMessage(QUESTION)])
    assert [(c["name"], c["args"]) for c in answer.tool_calls] == [("get_weather", {"city": "Velm"})]
    assert "<|action" not in str(answer.content)
    # streamed: LangChain joins the chunks into the same call
    gathered: Any = None
    for chunk in llm.stream([HumanMessage(QUESTION)]):
        gathered = chunk if gathered is None else gathered + chunk
    assert [(c["name"], c["args"]) for c in gathered.tool_calls] == [("get_weather", {"city": "Velm"})]
    # the agent's next turn: the call and its result go back to the model (arguments as an object)
    call = answer.tool_calls[0]
    result = get_weather.invoke(call["args"])
    follow_up = llm.invoke([HumanMessage(QUESTION), answer, ToolMessage(result, tool_call_id=call["id"])])
    assert follow_up.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")


# ------------------------------------------------------------------------ reasoning


@pytest.fixture(scope="module")
def thinking_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = build_serving_model(tmp_path_factory.mktemp("thinking") / "thinker", seed=4)
    teach_reply(path, f"User: {THINKING}\nAssistant:", f" <think>{THOUGHT}</think> {ANSWER}", steps=400)
    app, _ = build_serve_app(path, served_name="thinker", api_key=KEY, default_max_tokens=60)
    yield from _serve(app)


def test_reasoning_content_apart(thinking_url: str) -> None:
    client = openai.OpenAI(base_url=f"{thinking_url}/v1", api_key=KEY, max_retries=0)
    msgs = [{"role": "user", "content": THINKING}]
    out = client.chat.completions.create(model="thinker", messages=msgs, temperature=0)
    message = out.choices[0].message
    assert message.content == ANSWER
    assert message.model_extra is not None and message.model_extra["reasoning_content"] == THOUGHT
    chunks = list(client.chat.completions.create(model="thinker", messages=msgs, temperature=0, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == THOUGHT
    assert "".join(d.content or "" for d in deltas) == ANSWER
