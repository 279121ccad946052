import pytest

from services.agent_runtime.core.tools import Calculator, ToolError, coerce_arguments
from services.agent_runtime.core.tools.calculator import evaluate


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("17 + 25", "42"),
        ("(17 + 25) * 2", "84"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("2 ** 10", "1024"),
        ("-(3 - 5)", "2"),
        ("1.5 * 4", "6"),
        ("10 / 3", "3.33333333333"),
        (" 3 * 4 = ", "12"),
        ("2 ** -1", "0.5"),
        ("(" * 200 + "1" + ")" * 200, "1"),
        ("-" * 400 + "1", "1"),
    ],
)
def test_calculator_valid(expression: str, expected: str) -> None:
    assert Calculator().run({"expression": expression}) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "function calls are not allowed"),
        ("__import__('os').system('true')", "not allowed"),
        ("x + 1", "names are not allowed"),
        ("open", "names are not allowed"),
        ("(1).__class__", "Attribute is not allowed"),
        ("'a' * 3", "only numbers"),
        ("[1, 2]", "List is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("2 ** 100000", "exponent 100000 is larger"),
        ("10 ** 5000", "result too large"),
        ("(10 ** 1000) ** 1000", "result too large"),
        ("2.0 ** 5000", "result too large"),
        ("9 ** 9 ** 9", "larger than"),
        ("1 / 0", "division by zero"),
        ("2 ^ 3", "use ** for powers"),
        ("1 +", "invalid syntax"),
        ("", "empty expression"),
        ("(-8) ** 0.5", "not a real number"),
        ("1" + " + 1" * 400, "longer than"),
        ("True + 1", "only numbers"),
    ],
)
def test_calculator_refuses_with_clear_error(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match="calculator") as info:
        evaluate(expression)
    assert message in str(info.value)


def test_calculator_arguments_bare_string_and_json() -> None:
    calc = Calculator()
    assert calc.run(coerce_arguments(calc, '{"expression": "6 * 7"}')) == "42"
    assert calc.run(coerce_arguments(calc, "6 * 7")) == "42"
    assert calc.run(coerce_arguments(calc, '"6 * 7"')) == "42"
    assert calc.run(coerce_arguments(calc, "42")) == "42"
    with pytest.raises(ToolError, match="missing argument"):
        coerce_arguments(calc, '{"expr": "1"}')
    with pytest.raises(ToolError, match="unknown argument"):
        coerce_arguments(calc, '{"expression": "1", "mode": "x"}')
    with pytest.raises(ToolError, match="must be a string"):
        coerce_arguments(calc, '{"expression": [1]}')
