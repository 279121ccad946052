"""Judged and pairwise evaluation against real HTTP judges.

- A scripted OpenAI-compatible judge (FastAPI on uvicorn in this process) that answers by rule: an
  answer holding the reference wins, or rates 9 (else 2). Modes make it fail the ways a real judge
  does: ``down`` (HTTP 503), ``nonsense`` (200 without a verdict, or not JSON at all), ``ratelimit``
  (429 with Retry-After for the first requests), ``position_a`` (always "[[A]]", a judge with a
  position bias), ``down_after`` (fails after N requests, to check that what was judged is kept).
- ``puyu serve`` on a tiny random model as the judge: its verdicts are noise; the test checks the
  plumbing (the request reaches the served model, its answer is parsed, an answer without a
  verdict is asked again a bounded number of times, then the error names why).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from services.evaluator.core.backends import Loglikelihood, Progress, RollingLoglikelihood
from services.evaluator.core.cache import ResultCache
from services.evaluator.core.judge import JudgeClient, JudgeEndpoint, JudgeError, parse_pair_verdict
from services.evaluator.core.judging import Opponent
from services.evaluator.core.loaders import load
from services.evaluator.core.runner import evaluate, run_task
from services.evaluator.core.stats import wilson_interval
from services.evaluator.core.tasks import GenerationConfig, get_task
from shared import samples
from shared.natsserver import free_port
from tests.support.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
FACTS = dict(samples.fact_prompts())

_SECTION = r"\[The Start of {name}\]\n(.*?)\n\[The End of {name}\]"


def _section(text: str, name: str) -> str:
    match = re.search(_SECTION.format(name=re.escape(name)), text, re.DOTALL)
    return match.group(1) if match else ""


def rule_verdict(prompt: str) -> str:
    """The scripted judge's rule: the answer that holds the reference is better."""
    reference = _section(prompt, "Reference Answer").strip()
    if "[The Start of Assistant A's Answer]" in prompt:
        a = reference in _section(prompt, "Assistant A's Answer")
        b = reference in _section(prompt, "Assistant B's Answer")
        verdict = "[[A]]" if a and not b else "[[B]]" if b and not a else "[[C]]"
        return f"Comparing both with the reference {reference!r}. Final verdict: {verdict}"
    good = reference in _section(prompt, "Assistant's Answer")
    return f"The answer {'matches' if good else 'misses'} the reference. Rating: [[{9 if good else 2}]]"


class ScriptedJudge:
    """An OpenAI-compatible chat endpoint that judges by rule, in a uvicorn thread."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.limit = 0  # ratelimit: how many 429s; down_after: how many answers before failing
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            with self.lock:
                self.requests.append(body)
                n = len(self.requests)
            if self.mode == "down" or (self.mode == "down_after" and n > self.limit):
                return PlainTextResponse("judge overloaded", status_code=503)
            if self.mode == "ratelimit" and n <= self.limit:
                return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": "1"})
            if self.mode == "nonsense":
                if n % 2:
                    return PlainTextResponse("<html>not json</html>")
                text = "I refuse to give a verdict."
            elif self.mode == "position_a":
                text = "The first answer is better. [[A]]"
            else:
                text = rule_verdict(body["messages"][-1]["content"])
            return JSONResponse(
                {
                    "id": f"j{n}",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                }
            )

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ScriptedJudge:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("scripted judge did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def reset(self, mode: str = "ok", limit: int = 0) -> None:
        with self.lock:
            self.mode, self.limit, self.requests = mode, limit, []


class FactsModel:
    """A scripted chat model: knows the capitals (``knows``) or names another country's."""

    def __init__(self, knows: bool) -> None:
        self.knows = knows
        self.chat_format = None  # no template: plain prompts

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, progress: Progress | None = None
    ) -> list[str]:
        wrong = dict(zip(FACTS, list(FACTS.values())[1:] + list(FACTS.values())[:1], strict=True))
        return [f" {(FACTS if self.knows else wrong)[p]}." for p in prompts]

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[Loglikelihood]:
        raise NotImplementedError

    def loglikelihood_rolling(
        self, texts: Sequence[str], progress: Progress | None = None
    ) -> list[RollingLoglikelihood]:
        raise NotImplementedError


@pytest.fixture(scope="module")
def judge_server() -> Iterator[ScriptedJudge]:
    with ScriptedJudge() as server:
        yield server


def _opponent(knows: bool, label: str = "facts:1") -> Opponent:
    return Opponent(label, f"scripted:{knows}", lambda: (FactsModel(knows), f"scripted:{knows}"))


