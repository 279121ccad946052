"""Verdict parsing, the estimators (Wilson, standard errors, pass@k), chat prompts, comparison."""

from __future__ import annotations

import io
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from services.evaluator.cli import compare_cmd
from services.evaluator.config import EvaluatorSettings
from services.evaluator.core.backends import Loglikelihood, Progress, RollingLoglikelihood
from services.evaluator.core.chat import chat_messages
from services.evaluator.core.compare import UnknownRun
from services.evaluator.core.judge import parse_pair_verdict, parse_rating
from services.evaluator.core.judging import pair_score
from services.evaluator.core.loaders import Dataset
from services.evaluator.core.metrics import pass_at_k
from services.evaluator.core.openai_backend import EndpointError, post_json, retry_delay
from services.evaluator.core.runner import EvalReport, aggregate, run_task, standard_errors, write_report
from services.evaluator.core.stats import binomial_stderr, mean_stderr, wilson_interval
from services.evaluator.core.tasks import GenerationConfig, LoaderConfig, TaskConfig, get_task


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Assistant A is more accurate. [[A]]", "A"),
        ("[[B]]", "B"),
        ("Both equally good: [[C]]", "tie"),
        ("[[ tie ]]", "tie"),
        ("A says [[A]] but on reflection my final verdict is [[B]]", "B"),  # the last verdict counts
        ("I prefer A.", None),
        ("[A]", None),
        ("", None),
    ],
)
def test_pair_verdicts(text: str, verdict: str | None) -> None:
    assert parse_pair_verdict(text) == verdict


@pytest.mark.parametrize(
    ("text", "rating"),
    [
        ("Rating: [[7]]", 7.0),
        ("good answer [[8.5]]", 8.5),
        ("[[9/10]]", 9.0),
        ("Rating: 6", 6.0),
        ("Rating: [[11]]", None),  # out of 1..10
        ("rating: [[0]]", None),
        ("no number here", None),
    ],
)
def test_ratings(text: str, rating: float | None) -> None:
    assert parse_rating(text) == rating


def test_wilson_interval_matches_the_formula_and_known_values() -> None:
    # 8 of 10, z = 1.96: (0.4902, 0.9433) (e.g. statsmodels' proportion_confint(method="wilson"))
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)  # never a point
    assert wilson_interval(5, 10)[0] == pytest.approx(1 - wilson_interval(5, 10)[1])  # symmetric


def test_standard_errors() -> None:
    assert binomial_stderr(0.5, 100) == pytest.approx(0.05)
    assert mean_stderr([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(1.6666667 / 4))
    task = TaskConfig(
        name="t",
        loader=LoaderConfig(kind="sample_facts"),
        output_type="generation",
        metrics=["accuracy"],
        primary_metric="accuracy",
    )
    details = [{"scores": {"accuracy": float(i % 4 == 0)}} for i in range(40)]
    assert standard_errors(task, details) == {"accuracy": pytest.approx(math.sqrt(0.25 * 0.75 / 40))}


def test_pass_at_k_equals_the_average_over_every_k_subset() -> None:
    """The unbiased estimator against its definition: the share of k-subsets of the n samples that
    hold at least one passing one."""
    for n, c, k in [(5, 2, 1), (5, 2, 2), (10, 3, 5), (6, 0, 3), (4, 4, 2), (8, 1, 8)]:
        outcomes = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(outcomes, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


class CodeModel:
    """Completes every problem with the i-th of a fixed list of bodies, cycling (n samples each)."""

    def __init__(self, bodies: list[str]) -> None:
        self.bodies = bodies

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, progress: Progress | None = None
    ) -> list[str]:
        return [self.bodies[i % len(self.bodies)] for i in range(len(prompts))]

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[Loglikelihood]:
        raise NotImplementedError

    def loglikelihood_rolling(
        self, texts: Sequence[str], progress: Progress | None = None
    ) -> list[RollingLoglikelihood]:
        raise NotImplementedError


def test_pass_at_k_over_n_sandboxed_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUYU_SANDBOX_ALLOW_UNISOLATED", "1")  # where the kernel cannot isolate
    rows = [
        {
            "task_id": "p0",
            "prompt": "def inc(x):\n",
            "test": "def check(f):\n    assert f(1) == 2\n",
            "entry_point": "inc",
        }
    ]
    (tmp_path / "code.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = TaskConfig(
        name="code",
        loader=LoaderConfig(kind="jsonl", path="code.jsonl", id_field="task_id"),
        output_type="code_execution",
        generation=GenerationConfig(num_samples=4, temperature=0.8),
        metrics=["pass@1", "pass@2", "pass@4"],
        primary_metric="pass@1",
    )
    from services.evaluator.core.loaders import load

    # of 4 samples, the 1st and 3rd pass
    model = CodeModel(["    return x + 1\n", "    return x\n"])
    outcome = run_task(task, model, load(task.loader, tmp_path))
    assert outcome.details[0]["num_passed"] == 2 and len(outcome.details[0]["predictions"]) == 4
    assert outcome.metrics == pytest.approx({"pass@1": 0.5, "pass@2": 1 - 1 / 6, "pass@4": 1.0})
    with pytest.raises(ValueError, match="pass@8 needs at least 8 samples"):
        TaskConfig.model_validate(task.model_dump() | {"metrics": ["pass@8"], "primary_metric": "pass@8"})


def test_sampling_fields_change_the_hash_only_when_set() -> None:
    base = get_task("humaneval")
    assert base.version_hash == "58260031a95bb4d2cc1d9f37a937b5f6c7c2b82e42196709ff6f5506f2302e64"
    sampled = base.model_copy(
        update={"generation": base.generation.model_copy(update={"num_samples": 5, "temperature": 0.8})}
    )
    assert sampled.version_hash != base.version_hash


def test_chat_turns_as_opencompass_places_them() -> None:
    task = TaskConfig(
        name="t",
        loader=LoaderConfig(kind="jsonl", path="x"),
        output_type="generation",
        prompt_template="Q: {q}",
        fewshot_target_template=" {a}",
        num_fewshot=2,
        system_prompt="Answer briefly.",
        metrics=["accuracy"],
        primary_metric="accuracy",
    )
    ds = Dataset([{"id": 1, "q": "3+3", "a": "6"}], [{"q": "1+1", "a": "2"}, {"q": "2+2", "a": "4"}])
    assert chat_messages(task, ds, ds.samples[0]) == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Q: 1+1"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Q: 2+2"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Q: 3+3"},
    ]


