"""Judged tasks: a model's answers rated by a judge (``judged``), or compared head-to-head with an
opponent's answers on the same prompts (``pairwise``), plus the judge's calibration.

Pairwise asks the judge twice per prompt, the candidate first and then second, so that a judge
preferring a position favours neither model: the prompt scores 1 when both verdicts favour the
candidate, 0 when both favour the opponent, 1/2 otherwise (ties, or a verdict that flipped with
the order). The win rate is the mean over prompts, its interval Wilson's (``stats``).

Answers are cached per model (the opponent's are computed once for every candidate); judged rows
are cached per chunk as they come, so a judge that fails half-way loses nothing already judged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.evaluator.core.backends import Backend, chat_format_of
from services.evaluator.core.cache import ResultCache
from services.evaluator.core.chat import build_prompt, chat_messages, effective_version, uses_chat
from services.evaluator.core.judge import (
    PAIRWISE_PROMPT,
    PAIRWISE_SYSTEM,
    SINGLE_PROMPT,
    SINGLE_SYSTEM,
    JudgeClient,
    JudgeError,
    parse_pair_verdict,
    parse_rating,
)
from services.evaluator.core.loaders import Dataset, DataUnavailable, Sample
from services.evaluator.core.tasks import JudgeConfig, TaskConfig

log = logging.getLogger(__name__)
CHUNK = 8  # samples judged between two cache writes
Progress = Callable[[int, int], None]


@dataclass
class Opponent:
    """The model a pairwise task compares against (the champion): loaded only when its answers are
    not cached yet. ``identity``: its content (artifact hash), part of the result's version."""

    label: str
    identity: str
    load: Callable[[], tuple[Backend, str]]
    _loaded: tuple[Backend, str] | None = field(default=None, repr=False)

    def backend(self) -> tuple[Backend, str]:
        if self._loaded is None:
            self._loaded = self.load()
        return self._loaded


def answers_version(task: TaskConfig, backend: Backend) -> str:
    """The version of a model's answers to the task's prompts (the chat template counts)."""
    fmt = chat_format_of(backend)
    return effective_version(task.version_hash, "answers", fmt if uses_chat(task, fmt) else None)


def model_answers(
    task: TaskConfig,
    backend: Backend,
    dataset: Dataset,
    samples: list[Sample],
    *,
    cache: ResultCache | None,
    model_key: str | None,
    progress: Progress | None = None,
) -> dict[str, str]:
    """The model's answer per sample id, through its chat template when it has one."""
    version = answers_version(task, backend)
    ids = [str(s["id"]) for s in samples]
    cached = cache.get_many(model_key, version, ids) if cache is not None and model_key else {}
    todo = [s for s in samples if str(s["id"]) not in cached]
    fresh: list[dict[str, Any]] = []
    if todo:
        fmt = chat_format_of(backend)
        if uses_chat(task, fmt):
            texts = backend.generate_chat(  # type: ignore[attr-defined]
                [chat_messages(task, dataset, s) for s in todo], task.generation, progress
            )
        else:
            texts = backend.generate(
                [build_prompt(task, dataset, s) for s in todo], task.generation, progress
            )
        fresh = [{"id": s["id"], "answer": t} for s, t in zip(todo, texts, strict=True)]
        if cache is not None and model_key:
            cache.put_many(model_key, version, fresh)
    by_id = {k: str(v["answer"]) for k, v in cached.items()} | {str(d["id"]): str(d["answer"]) for d in fresh}
    return {i: by_id[i] for i in ids}


def judged_version(task: TaskConfig, backend: Backend, judge: JudgeClient, opponent: Opponent | None) -> str:
    return effective_version(
        answers_version(task, backend), judge.endpoint.identity, opponent.identity if opponent else None
    )


def _reference(task: TaskConfig, sample: Sample) -> str:
    cfg = task.judge or JudgeConfig()
    field_name = cfg.reference_field or task.target_field
    return str(sample.get(field_name, "(none given)"))


