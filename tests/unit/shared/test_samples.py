"""The sample corpus's agent transcripts: in the agent's exact ReAct format, consistent with the real
calculator, varied, and never asking the demo's question or a held-out one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.agent_runtime.core.agents.react import parse_turn
from services.agent_runtime.core.tools.calculator import Calculator
from shared.samples import AGENT_QUESTION, ARITHMETIC_OPERATIONS, heldout_arithmetic, write_sample_corpus

_QUESTION = re.compile(r"^Question: .*?(\d+) (plus|minus|times|divided by) (\d+)[?.]$")


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    dest: Path = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(dest)
    texts = [json.loads(line)["text"] for line in (dest / "dialogues.jsonl").read_text().splitlines()]
    return [t for t in texts if t.startswith("Question:")]


def _calculator_traces(transcripts: list[str]) -> list[str]:
    return [t for t in transcripts if "Action: calculator" in t]


def test_calculator_traces_are_what_the_agent_parses_and_the_tool_answers(transcripts: list[str]) -> None:
    traces = _calculator_traces(transcripts)
    assert len(traces) >= 3000
    calculator = Calculator()
    for trace in traces[:500]:
        question, rest = trace.split("\nThought:", 1)
        before_observation, after = rest.split("\nObservation: ", 1)
        turn = parse_turn(before_observation)  # what the agent reads from the model's first turn
        assert turn.action == "calculator"
        arguments = json.loads(turn.action_input)
        a, word, b = _QUESTION.match(question).groups()  # type: ignore[union-attr]
        assert arguments == {"expression": f"{a} {ARITHMETIC_OPERATIONS[word]} {b}"}
        observation, final = after.split("\n", 1)
        assert observation == calculator.run(arguments)  # the real tool's output
        assert parse_turn(final).final_answer == observation  # the answer copies the observation


def test_traces_hold_every_operation_and_several_phrasings(transcripts: list[str]) -> None:
    questions = [t.split("\n", 1)[0] for t in _calculator_traces(transcripts)]
    for word in ARITHMETIC_OPERATIONS:
        assert sum(f" {word} " in q for q in questions) > 500
    assert {q.split()[1] for q in questions} >= {"What", "Calculate", "How"}
    assert len(set(questions)) > 0.8 * len(questions)  # mostly new operands: nothing to recall
    assert len({tuple(re.findall(r"\d+", q)) for q in questions}) > 0.6 * len(questions)
    assert any(len(n) == 1 for q in questions for n in re.findall(r"\d+", q))
    assert any(len(n) == 3 for q in questions for n in re.findall(r"\d+", q))


def test_the_demo_question_and_the_held_out_ones_are_never_asked(transcripts: list[str]) -> None:
    held_out = heldout_arithmetic()
    assert len(held_out) == 20 and len({p.question for p in held_out}) == 20
    assert AGENT_QUESTION not in {p.question for p in held_out}
    corpus = "\n".join(transcripts)
    assert AGENT_QUESTION not in corpus
    pairs = {
        frozenset(map(int, re.findall(r"\d+", t.split("\n", 1)[0]))) for t in _calculator_traces(transcripts)
    }
    assert frozenset((12, 30)) not in pairs
    assert not pairs & {p.operands for p in held_out}


def test_held_out_answers_are_the_calculators() -> None:
    calculator = Calculator()
    for problem in heldout_arithmetic():
        assert problem.question.startswith("What is ")
        assert calculator.run({"expression": problem.expression}) == problem.answer
