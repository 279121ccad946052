from services.agent_runtime.core.agents.react import parse_turn


def test_parse_action_with_json_input() -> None:
    turn = parse_turn(
        ' I should use the calculator.\nAction: calculator\nAction Input: {"expression": "17 + 25"}\n'
    )
    assert turn.thought == "I should use the calculator."
    assert turn.action == "calculator"
    assert turn.action_input == '{"expression": "17 + 25"}'
    assert turn.final_answer is None


def test_parse_tolerates_whitespace_case_and_missing_thought() -> None:
    turn = parse_turn("\n  action :  search_corpus  \n   ACTION INPUT:   capital of Aldoria   \n")
    assert turn.thought == ""
    assert turn.action == "search_corpus"
    assert turn.action_input == "capital of Aldoria"


def test_parse_repeated_thought_label_and_quoted_tool() -> None:
    turn = parse_turn('Thought: look it up\nAction: `search_corpus`\nAction Input: {"query": "x"}')
    assert turn.thought == "look it up"
    assert turn.action == "search_corpus"


def test_parse_final_answer_stops_at_next_label() -> None:
    turn = parse_turn(
        " I now know the final answer.\nFinal Answer:  42 \nQuestion: What is 1 plus 1?\nThought: x"
    )
    assert turn.thought == "I now know the final answer."
    assert turn.final_answer == "42"
    assert turn.action is None


def test_parse_multiline_action_input() -> None:
    turn = parse_turn('Action: calculator\nAction Input: {\n  "expression": "1 + 2"\n}\nObservation: 3')
    assert turn.action_input == '{\n  "expression": "1 + 2"\n}'


def test_parse_first_of_action_and_final_answer_wins() -> None:
    turn = parse_turn("Final Answer: 7\nAction: calculator\nAction Input: 1+1")
    assert turn.final_answer == "7" and turn.action is None
    turn = parse_turn("Action: calculator\nAction Input: 1+1\nFinal Answer: 7")
    assert turn.action == "calculator" and turn.action_input == "1+1" and turn.final_answer is None


def test_parse_unstructured_text_is_only_a_thought() -> None:
    turn = parse_turn("the weather is nice today")
    assert turn.thought == "the weather is nice today"
    assert turn.action is None and turn.final_answer is None
