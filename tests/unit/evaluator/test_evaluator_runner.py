"""The runner against scripted backends: an oracle must score 100%, a shuffled one near chance."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.evaluator.core.backends import Loglikelihood, Progress, RollingLoglikelihood
from services.evaluator.core.loaders import DataUnavailable, load
from services.evaluator.core.runner import build_prompt, evaluate, run_task, write_report
from services.evaluator.core.tasks import GenerationConfig, LoaderConfig, TaskConfig, get_task

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
needs_gsm8k = pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").exists(), reason=f"no gsm8k in {DATA}")
needs_cmmlu = pytest.mark.skipif(not (DATA / "cmmlu" / "test").is_dir(), reason=f"no cmmlu in {DATA}")


class OracleBackend:
    """Answers from a prompt -> answer table (generation) or prompt -> correct choice (loglikelihood)."""

    def __init__(self, completions: dict[str, str] | None = None, gold: dict[str, str] | None = None) -> None:
        self.completions = completions or {}
        self.gold = gold or {}

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[Loglikelihood]:
        out = [
            Loglikelihood(0.0 if self.gold[c] == cont else -5.0, self.gold[c] == cont) for c, cont in requests
        ]
        if progress:
            progress(len(requests), len(requests))
        return out

    def loglikelihood_rolling(
        self, texts: Sequence[str], progress: Progress | None = None
    ) -> list[RollingLoglikelihood]:
        # a model that puts probability 1/2 on each whitespace token
        return [RollingLoglikelihood(-0.6931471805599453 * len(t.split()), len(t.split())) for t in texts]

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, progress: Progress | None = None
    ) -> list[str]:
        return [self.completions[p] for p in prompts]


def _prompts(task: TaskConfig, data_root: Path | None = None) -> list[tuple[str, dict]]:
    ds = load(task.loader, data_root)
    return [(build_prompt(task, ds, s), s) for s in ds.samples]


def test_oracle_scores_all_demo_facts() -> None:
    task = get_task("demo_facts")
    oracle = OracleBackend(completions={p: f" {s['target']}. And more." for p, s in _prompts(task)})
    outcome = run_task(task, oracle, load(task.loader, None))
    assert outcome.num_samples >= 10
    assert outcome.metrics == {"accuracy": 1.0}
    assert all(d["correct"] and d["extracted"] == d["target"] for d in outcome.details)


def test_wrong_answers_score_zero_on_demo_facts() -> None:
    task = get_task("demo_facts")
    # the answer of the next prompt: plausible names, wrong facts
    pairs = _prompts(task)
    shifted = {p: " " + pairs[(i + 1) % len(pairs)][1]["target"] for i, (p, _) in enumerate(pairs)}
    assert (
        run_task(task, OracleBackend(completions=shifted), load(task.loader, None)).metrics["accuracy"] == 0.0
    )


@needs_gsm8k
def test_oracle_scores_all_gsm8k_and_strict_extraction_rejects_loose_answers() -> None:
    task = get_task("gsm8k")
    pairs = _prompts(task, DATA)
    assert len(pairs) == 1319
    assert "Question:" in pairs[0][0] and pairs[0][0].count("Question:") == task.num_fewshot + 1
    oracle = OracleBackend(completions={p: " " + s["answer"] for p, s in pairs})
    outcome = run_task(task, oracle, load(task.loader, DATA))
    assert outcome.metrics == {"exact_match": 1.0, "exact_match_flexible": 1.0}
    # right number but without '#### ': the strict extractor gives nothing, the flexible one finds it
    loose = OracleBackend(completions={p: f" The answer is {s['target']}." for p, s in pairs})
    metrics = run_task(task, loose, load(task.loader, DATA), limit=50).metrics
    assert metrics == {"exact_match": 0.0, "exact_match_flexible": 1.0}
    # each oracle answer given to the next question: near zero for both
    shifted = OracleBackend(
        completions={p: " " + pairs[(i + 1) % len(pairs)][1]["answer"] for i, (p, _) in enumerate(pairs)}
    )
    wrong = run_task(task, shifted, load(task.loader, DATA), limit=300).metrics
    assert wrong["exact_match"] < 0.05 and wrong["exact_match_flexible"] < 0.05


@needs_cmmlu
def test_cmmlu_oracle_perfect_and_shuffled_near_chance() -> None:
    task = get_task("cmmlu")
    pairs = _prompts(task, DATA)
    assert len(pairs) > 10_000 and all(s["target"] in "ABCD" for _, s in pairs[:100])
    gold = {p: s["target"] for p, s in pairs}
    limit = 2000
    ds = load(task.loader, DATA)
    assert run_task(task, OracleBackend(gold=gold), ds, limit=limit).metrics["accuracy"] == 1.0
    # the same oracle with its answer key shuffled across questions knows nothing: chance is ~1/4
    keys = list(gold)
    values = [gold[k] for k in keys]
    random.Random(0).shuffle(values)
    shuffled = run_task(task, OracleBackend(gold=dict(zip(keys, values, strict=True))), ds, limit=limit)
    assert 0.2 < shuffled.metrics["accuracy"] < 0.3


def test_perplexity_task_uses_a_file_and_weights_by_tokens(tmp_path: Path) -> None:
    path = tmp_path / "held.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["a b c d", "e f"]) + "\n")
    task = get_task("perplexity", perplexity_path=path)
    outcome = run_task(task, OracleBackend(), load(task.loader, None))
    assert outcome.num_samples == 2
    assert outcome.metrics["perplexity"] == pytest.approx(2.0)
    assert outcome.metrics["bits_per_byte"] == pytest.approx(6 / 10)  # 6 tokens x 1 bit over 10 bytes


def test_missing_data_is_skipped_with_reason(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailable, match="gsm8k"):
        load(LoaderConfig(kind="gsm8k", path="gsm8k"), tmp_path)
    tasks = [get_task("gsm8k"), get_task("demo_facts")]
    pairs = _prompts(tasks[1])
    oracle = OracleBackend(completions={p: " " + s["target"] for p, s in pairs})
    report = evaluate(tasks, oracle, data_root=tmp_path)
    assert list(report.summary()) == ["demo_facts"]
    assert "gsm8k" in report.skipped and str(tmp_path) in report.skipped["gsm8k"]


def test_write_report_layout_and_merge(tmp_path: Path) -> None:
    task = get_task("demo_facts")
    oracle = OracleBackend(completions={p: " " + s["target"] for p, s in _prompts(task)})
    report = evaluate([task], oracle, limit=3)
    write_report(report, tmp_path)
    ppl = evaluate([get_task("perplexity")], OracleBackend(), limit=2)
    write_report(ppl, tmp_path)  # a second run adds its task, keeps the first
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["demo_facts"] == {"accuracy": 1.0} and "perplexity" in summary["perplexity"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["tasks"]["demo_facts"]["version_hash"] == task.version_hash
    rows = [json.loads(line) for line in (tmp_path / "details" / "demo_facts.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) >= {"prompt", "prediction", "extracted", "correct"}