def _single_prompt(cfg: JudgeConfig, question: str, reference: str, answer: str) -> tuple[str | None, str]:
    if cfg.rubric:
        return cfg.system_prompt, cfg.rubric.format(question=question, reference=reference, answer=answer)
    return cfg.system_prompt or SINGLE_SYSTEM, SINGLE_PROMPT.format(
        question=question, reference=reference, answer=answer
    )


def _pair_prompt(cfg: JudgeConfig, question: str, reference: str, a: str, b: str) -> tuple[str | None, str]:
    values = {"question": question, "reference": reference, "answer_a": a, "answer_b": b}
    if cfg.rubric:
        return cfg.system_prompt, cfg.rubric.format(**values)
    return cfg.system_prompt or PAIRWISE_SYSTEM, PAIRWISE_PROMPT.format(**values)


def pair_score(first: str, second: str) -> float:
    """The candidate's score on one prompt from the verdicts with it as A (first) and as B (second)."""
    won = {"A": 1.0, "B": 0.0, "tie": 0.5}[first] + {"A": 0.0, "B": 1.0, "tie": 0.5}[second]
    return won / 2


def judge_samples(
    task: TaskConfig,
    backend: Backend,
    dataset: Dataset,
    samples: list[Sample],
    *,
    judge: JudgeClient,
    opponent: Opponent | None,
    cache: ResultCache | None,
    model_key: str | None,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Rows of the samples (and how many came from the cache); those not cached yet get: the answers, the judge's verdicts and the scores. Rows are
    stored chunk by chunk; a ``JudgeError`` leaves the chunks before it stored."""
    cfg = task.judge or JudgeConfig()
    answers = model_answers(task, backend, dataset, samples, cache=cache, model_key=model_key)
    theirs: dict[str, str] = {}
    if task.output_type == "pairwise":
        if opponent is None:
            raise ValueError(f"task {task.name}: a pairwise task needs an opponent")
        other, other_key = opponent.backend()
        theirs = model_answers(task, other, dataset, samples, cache=cache, model_key=other_key)
    version = judged_version(task, backend, judge, opponent)

    def one(sample: Sample) -> dict[str, Any]:
        sid = str(sample["id"])
        question = task.prompt_template.format(**sample)
        reference = _reference(task, sample)
        row: dict[str, Any] = {"id": sample["id"], "prompt": question, "prediction": answers[sid]}
        if task.output_type == "judged":
            system, prompt = _single_prompt(cfg, question, reference, answers[sid])
            got = judge.ask(system, prompt, parse_rating, max_attempts=cfg.max_parse_attempts)
            rating = float(got.verdict)
            row |= {"rating": rating, "judge_answer": got.text, "judge_attempts": got.attempts}
            row["correct"] = rating >= cfg.pass_rating
            row["scores"] = {"judge_score": rating, "judge_pass_rate": float(row["correct"])}
        else:
            assert opponent is not None
            mine, other = answers[sid], theirs[sid]
            s1, p1 = _pair_prompt(cfg, question, reference, mine, other)
            s2, p2 = _pair_prompt(cfg, question, reference, other, mine)
            first = judge.ask(s1, p1, parse_pair_verdict, max_attempts=cfg.max_parse_attempts)
            second = judge.ask(s2, p2, parse_pair_verdict, max_attempts=cfg.max_parse_attempts)
            score = pair_score(first.verdict, second.verdict)
            consistent = {"A": "B", "B": "A", "tie": "tie"}[first.verdict] == second.verdict
            row |= {
                "opponent": opponent.label,
                "opponent_prediction": other,
                "verdicts": [first.verdict, second.verdict],  # candidate as A, then as B
                "judge_answers": [first.text, second.text],
                "correct": score > 0.5,
                "scores": {"win_rate": score, "position_consistency": float(consistent)},
            }
        row["task_version"] = version
        return row

    cached = (
        cache.get_many(model_key, version, [str(s["id"]) for s in samples]) if cache and model_key else {}
    )
    todo = [s for s in samples if str(s["id"]) not in cached]
    fresh: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=judge.endpoint.concurrency) as pool:
        for start in range(0, len(todo), CHUNK):
            rows = _all_or_stop(pool, one, todo[start : start + CHUNK])  # a JudgeError propagates
            if cache is not None and model_key:
                cache.put_many(model_key, version, rows)
            fresh += rows
            if progress:
                progress(len(fresh), len(todo))
    by_id = cached | {str(r["id"]): r for r in fresh}
    return [by_id[str(s["id"])] for s in samples], len(cached)


def _all_or_stop(
    pool: ThreadPoolExecutor, fn: Callable[[Any], dict[str, Any]], items: list[Any]
) -> list[dict[str, Any]]:
    """``fn`` over the items in parallel; the first failure cancels what has not started (a judge that
    is down is not asked again for every queued sample) and propagates."""
    futures = [pool.submit(fn, item) for item in items]
    try:
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        raise


# ---------------------------------------------------------------------------------------- calibration
_PACKAGED = Path(__file__).resolve().parent / "calibration"


def calibration_file(cfg: JudgeConfig, data_root: Path | None) -> Path:
    """An absolute path, else relative to the data root, else one shipped with the evaluator."""
    assert cfg.calibration_path is not None
    path = Path(cfg.calibration_path)
    for candidate in (path, *([data_root / path] if data_root else []), _PACKAGED / path):
        if candidate.is_file():
            return candidate
    raise DataUnavailable(f"judge calibration set {cfg.calibration_path} not found")


def calibrate(
    task: TaskConfig, judge: JudgeClient, data_root: Path | None, cache: ResultCache | None
) -> list[dict[str, Any]]:
    """The judge's verdicts on the task's labelled examples (each: ``question``, ``reference``,
    ``answer`` or ``answer_a`` / ``answer_b``, and the ``gold`` verdict: pass / fail, or A / B / tie);
    cached under the judge's identity and the set's content."""
    cfg = task.judge or JudgeConfig()
    if cfg.calibration_path is None:
        return []
    path = calibration_file(cfg, data_root)
    text = path.read_text(encoding="utf-8")
    items = [json.loads(line) for line in text.splitlines() if line.strip()]
    version = effective_version(task.version_hash, "calibration", text)
    key = judge.endpoint.identity
    cached = cache.get_many(key, version, [str(i["id"]) for i in items]) if cache is not None else {}

    def one(item: dict[str, Any]) -> dict[str, Any]:
        if task.output_type == "pairwise":
            system, prompt = _pair_prompt(
                cfg, item["question"], item["reference"], item["answer_a"], item["answer_b"]
            )
            got = judge.ask(system, prompt, parse_pair_verdict, max_attempts=cfg.max_parse_attempts)
            verdict: str = got.verdict
        else:
            system, prompt = _single_prompt(cfg, item["question"], item["reference"], item["answer"])
            got = judge.ask(system, prompt, parse_rating, max_attempts=cfg.max_parse_attempts)
            verdict = "pass" if float(got.verdict) >= cfg.pass_rating else "fail"
        return {"id": item["id"], "gold": item["gold"], "verdict": verdict, "agree": verdict == item["gold"]}

    todo = [i for i in items if str(i["id"]) not in cached]
    with ThreadPoolExecutor(max_workers=judge.endpoint.concurrency) as pool:
        fresh = _all_or_stop(pool, one, todo)
    if cache is not None and fresh:
        cache.put_many(key, version, fresh)
    by_id = cached | {str(r["id"]): r for r in fresh}
    return [by_id[str(i["id"])] for i in items]


__all__ = ["JudgeError", "Opponent", "calibrate", "judge_samples", "model_answers", "pair_score"]
