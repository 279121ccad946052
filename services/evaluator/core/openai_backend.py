"""Any OpenAI-compatible server as a backend (puyu's gateway, vLLM, LMDeploy, llama.cpp ...).

Loglikelihood uses the legacy completions API with ``echo`` and ``logprobs`` (the prompt's own
token logprobs, located by ``text_offset``); generation uses chat completions (or completions,
for base models given few-shot text). Requests go in parallel, retried on 429 / 5xx / connection
errors; a server that lacks echo + logprobs gets an error saying so, not a wrong score.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx

from services.evaluator.core.backends import Loglikelihood, Message, Progress, RollingLoglikelihood
from services.evaluator.core.metrics import truncate_at_stop
from services.evaluator.core.tasks import GenerationConfig

log = logging.getLogger(__name__)


class EndpointError(RuntimeError):
    """The endpoint failed or answered something unusable (the message names which and why)."""


def retry_delay(response: httpx.Response | None, attempt: int, max_wait_s: float = 30.0) -> float:
    """How long to wait before the next attempt: the server's Retry-After (seconds) when it sends
    one, else exponential back-off (0.5 s, 1 s, 2 s ... at most 8 s)."""
    if response is not None:
        header = response.headers.get("retry-after")
        if header:
            try:
                return min(max(float(header), 0.0), max_wait_s)
            except ValueError:
                pass  # an HTTP date: back off as usual
    return min(2.0**attempt * 0.5, 8.0)


def post_json(
    client: httpx.Client,
    url: str,
    body: dict[str, Any],
    *,
    retries: int,
    sleep: Any = time.sleep,
) -> dict[str, Any]:
    """POST with retries on connection errors, 429 and 5xx (honouring Retry-After); any other
    status, or a body that is not a JSON object, is an ``EndpointError`` naming the answer."""
    error = ""
    for attempt in range(retries + 1):
        response: httpx.Response | None = None
        try:
            response = client.post(url, json=body)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                try:
                    data = response.json()
                except ValueError:
                    data = None
                if isinstance(data, dict):
                    return data
                error = f"HTTP 200 with a body that is not a JSON object: {response.text[:300]!r}"
            else:
                error = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code < 500 and response.status_code != 429:
                    raise EndpointError(f"{url} rejected the request: {error}")
        if attempt < retries:
            sleep(retry_delay(response, attempt))
    raise EndpointError(f"{url} failed after {retries + 1} attempts: {error}")


class OpenAIBackend:
    def __init__(
        self,
        base_url: str,
        model_name: str,
        *,
        api_key: str | None = None,
        batch_size: int = 8,
        concurrency: int = 4,
        timeout_s: float = 120.0,
        retries: int = 3,
        generation_api: Literal["chat", "completions"] = "chat",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model_name = model_name
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.retries = retries
        self.generation_api = generation_api
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout_s)
        self.cache_key = f"openai:{self.base_url}:{model_name}"
        # the served model's template renders chat turns (the server's business, named by the model)
        self.chat_format: str | None = "chat:endpoint" if generation_api == "chat" else None

    # ------------------------------------------------------------------------------ transport
    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return post_json(self.client, f"{self.base_url}{path}", body, retries=self.retries)

    def _parallel(self, fn: Any, items: list[Any], progress: Progress | None, total: int) -> list[Any]:
        done = 0
        out = []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            for result in pool.map(fn, items):
                out.append(result)
                done += len(result) if isinstance(result, list) else 1
                if progress:
                    progress(min(done, total), total)
        return out

    def _echo(self, prompts: list[str]) -> list[dict[str, Any]]:
        """Prompt token logprobs (tokens, token_logprobs, text_offset, top_logprobs) per prompt."""
        body = {
            "model": self.model_name,
            "prompt": prompts,
            "max_tokens": 1,  # some servers refuse 0; the one generated token is ignored
            "temperature": 0.0,
            "echo": True,
            "logprobs": 1,
        }
        data = self._post("/completions", body)
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise EndpointError(f"{self.base_url}: {len(choices)} choices for {len(prompts)} prompts")
        out = []
        for choice in choices:
            lp = choice.get("logprobs") or {}
            if not lp.get("token_logprobs") or not lp.get("text_offset"):
                raise EndpointError(
                    f"{self.base_url} returned no prompt logprobs: the server must support completions "
                    "with echo=true and logprobs (vLLM, LMDeploy and llama.cpp do) for loglikelihood tasks"
                )
            out.append(lp)
        return out

    # ------------------------------------------------------------------------------ API
    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[Loglikelihood]:
        batches = [list(requests[i : i + self.batch_size]) for i in range(0, len(requests), self.batch_size)]

        def score(batch: list[tuple[str, str]]) -> list[Loglikelihood]:
            echoed = self._echo([c + x for c, x in batch])
            return [
                _continuation_logprob(lp, len(c), len(c) + len(x))
                for (c, x), lp in zip(batch, echoed, strict=False)
            ]

        return [r for rs in self._parallel(score, batches, progress, len(requests)) for r in rs]

    def loglikelihood_rolling(
        self, texts: Sequence[str], progress: Progress | None = None
    ) -> list[RollingLoglikelihood]:
        batches = [list(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]

        def score(batch: list[str]) -> list[RollingLoglikelihood]:
            out = []
            for text, lp in zip(batch, self._echo(batch), strict=True):
                # the first token has no context (None); the generated token lies past the text
                vals = [
                    v
                    for v, off in zip(lp["token_logprobs"], lp["text_offset"], strict=False)
                    if v is not None and off < len(text)
                ]
                out.append(RollingLoglikelihood(float(sum(vals)), len(vals)))
            return out

        return [r for rs in self._parallel(score, batches, progress, len(texts)) for r in rs]

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, progress: Progress | None = None
    ) -> list[str]:
        def one(item: tuple[int, str]) -> str:
            index, prompt = item
            body = self._generation_body(config, index)
            if self.generation_api == "chat":
                body["messages"] = [{"role": "user", "content": prompt}]
                return self._chat_text(body, config)
            body["prompt"] = prompt
            data = self._post("/completions", body)
            text = (data.get("choices") or [{}])[0].get("text")
            if text is None:
                raise EndpointError(f"{self.base_url}: no text in the answer: {str(data)[:300]}")
            return truncate_at_stop(str(text), config.stop)

        return self._parallel(one, list(enumerate(prompts)), progress, len(prompts))

    def generate_chat(
        self,
        conversations: Sequence[list[Message]],
        config: GenerationConfig,
        progress: Progress | None = None,
    ) -> list[str]:
        """The turns as they are, through /v1/chat/completions (the server applies the template)."""

        def one(item: tuple[int, list[Message]]) -> str:
            index, messages = item
            return self._chat_text({**self._generation_body(config, index), "messages": messages}, config)

        return self._parallel(one, list(enumerate(conversations)), progress, len(conversations))

    def _generation_body(self, config: GenerationConfig, index: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
        }
        if config.sampling:
            # one seed per request: n samples of one prompt must differ on a server that honours seeds
            body.update(top_p=config.top_p, seed=config.seed + index)
        if config.stop:
            body["stop"] = config.stop[:4]  # the OpenAI API allows at most 4 stop sequences
        return body

    def _chat_text(self, body: dict[str, Any], config: GenerationConfig) -> str:
        data = self._post("/chat/completions", body)
        text = (data.get("choices") or [{}])[0].get("message", {}).get("content")
        if text is None:
            raise EndpointError(f"{self.base_url}: no text in the answer: {str(data)[:300]}")
        return truncate_at_stop(str(text), config.stop)

    def close(self) -> None:
        self.client.close()


def _continuation_logprob(lp: dict[str, Any], start: int, end: int) -> Loglikelihood:
    """Sum the logprobs of the tokens that begin inside [start, end) of the echoed prompt.

    A token straddling the boundary (context and continuation merged) counts as continuation, as
    when the pair is tokenized jointly."""
    total, greedy, found = 0.0, True, False
    tops = lp.get("top_logprobs") or []
    for i, (token, value, offset) in enumerate(
        zip(lp["tokens"], lp["token_logprobs"], lp["text_offset"], strict=False)
    ):
        if offset >= end or value is None:
            continue
        token_end = offset + len(token)
        if token_end <= start:
            continue
        found = True
        total += float(value)
        top = tops[i] if i < len(tops) and tops[i] else None
        if top:
            greedy = greedy and max(top, key=lambda t: top[t]) == token
    if not found:
        raise EndpointError("no echoed token covers the continuation (text_offset out of range)")
    return Loglikelihood(total, greedy)
