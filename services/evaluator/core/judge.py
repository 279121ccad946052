"""An LLM as judge: any OpenAI-compatible chat endpoint (a puyu-served model too), its prompts and
the parsing of its verdicts.

Prompts follow MT-Bench / OpenCompass's subjective evaluation: a single answer is rated
``Rating: [[n]]`` on 1..10; two answers are compared with ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie).
Parsing takes the last verdict in the answer, so a judge that reasons first and concludes last is
read right. A transport failure (down, 5xx, 429 with its Retry-After) is retried with back-off by
``post_json``; an answer holding no verdict is asked again, with sampling so that a retry can
differ, at most ``max_parse_attempts`` times; then ``JudgeError`` says why, and the task fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx

from services.evaluator.core.openai_backend import EndpointError, post_json

PairVerdict = Literal["A", "B", "tie"]
T = TypeVar("T")

PAIRWISE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. Your evaluation should consider correctness and "
    "helpfulness. You will be given a reference answer, assistant A's answer, and assistant B's answer. "
    "Your job is to evaluate which assistant's answer is better. Begin your evaluation by comparing both "
    "assistants' answers with the reference answer. Identify and correct any mistakes. Avoid any position "
    "biases and ensure that the order in which the responses were presented does not influence your "
    "decision. Do not allow the length of the responses to influence your evaluation. Be as objective as "
    "possible. After providing your explanation, output your final verdict by strictly following this "
    'format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
PAIRWISE_PROMPT = (
    "[User Question]\n{question}\n\n"
    "[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
SINGLE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider correctness and "
    "helpfulness. You will be given a reference answer and the assistant's answer. Begin your evaluation "
    "by comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be "
    "as objective as possible. After providing your explanation, you must rate the response on a scale of "
    '1 to 10 by strictly following this format: "Rating: [[5]]".'
)
SINGLE_PROMPT = (
    "[Question]\n{question}\n\n"
    "[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
    "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)

_PAIR = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*(?:/\s*10\s*)?\]\]")
_RATING_LOOSE = re.compile(r"rating\s*[:：]\s*\[?\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\]?", re.IGNORECASE)


def parse_pair_verdict(text: str) -> PairVerdict | None:
    """The last ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (or ``[[tie]]``) of the judge's answer."""
    found = _PAIR.findall(text)
    if not found:
        return None
    last = found[-1].upper()
    return "tie" if last in ("C", "TIE") else last  # type: ignore[return-value]


def parse_rating(text: str) -> float | None:
    """The last ``[[n]]`` (MT-Bench), else the last ``Rating: n``; only 1..10 counts."""
    found = _RATING.findall(text) or _RATING_LOOSE.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return value if 1.0 <= value <= 10.0 else None


class JudgeError(RuntimeError):
    """The judge could not give a verdict (endpoint down, rate-limited past the retries, or answers
    without a verdict every time); the message says which."""


@dataclass(frozen=True)
class JudgeEndpoint:
    """Where the judge is served (from the settings: never from a task file)."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    retries: int = 4  # transport retries per request
    concurrency: int = 4

    @property
    def identity(self) -> str:
        """What a judged result's version depends on: the judge model (not where it is served)."""
        return f"judge:{self.model}"


@dataclass(frozen=True)
class Judgement:
    verdict: Any
    text: str  # the judge's last answer
    attempts: int


class JudgeClient:
    def __init__(self, endpoint: JudgeEndpoint, *, sleep: Callable[[float], None] | None = None) -> None:
        self.endpoint = endpoint
        url = endpoint.base_url.rstrip("/")
        self.url = (url if url.endswith("/v1") else url + "/v1") + "/chat/completions"
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        self.client = httpx.Client(headers=headers, timeout=endpoint.timeout_s)
        self._sleep = sleep

    def ask(
        self,
        system: str | None,
        prompt: str,
        parse: Callable[[str], T | None],
        *,
        max_attempts: int = 3,
        max_tokens: int = 512,
    ) -> Judgement:
        """The judge's verdict on ``prompt``; asked again (sampling) while its answer holds none."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        text = ""
        for attempt in range(1, max_attempts + 1):
            body: dict[str, Any] = {
                "model": self.endpoint.model,
                "messages": messages,
                "max_tokens": max_tokens,
                # greedy first; a retry samples, else a deterministic judge repeats itself
                "temperature": 0.0 if attempt == 1 else 0.7,
            }
            if attempt > 1:
                body["seed"] = attempt
            text = self._answer(body)
            verdict = parse(text)
            if verdict is not None:
                return Judgement(verdict, text, attempt)
        raise JudgeError(
            f"judge {self.endpoint.model} at {self.url} gave no parseable verdict in {max_attempts} "
            f"attempt(s); last answer: {text[:200]!r}"
        )

    def _answer(self, body: dict[str, Any]) -> str:
        try:
            kwargs = {"sleep": self._sleep} if self._sleep else {}
            data = post_json(self.client, self.url, body, retries=self.endpoint.retries, **kwargs)
        except EndpointError as exc:
            raise JudgeError(f"judge {self.endpoint.model}: {exc}") from exc
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""  # nonsense: no verdict in it, asked again
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else ""

    def close(self) -> None:
        self.client.close()