def _judge(server: ScriptedJudge, **kw: Any) -> JudgeClient:
    return JudgeClient(JudgeEndpoint(server.url, "rule-judge", **kw))


def test_pairwise_win_rate_both_orders_interval_and_calibration(
    judge_server: ScriptedJudge, tmp_path: Path
) -> None:
    judge_server.reset()
    task = get_task("pairwise_facts")
    cache = ResultCache(tmp_path / "cache.sqlite")
    report = evaluate(
        [task],
        FactsModel(knows=True),
        limit=10,
        cache=cache,
        model_key="knower",
        judge=_judge(judge_server),
        opponent=_opponent(knows=False),
    )
    (outcome,) = report.outcomes
    m = outcome.metrics
    assert m["win_rate"] == 1.0 and m["position_consistency"] == 1.0
    assert (m["win_rate_lower"], m["win_rate_upper"]) == pytest.approx(wilson_interval(10, 10))
    assert m["win_rate_lower"] == pytest.approx(0.7225, abs=1e-4)  # Wilson 10/10: [0.7225, 1]
    # the rule judge agrees with every gold label of the shipped calibration set
    assert m["judge_agreement"] == 1.0 and len(outcome.calibration) == 12
    assert outcome.opponent == "facts:1"
    # both orders asked for every prompt: 10 prompts x 2 + 12 calibration items
    assert len(judge_server.requests) == 32
    row = outcome.details[0]
    assert row["verdicts"] == ["A", "B"] and FACTS[row["prompt"]] in row["prediction"]
    # the other way round: the candidate loses everything
    worse = run_task(
        task,
        FactsModel(knows=False),
        load(task.loader, None),
        limit=10,
        judge=_judge(judge_server),
        opponent=_opponent(knows=True),
    )
    assert worse.metrics["win_rate"] == 0.0 and worse.metrics["win_rate_upper"] == pytest.approx(
        1 - 0.7225, abs=1e-4
    )
    # a repeated run is served by the cache: no judge request at all
    judge_server.reset()
    again = evaluate(
        [task],
        FactsModel(knows=True),
        limit=10,
        cache=cache,
        model_key="knower",
        judge=_judge(judge_server),
        opponent=_opponent(knows=False),
    )
    assert again.outcomes[0].cached == 10 and judge_server.requests == []
    # another opponent is another result version: nothing reused
    other = evaluate(
        [task],
        FactsModel(knows=True),
        limit=2,
        cache=cache,
        model_key="knower",
        judge=_judge(judge_server),
        opponent=_opponent(knows=True, label="facts:2"),
    )
    assert other.outcomes[0].cached == 0 and other.outcomes[0].version_hash != outcome.version_hash
    assert other.outcomes[0].metrics["win_rate"] == 0.5  # both know: ties


def test_position_bias_cancels_and_calibration_exposes_it(judge_server: ScriptedJudge) -> None:
    judge_server.reset("position_a")
    task = get_task("pairwise_facts")
    outcome = run_task(
        task,
        FactsModel(knows=True),
        load(task.loader, None),
        limit=6,
        judge=_judge(judge_server),
        opponent=_opponent(knows=False),
    )
    # always "[[A]]": the candidate wins as A and loses as B, so every prompt scores 1/2
    assert outcome.metrics["win_rate"] == 0.5 and outcome.metrics["position_consistency"] == 0.0
    # agreeing with gold only where gold is A: 4 of the 12 labelled pairs
    assert outcome.metrics["judge_agreement"] == pytest.approx(4 / 12)


def test_single_answer_grading(judge_server: ScriptedJudge) -> None:
    judge_server.reset()
    task = get_task("judged_facts")
    good = run_task(
        task, FactsModel(knows=True), load(task.loader, None), limit=5, judge=_judge(judge_server)
    )
    bad = run_task(
        task, FactsModel(knows=False), load(task.loader, None), limit=5, judge=_judge(judge_server)
    )
    assert good.metrics["judge_score"] == 9.0 and good.metrics["judge_pass_rate"] == 1.0
    assert bad.metrics["judge_score"] == 2.0 and bad.metrics["judge_pass_rate"] == 0.0
    assert good.metrics["judge_agreement"] == 1.0 and good.stderr["judge_pass_rate"] == 0.0


