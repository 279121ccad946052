"""Every supported family through the evaluator, against an independent reference.

For each architecture a tiny random-weight folder (see ``evaluator_references``): the evaluator
runs a multiple-choice task (a few-shot prefix, single- and multi-token choices), a perplexity task
and a short greedy generation task on it, batched and padded as it always runs; every per-sample
log-likelihood must equal the reference's, scored one sequence at a time without padding or KV
cache, and every generation the reference's greedy text (fp32, within 1e-5 relative).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

from services.evaluator.core import ModelSpec
from services.evaluator.core.backends import make_backend
from services.evaluator.core.hf_backend import HFBackend
from services.evaluator.core.runner import evaluate
from services.evaluator.core.tasks import resolve_tasks
from tests.support.evaluator_references import (
    ARCHITECTURES,
    INTERNLM,
    Reference,
    build_internlm,
    build_native,
    train_byte_level_bpe,
)

torch.set_num_threads(1)
REL, ABS = 1e-5, 1e-5

SHOTS = [
    {"q": "the model reads a folder of weights", "a": "A"},
    {"q": "what is 12 plus 30", "a": "42"},
]
QUESTIONS = [
    {"qid": "q1", "q": "the model answers questions about numbers", "a": "A", "digit": "1"},
    {"qid": "q2", "q": "上海 人工 智能 模型", "a": "B", "digit": "2"},
    {"qid": "q3", "q": "def f return print import torch", "a": "42", "digit": "3"},
]
TEXTS = [
    {"qid": "t1", "text": "the model reads a folder of weights then answers questions"},
    {"qid": "t2", "text": "    def f():\n        return 12 plus 30\n你好 世界"},
]
TASKS = {
    "arch_mc_words": {
        "loader": {
            "kind": "jsonl",
            "path": "questions.jsonl",
            "id_field": "qid",
            "fewshot_path": "shots.jsonl",
        },
        "output_type": "multiple_choice",
        "prompt_template": "Q: {q}\nA:",
        "choices": [" A", " B", " 42", " the model reads"],
        "target_field": "a",
        "num_fewshot": 2,
        "fewshot_target_template": " {a}",
        "metrics": ["accuracy"],
        "primary_metric": "accuracy",
    },
    # Single-token choices: one forward pass of the context serves all of them.
    "arch_mc_digits": {
        "loader": {"kind": "jsonl", "path": "questions.jsonl", "id_field": "qid"},
        "output_type": "multiple_choice",
        "prompt_template": "{q}=",
        "choices": ["1", "2", "3", "4"],
        "target_field": "digit",
        "metrics": ["accuracy"],
        "primary_metric": "accuracy",
    },
    "arch_perplexity": {
        "loader": {"kind": "jsonl", "path": "texts.jsonl", "id_field": "qid"},
        "output_type": "perplexity",
        "prompt_template": "{text}",
        "metrics": ["perplexity"],
        "primary_metric": "perplexity",
        "higher_is_better": False,
    },
    "arch_generation": {
        "loader": {"kind": "jsonl", "path": "questions.jsonl", "id_field": "qid"},
        "output_type": "generation",
        # the plain prompt even where the folder has a chat template (InternLM's): the reference
        # continues text; the chat path is checked against transformers in test_evaluator_chat
        "chat": "never",
        "prompt_template": "Q: {q}\nA:",
        "target_field": "a",
        "generation": {"max_new_tokens": 8, "stop": ["\n\n"]},
        "metrics": ["accuracy"],
        "primary_metric": "accuracy",
    },
}


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tasks (JSON is YAML) and their data, in one folder."""
    folder = tmp_path_factory.mktemp("arch-tasks")
    for name, rows in (("questions", QUESTIONS), ("shots", SHOTS), ("texts", TEXTS)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    for name, task in TASKS.items():
        (folder / f"{name}.yaml").write_text(json.dumps(task))
    return folder


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model_folder(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    xtuner_modelings: Path,
    sentencepiece: ModuleType,
    internlm_sentencepiece_model: bytes,
) -> tuple[Path, Reference]:
    architecture = request.param
    folder = tmp_path_factory.mktemp(architecture) / architecture
    if architecture in INTERNLM:
        reference = build_internlm(
            folder, architecture, xtuner_modelings, sentencepiece, internlm_sentencepiece_model
        )
    else:
        reference = build_native(folder, architecture, train_byte_level_bpe())
    assert json.loads((folder / "config.json").read_text())["model_type"] == architecture
    return folder, reference


def test_per_sample_scores_and_generations_equal_the_reference(
    model_folder: tuple[Path, Reference], tasks_dir: Path
) -> None:
    folder, reference = model_folder
    backend, _ = make_backend(ModelSpec(path=folder), batch_size=4, dtype="float32")
    assert isinstance(backend, HFBackend) and backend.model.dtype == torch.float32
    report = evaluate(resolve_tasks(list(TASKS), tasks_dir=tasks_dir), backend, data_root=tasks_dir)
    assert not report.skipped
    details = {o.task.name: o.details for o in report.outcomes}
    assert backend.prefix_tokens_reused > 0  # the few-shot prefix was computed once per batch
    for row in details["arch_mc_digits"]:  # single tokens: scored off one pass over the context
        assert all(
            len(backend.encode_pair(row["prompt"], c)[1]) == 1 for c in TASKS["arch_mc_digits"]["choices"]
        )

    for task in ("arch_mc_words", "arch_mc_digits"):
        choices = TASKS[task]["choices"]
        assert len(details[task]) == len(QUESTIONS)
        for row in details[task]:
            expected = [reference.loglikelihood(row["prompt"], c)[0] for c in choices]
            assert row["logprobs"] == pytest.approx(expected, rel=REL, abs=ABS), (task, row["id"])

    for row in details["arch_perplexity"]:
        logprob, num_tokens = reference.rolling(row["prompt"])
        assert row["num_tokens"] == num_tokens
        assert row["logprob"] == pytest.approx(logprob, rel=REL, abs=ABS), row["id"]

    generation = TASKS["arch_generation"]["generation"]
    predictions = [row["prediction"] for row in details["arch_generation"]]
    expected_texts = [
        reference.greedy(row["prompt"], generation["max_new_tokens"], generation["stop"])
        for row in details["arch_generation"]
    ]
    assert predictions == expected_texts
    assert any(predictions)  # something was generated, not only stops


def test_greedy_flags_equal_the_reference(model_folder: tuple[Path, Reference]) -> None:
    """``is_greedy`` (every continuation token the argmax), true and false, as the reference says."""
    folder, reference = model_folder
    prompts = [f"Q: {q['q']}\nA:" for q in QUESTIONS]
    # the reference's own greedy next token (still greedy unless retokenized differently), and others
    requests = [(p, reference.greedy(p, 1, [])) for p in prompts] + [(p, " the model") for p in prompts]
    requests = [(c, x) for c, x in requests if x.strip()]
    backend = HFBackend(folder, batch_size=3, dtype="float32")
    got = backend.loglikelihood(requests)
    expected = [reference.loglikelihood(c, x) for c, x in requests]
    for (context, continuation), g, (logprob, greedy) in zip(requests, got, expected, strict=True):
        assert g.logprob == pytest.approx(logprob, rel=REL, abs=ABS), (context, continuation)
        assert g.is_greedy == greedy, (context, continuation)
    assert any(greedy for _, greedy in expected)
