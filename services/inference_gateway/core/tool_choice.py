"""``tool_choice``, as vLLM implements it: ``"none"`` (no call is read), ``"auto"`` (the default with
tools), and two that force a call by guided decoding (``core.guided``): a named function constrains the
output to its parameters' JSON schema, and that output is the call's arguments; ``"required"``
constrains it to a JSON list of ``{"name", "parameters"}`` objects of the offered functions (at most one
with ``parallel_tool_calls: false``), read as bare calls (``core.tools``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from services.inference_gateway.core.sampling import InvalidRequest


@dataclass(frozen=True)
class ToolPlan:
    """How a chat request uses its tools."""

    names: frozenset[str] = frozenset()  # the functions a call may name; empty: no call is read
    named: str | None = None  # tool_choice names this function: the whole output is its arguments
    single: bool = False  # parallel_tool_calls false: one call at most
    schema: str | None = None  # the JSON schema that forces a call (named or "required"), for guided decoding

    @property
    def reads_calls(self) -> bool:
        return bool(self.names)


def plan_tools(
    tools: list[dict[str, Any]] | None, tool_choice: Any, parallel_tool_calls: bool | None
) -> ToolPlan:
    """The plan of a request's ``tools`` and ``tool_choice``; InvalidRequest naming the field that does not
    hold together (worded after vLLM's checks)."""
    if tools is not None and not tools:
        raise InvalidRequest(
            "tools must not be an empty array: give at least one tool or leave the field out"
        )
    functions = _functions(tools or [])
    if tool_choice is None:
        tool_choice = "auto" if tools else "none"
    if tool_choice == "none":
        return ToolPlan()
    if not tools:
        raise InvalidRequest("tool_choice needs tools: when using tool_choice, tools must be set")
    single = parallel_tool_calls is False
    if tool_choice == "auto":
        return ToolPlan(frozenset(functions), single=single)
    if tool_choice == "required":
        schema = _required_schema(functions, single)
        return ToolPlan(frozenset(functions), single=single, schema=json.dumps(schema))
    name = _named(tool_choice)
    if name not in functions:
        raise InvalidRequest(f"tool_choice names the function {name!r}, which is not among the tools")
    return ToolPlan(
        frozenset({name}), named=name, single=True, schema=json.dumps(_parameters(functions[name]))
    )


def _functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The function tools by name (tools of other types are not called)."""
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"tools[{i}].function.name must be a non-empty string")
        parameters = function.get("parameters") if isinstance(function, dict) else None
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(f"tools[{i}].function.parameters must be a JSON schema object")
        out[name] = function if isinstance(function, dict) else {}
    return out


def _named(tool_choice: Any) -> str:
    usage = (
        'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}'
    )
    if not isinstance(tool_choice, dict):
        raise InvalidRequest(f"{usage}, got {tool_choice!r}")
    if tool_choice.get("type", "function") != "function":
        raise InvalidRequest(f"{usage}; tool_choice.type {tool_choice.get('type')!r} is not supported")
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{usage}; tool_choice.function.name must be a non-empty string")
    return name


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    """A function's parameters schema; a function without one still takes a JSON object (as vLLM)."""
    return function.get("parameters") or {"type": "object", "properties": {}}


def _required_schema(functions: dict[str, dict[str, Any]], single: bool) -> dict[str, Any]:
    """vLLM's schema for ``tool_choice: "required"``: a non-empty list of calls of the offered functions,
    each ``{"name": <one of them>, "parameters": <its schema>}``; ``$defs`` gathered at the top."""
    defs: dict[str, Any] = {}
    calls = []
    for name, function in functions.items():
        parameters = copy.deepcopy(_parameters(function))
        for key, definition in (parameters.pop("$defs", None) or {}).items():
            if defs.setdefault(key, definition) != definition:
                raise InvalidRequest(
                    f"tools: the definition {key!r} ($defs) has different schemas in two tools"
                )
        calls.append(
            {
                "properties": {"name": {"type": "string", "enum": [name]}, "parameters": parameters},
                "required": ["name", "parameters"],
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": calls}}
    if single:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema
