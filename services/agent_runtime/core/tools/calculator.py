"""Safe arithmetic: the expression's syntax tree is walked and only numbers and arithmetic are evaluated."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any, ClassVar

from services.agent_runtime.core.errors import ToolError

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 10_000
MAX_INT_BITS = 4_096  # bigger integers are refused before they are computed

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_SYMBOL = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
}


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression; raises ToolError naming what is not allowed."""
    text = expression.strip().rstrip("=").strip()
    if not text:
        raise ToolError("calculator: empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"calculator: expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"calculator: invalid syntax in {text!r}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ToolError("calculator: expression too deeply nested") from None
    try:
        return _eval(tree.body)
    except ZeroDivisionError:
        raise ToolError("calculator: division by zero") from None
    except OverflowError:
        raise ToolError("calculator: result too large") from None
    except RecursionError:
        raise ToolError("calculator: expression too deeply nested") from None


def format_number(value: Number) -> str:
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".12g")
    return str(value)


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"calculator: only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp):
        op = type(node.op)
        if op not in _BINARY:
            hint = " (use ** for powers)" if op is ast.BitXor else ""
            raise ToolError(f"calculator: operator {_SYMBOL.get(op, op.__name__)} is not allowed{hint}")
        left, right = _eval(node.left), _eval(node.right)
        if op is ast.Pow:
            _check_power(left, right)
        result = _BINARY[op](left, right)
        if isinstance(result, complex):
            raise ToolError("calculator: the result is not a real number")
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise ToolError("calculator: result too large")
        return result  # type: ignore[no-any-return]
    if isinstance(node, ast.Name):
        raise ToolError(f"calculator: names are not allowed ({node.id!r}); use numbers and + - * / // % **")
    if isinstance(node, ast.Call):
        raise ToolError("calculator: function calls are not allowed; use numbers and + - * / // % **")
    raise ToolError(f"calculator: {type(node).__name__} is not allowed; use numbers and + - * / // % **")


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"calculator: exponent {format_number(exponent)} is larger than {MAX_EXPONENT}")
    # |base| ** exponent has about exponent * log2|base| bits: refuse before computing it
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
        if exponent * math.log2(abs(base)) > MAX_INT_BITS:
            raise ToolError("calculator: result too large")


class Calculator:
    name = "calculator"
    description = "Evaluate an arithmetic expression with numbers, + - * / // % ** and parentheses."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "e.g. (17 + 25) * 2"}},
        "required": ["expression"],
    }

    def run(self, args: dict[str, Any]) -> str:
        expression = args.get("expression")
        if isinstance(expression, int | float) and not isinstance(expression, bool):
            expression = str(expression)
        if not isinstance(expression, str):
            raise ToolError("calculator: argument 'expression' must be a string")
        return format_number(evaluate(expression))
