"""GSM8K: an agent with the python tool against the same model answering directly, both scored by the
evaluator (its gsm8k task, data loader, prompt builder and answer extraction).

Runs against any OpenAI-compatible endpoints: ``--gateway-url`` serves the model (``/v1/completions``),
``--agent-url`` the agent runtime (``/v1/chat/completions`` with ``model`` = the agent's name; the
runtime's own ``PUYU_AGENT_DEFAULT_MODEL`` names the model behind the agent, which must be the same one).

- direct: the evaluator's gsm8k task as it is (4-shot ``Question: ... Answer: ... #### n``) sent to the
  model; scored strict (the number after ``####``, the evaluator's metric) and flexible (the last number);
- agent: the question alone sent to the agent, which may call its tools (``python``, ``calculator``);
  scored flexible, the agent's final answer being free text.

Prints one JSON line last: both accuracies, their difference and the tool use of the agent.

    python benchmarks/agent_gsm8k.py --gateway-url http://127.0.0.1:8107 --agent-url http://127.0.0.1:8108 \
        --model puyu-demo --agent react --limit 50
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from services.evaluator.core.loaders import DataUnavailable, load
from services.evaluator.core.metrics import normalize_number
from services.evaluator.core.runner import run_task
from services.evaluator.core.tasks import GenerationConfig, TaskConfig, get_task

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """lm-evaluation-harness' "flexible-extract": the last number in the text."""
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def _parallel(fn: Callable[[str], str], prompts: Sequence[str], workers: int) -> list[str]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, prompts))


class CompletionsBackend:
    """The evaluator's Backend.generate over an OpenAI-compatible ``/v1/completions``."""

    def __init__(self, url: str, model: str, workers: int, timeout: float) -> None:
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.model, self.workers = model, workers
        self.errors: list[str] = []

    def generate(self, prompts: Sequence[str], config: GenerationConfig, progress: Any = None) -> list[str]:
        def one(prompt: str) -> str:
            body = {
                "model": self.model,
                "prompt": prompt,
                "max_tokens": config.max_new_tokens,
                "temperature": 0.0,
                "stop": config.stop,
            }
            r = self.client.post("/v1/completions", json=body)
            if r.status_code != 200:  # e.g. a prompt longer than the model's context: scored wrong, counted
                self.errors.append(r.text[:200])
                return ""
            return str(r.json()["choices"][0]["text"])

        return _parallel(one, prompts, self.workers)

    def loglikelihood(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError("generation tasks only")

    loglikelihood_rolling = loglikelihood


class AgentBackend:
    """Backend.generate over an agent: the prompt is the user message, the agent's final answer the output."""

    def __init__(self, url: str, agent: str, workers: int, timeout: float) -> None:
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.agent, self.workers = agent, workers
        self.tool_calls: dict[str, int] = {}
        self.errors: list[str] = []

    def generate(self, prompts: Sequence[str], config: GenerationConfig, progress: Any = None) -> list[str]:
        def one(prompt: str) -> str:
            body = {"model": self.agent, "messages": [{"role": "user", "content": prompt}]}
            r = self.client.post("/v1/chat/completions", json=body)
            if r.status_code != 200:
                self.errors.append(r.text[:200])
                return ""
            data = r.json()
            for step in data.get("puyu_steps", []):
                if step["kind"] == "tool_call":
                    self.tool_calls[step["tool"]] = self.tool_calls.get(step["tool"], 0) + 1
            return str(data["choices"][0]["message"]["content"])

        return _parallel(one, prompts, self.workers)

    def loglikelihood(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError("generation tasks only")

    loglikelihood_rolling = loglikelihood


def flexible(details: list[dict[str, Any]]) -> float:
    hits = [last_number(d["prediction"]) == normalize_number(str(d["target"])) for d in details]
    return sum(hits) / len(hits) if hits else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateway-url", required=True)
    p.add_argument("--agent-url", required=True)
    p.add_argument("--model", required=True, help="served model name at the gateway")
    p.add_argument("--agent", default="react")
    p.add_argument("--limit", type=int, default=50, help="first N test questions")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--fewshot", type=int, default=None, help="direct: examples shown (default: the task's 4)")
    p.add_argument(
        "--max-tokens", type=int, default=None, help="direct: new tokens (default: the task's 256)"
    )
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--details", type=Path, default=None, help="write per-question predictions (JSONL)")
    args = p.parse_args(argv)

    task = get_task("gsm8k")
    try:
        dataset = load(task.loader, args.data)
    except DataUnavailable as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    if args.fewshot is not None:  # small-context models cannot take the 4-shot prompt
        overrides["num_fewshot"] = args.fewshot
    if args.max_tokens is not None:
        overrides["generation"] = task.generation.model_copy(update={"max_new_tokens": args.max_tokens})
    task = task.model_copy(update=overrides)
    # the agent gets the question alone: its tools and protocol replace the few-shot chain of thought
    agent_task: TaskConfig = task.model_copy(update={"num_fewshot": 0, "prompt_template": "{question}"})

    started = time.perf_counter()
    direct_backend = CompletionsBackend(args.gateway_url, args.model, args.workers, args.timeout)
    direct = run_task(task, direct_backend, dataset, limit=args.limit)
    direct_s = time.perf_counter() - started
    agent_backend = AgentBackend(args.agent_url, args.agent, args.workers, args.timeout)
    started = time.perf_counter()
    agent = run_task(agent_task, agent_backend, dataset, limit=args.limit)
    agent_s = time.perf_counter() - started

    if args.details:
        with args.details.open("w", encoding="utf-8") as f:
            for how, outcome in (("direct", direct), ("agent", agent)):
                for d in outcome.details:
                    f.write(json.dumps({"how": how, **{k: v for k, v in d.items() if k != "prompt"}}) + "\n")
    direct_flex, agent_flex = flexible(direct.details), flexible(agent.details)
    result = {
        "benchmark": "agent_gsm8k",
        "model": args.model,
        "agent": args.agent,
        "questions": direct.num_samples,
        "direct_fewshot": task.num_fewshot,
        "direct_exact_match_strict": direct.metrics["exact_match"],
        "direct_accuracy_flexible": direct_flex,
        "agent_accuracy_flexible": agent_flex,
        "agent_minus_direct": agent_flex - direct_flex,
        "agent_tool_calls": agent_backend.tool_calls,
        "direct_failed_requests": len(direct_backend.errors),
        "agent_failed_requests": len(agent_backend.errors),
        "first_error": (direct_backend.errors + agent_backend.errors + [None])[0],
        "direct_seconds": round(direct_s, 1),
        "agent_seconds": round(agent_s, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