def test_judge_down_fails_the_task_with_the_reason_and_keeps_what_was_judged(
    judge_server: ScriptedJudge, tmp_path: Path
) -> None:
    task = get_task("pairwise_facts")
    cache = ResultCache(tmp_path / "cache.sqlite")
    fast = {"retries": 2, "concurrency": 1}
    # down from the start: the task fails, naming the endpoint's answer; the other task still runs
    judge_server.reset("down")
    report = evaluate(
        [task, get_task("demo_facts")],
        FactsModel(knows=True),
        limit=10,
        cache=cache,
        model_key="knower",
        judge=_judge(judge_server, **fast),
        opponent=_opponent(knows=False),
    )
    assert [o.task.name for o in report.outcomes] == ["demo_facts"]
    assert "failed after 3 attempts" in report.failed["pairwise_facts"]
    assert "503" in report.failed["pairwise_facts"]
    # bounded: the failing request's 3 attempts, and at most one item the worker took meanwhile;
    # the queued rest is cancelled, not asked
    assert 3 <= len(judge_server.requests) <= 6
    # fails half-way (calibration 12 + one chunk of 8 prompts x 2 orders judged): that chunk is kept
    judge_server.reset("down_after", limit=12 + 16)
    report = evaluate(
        [task],
        FactsModel(knows=True),
        limit=10,
        cache=cache,
        model_key="knower",
        judge=_judge(judge_server, **fast),
        opponent=_opponent(knows=False),
    )
    assert "pairwise_facts" in report.failed
    judge_server.reset()
    report = evaluate(
        [task],
        FactsModel(knows=True),
        limit=10,
        cache=cache,
        model_key="knower",
        judge=_judge(judge_server, **fast),
        opponent=_opponent(knows=False),
    )
    assert report.outcomes[0].cached == 8 and report.outcomes[0].metrics["win_rate"] == 1.0
    assert len(judge_server.requests) == 2 * 2  # only the 2 prompts not judged before; calibration cached


def test_nonsense_is_asked_again_a_bounded_number_of_times(judge_server: ScriptedJudge) -> None:
    judge_server.reset("nonsense")
    client = _judge(judge_server, retries=1)
    with pytest.raises(JudgeError, match=r"no parseable verdict in 3 attempt\(s\)"):
        client.ask(None, "which is better?", parse_pair_verdict, max_attempts=3)
    # each attempt: a body that is not JSON (a transport retry), then a verdict-less answer
    assert len(judge_server.requests) == 6
    assert [r["temperature"] for r in judge_server.requests] == [
        0.0,
        0.0,
        0.7,
        0.7,
        0.7,
        0.7,
    ]  # retries sample


def test_rate_limit_is_waited_out_as_retry_after_says(judge_server: ScriptedJudge) -> None:
    judge_server.reset("ratelimit", limit=2)
    client = _judge(judge_server, retries=3)
    prompt = (
        "[The Start of Reference Answer]\nX\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant A's Answer]\nX\n[The End of Assistant A's Answer]\n\n"
        "[The Start of Assistant B's Answer]\nY\n[The End of Assistant B's Answer]"
    )
    started = time.monotonic()
    got = client.ask(None, prompt, parse_pair_verdict)
    assert got.verdict == "A" and len(judge_server.requests) == 3
    assert time.monotonic() - started >= 2.0  # Retry-After: 1, twice
    # more 429s than retries: fails naming the status
    judge_server.reset("ratelimit", limit=10)
    with pytest.raises(JudgeError, match="429"):
        _judge(judge_server, retries=1).ask(None, prompt, parse_pair_verdict)


# ------------------------------------------------------------------------------ puyu serve as judge
def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


@pytest.mark.slow
def test_a_puyu_served_model_as_judge(tmp_path: Path) -> None:
    texts = samples.heldout_texts(60, seed=5) + ["[[A]] [[B]] [[C]] Rating: [[7]]"] * 20
    model = build_tiny_model(tmp_path / "judge", texts, vocab_size=320)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    tok.chat_template = samples.CHAT_TEMPLATE
    tok.save_pretrained(str(model))
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--served-name",
        "tiny-judge",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        client = JudgeClient(JudgeEndpoint(url, "tiny-judge", retries=1))
        seen: list[str] = []

        def parse(text: str) -> str | None:
            seen.append(text)
            return parse_pair_verdict(text)

        try:
            got = client.ask("Judge fairly.", "[[A]] or [[B]]?", parse, max_attempts=3, max_tokens=12)
        except JudgeError as exc:  # noise without a verdict: asked 3 times, then the reason
            assert "no parseable verdict in 3 attempt(s)" in str(exc) and len(seen) == 3
        else:
            assert got.verdict in ("A", "B", "tie") and got.attempts == len(seen) <= 3
        assert all(isinstance(t, str) for t in seen) and seen  # answers came back through the chat API
        # a model name the server does not serve is refused at once (not retried as a missing verdict)
        with pytest.raises(JudgeError, match="rejected"):
            JudgeClient(JudgeEndpoint(url, "no-such-judge", retries=0)).ask(None, "x", parse_pair_verdict)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
