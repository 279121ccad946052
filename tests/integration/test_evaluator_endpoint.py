"""The OpenAI-compatible backend over real HTTP servers.

- ``puyu serve`` (the inference gateway's standalone server) in a subprocess: generation through
  chat completions, the CLI's ``--endpoint`` path writing summary.json, and loglikelihoods (echo +
  logprobs) equal to the in-process backend's.
- A reference completions server (vLLM's echo/logprobs response shape, scored with transformers)
  on uvicorn in this process: the endpoint backend's loglikelihoods and multiple-choice answers
  must equal the in-process backend's on the same model.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from rich.console import Console

from services.evaluator.cli import eval_cmd
from services.evaluator.config import EvaluatorSettings
from services.evaluator.core.hf_backend import HFBackend
from services.evaluator.core.openai_backend import EndpointError, OpenAIBackend
from services.evaluator.core.tasks import GenerationConfig
from shared import samples
from shared.natsserver import free_port
from tests.support.tiny_model import build_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a server subprocess: > 20 s on 2 busy cores
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = samples.heldout_texts(150, seed=3) + [p + " " + t for p, t in samples.fact_prompts()]
    path = build_tiny_model(tmp_path_factory.mktemp("endpoint") / "tiny", texts, vocab_size=400)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # the prompt as it is
    tok.save_pretrained(str(path))
    return path


def _wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


@pytest.fixture(scope="module")
def puyu_serve(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "wb")
    cmd = [sys.executable, "-m", "services.cli", "serve", "--model", str(tiny_model), "--port", str(port)]
    cmd += ["--served-name", "tiny", "--dtype", "float32"]  # compared with transformers in fp32
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_generation_through_puyu_serve_and_the_cli(puyu_serve: str, tiny_model: Path, tmp_path: Path) -> None:
    backend = OpenAIBackend(puyu_serve, "tiny", concurrency=2)
    prompts = [p for p, _ in samples.fact_prompts()[:4]]
    outs = backend.generate(prompts, GenerationConfig(max_new_tokens=6, stop=["\n"]))
    assert len(outs) == 4 and all(isinstance(o, str) and "\n" not in o for o in outs)
    # completions (base models, few-shot text) give the same greedy text here: the template is the prompt
    plain = OpenAIBackend(puyu_serve, "tiny", generation_api="completions")
    assert plain.generate(prompts, GenerationConfig(max_new_tokens=6, stop=["\n"])) == outs
    settings = EvaluatorSettings(home=tmp_path / "home", evaluator_data_dir=tmp_path / "nodata")
    out = tmp_path / "out"
    report = eval_cmd(
        ["demo_facts"],
        None,
        out,
        limit=5,
        endpoint=puyu_serve,
        model_name="tiny",
        settings=settings,
        console=Console(file=io.StringIO()),
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"demo_facts"} and 0.0 <= summary["demo_facts"]["accuracy"] <= 1.0
    assert report.outcomes[0].num_samples == 5
    rows = (out / "details" / "demo_facts.jsonl").read_text().splitlines()
    assert len(rows) == 5 and {"prompt", "prediction", "extracted", "correct"} <= set(json.loads(rows[0]))
    # a wrong model name is an error naming the server's answer, not a silent zero
    with pytest.raises(EndpointError, match=r"rejected|failed"):
        OpenAIBackend(puyu_serve, "no-such-model", retries=0).generate(
            ["x"], GenerationConfig(max_new_tokens=2)
        )


def test_echo_logprobs_through_puyu_serve_equal_transformers(puyu_serve: str, tiny_model: Path) -> None:
    """lm-evaluation-harness's loglikelihood request (echo, logprobs=1, max_tokens=1) through ``puyu
    serve``: the logprob of every prompt token, also when the request ends on its first generated
    token, equal to transformers' forward over the same token ids (the server's own tokenisation)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    texts = [f"{p} {t}" for p, t in samples.fact_prompts()[:3]] + [t[:300] for t in samples.heldout_texts(2)]
    references = []
    for text in texts:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            lp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        reference = [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]
        references.append(reference)
        for max_tokens in (1, 2):
            body = {"model": "tiny", "prompt": text, "echo": True, "logprobs": 1, "max_tokens": max_tokens}
            r = httpx.post(f"{puyu_serve}/v1/completions", json={**body, "temperature": 0.0}, timeout=60)
            r.raise_for_status()
            got = r.json()["choices"][0]["logprobs"]["token_logprobs"]
            assert len(got) == len(ids) + max_tokens
            assert got[0] is None  # the first token has no context
            assert got[1 : len(ids)] == pytest.approx(reference, abs=1e-4)

    # The evaluator's endpoint backend over it: a rolling loglikelihood over every token, not 0 over 0.
    rolling = OpenAIBackend(puyu_serve, "tiny", retries=0).loglikelihood_rolling(texts)
    for got_rolling, reference in zip(rolling, references, strict=True):
        assert got_rolling.num_tokens == len(reference) > 0
        assert got_rolling.logprob == pytest.approx(sum(reference), abs=1e-3)


# ------------------------------------------------------------------ reference echo/logprobs server
def _reference_app(model_path: Path) -> FastAPI:
    """vLLM's legacy-completions answer for echo=true, logprobs=1, computed with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path)).eval()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    def completions(body: dict[str, Any]) -> dict[str, Any]:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = []
        for i, prompt in enumerate(prompts):
            ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]
            with torch.no_grad():
                lp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            tokens, offsets, values, tops, text = [], [], [], [], ""
            for n, t in enumerate(ids[1:], start=1):
                piece = tok.decode(ids[1 : n + 1])[len(text) :]
                tokens.append(piece)
                offsets.append(len(text))
                text += piece
                values.append(float(lp[n - 1, t]))
                best = int(lp[n - 1].argmax())
                tops.append({tok.decode([best]) if best != t else piece: float(lp[n - 1, best])})
            choices.append(
                {
                    "index": i,
                    "text": prompt,
                    "finish_reason": "length",
                    "logprobs": {
                        "tokens": tokens,
                        "token_logprobs": values,
                        "text_offset": offsets,
                        "top_logprobs": tops,
                    },
                }
            )
        return {"object": "text_completion", "model": body["model"], "choices": choices}

    return app


@pytest.fixture(scope="module")
def reference_server(tiny_model: Path) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_reference_app(tiny_model), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_echo_logprobs_match_the_in_process_backend(reference_server: str, tiny_model: Path) -> None:
    remote = OpenAIBackend(reference_server, "tiny", batch_size=3, concurrency=2)
    local = HFBackend(tiny_model, batch_size=4, dtype="float32")  # the reference server's precision
    reqs = [(p, f" {t}") for p, t in samples.fact_prompts()[:5]] + [
        (p, " the") for p, _ in samples.fact_prompts()[:3]
    ]
    for a, b in zip(remote.loglikelihood(reqs), local.loglikelihood(reqs), strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
    texts = [t[:300] for t in samples.heldout_texts(3)]  # within the model's 256 positions: one window
    for a, b in zip(remote.loglikelihood_rolling(texts), local.loglikelihood_rolling(texts), strict=True):
        assert a.num_tokens == b.num_tokens and a.logprob == pytest.approx(b.logprob, abs=1e-2)