def test_pairwise_scores_and_interval() -> None:
    assert pair_score("A", "B") == 1.0 and pair_score("B", "A") == 0.0
    assert pair_score("A", "A") == 0.5 and pair_score("tie", "tie") == 0.5  # position bias cancels
    task = get_task("pairwise_facts")
    details = [{"scores": {"win_rate": s, "position_consistency": 1.0}} for s in [1, 1, 1, 0.5, 0]]
    m = aggregate(task, details)
    assert m["win_rate"] == pytest.approx(0.7)
    assert (m["win_rate_lower"], m["win_rate_upper"]) == pytest.approx(wilson_interval(3.5, 5))


def test_retry_after_and_back_off() -> None:
    import httpx

    assert retry_delay(httpx.Response(429, headers={"Retry-After": "3"}), 0) == 3.0
    assert retry_delay(httpx.Response(429, headers={"Retry-After": "9999"}), 0) == 30.0  # capped
    assert retry_delay(httpx.Response(503), 2) == 2.0 and retry_delay(None, 10) == 8.0
    waits: list[float] = []
    answers = iter([httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200, json={"ok": 1})])
    client = httpx.Client(transport=httpx.MockTransport(lambda request: next(answers)))
    assert post_json(client, "http://judge/v1/x", {}, retries=2, sleep=waits.append) == {"ok": 1}
    assert waits == [2.0]
    bad = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(401, text="no key")))
    with pytest.raises(EndpointError, match="rejected the request: HTTP 401"):
        post_json(bad, "http://judge/v1/x", {}, retries=3, sleep=waits.append)


def _run(folder: Path, accuracy: float, n: int, version: str = "v1") -> Path:
    task = get_task("demo_facts")
    k = round(accuracy * n)
    details = [{"id": i, "scores": {"accuracy": float(i < k)}} for i in range(n)]
    from services.evaluator.core.runner import TaskOutcome

    outcome = TaskOutcome(task, aggregate(task, details), n, details, stderr=standard_errors(task, details))
    if version != "v1":
        for d in details:
            d["task_version"] = version
    write_report(EvalReport([outcome]), folder)
    return folder


def test_compare_marks_only_differences_beyond_the_standard_error(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", 0.50, 400)
    b = _run(tmp_path / "b", 0.52, 400)  # within noise: 0.02 < 1.96 * 0.035
    c = _run(tmp_path / "c", 0.80, 400)  # far beyond
    d = _run(tmp_path / "d", 0.80, 400, version="other")  # another task version
    out = io.StringIO()
    settings = EvaluatorSettings(home=tmp_path / "home")
    rows = compare_cmd(
        [str(a), str(b), str(c), str(d)], settings=settings, console=Console(file=out, width=200)
    )
    (acc,) = [r for r in rows if r.metric == "accuracy"]
    assert [c.mark for c in acc.cells] == ["", "", "▲", "≠"]
    assert acc.cells[0].stderr == pytest.approx(0.025)
    assert "0.5000 ± 0.0250" in out.getvalue()
    with pytest.raises(UnknownRun):
        compare_cmd([str(tmp_path / "missing")], settings=settings, console=Console(file=io.StringIO()))
