"""What a tool is: a name, a description and a JSON schema of its arguments, and ``run(args) -> str``."""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

from services.agent_runtime.core.errors import ToolError


@runtime_checkable
class Tool(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def parameters(self) -> dict[str, Any]:
        """JSON schema of the arguments object."""
        ...

    def run(self, args: dict[str, Any]) -> str: ...


def tool_schema(tool: Tool) -> dict[str, Any]:
    """The OpenAI function-calling declaration of a tool."""
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def validate_args(tool: Tool, args: dict[str, Any]) -> dict[str, Any]:
    """Check arguments against the tool's (flat) schema: required keys, no unknown keys, primitive types."""
    props: dict[str, Any] = tool.parameters.get("properties", {})
    missing = [k for k in tool.parameters.get("required", []) if k not in args]
    if missing:
        raise ToolError(f"{tool.name}: missing argument(s) {', '.join(missing)}; expected {_signature(tool)}")
    unknown = [k for k in args if k not in props]
    if unknown:
        raise ToolError(f"{tool.name}: unknown argument(s) {', '.join(unknown)}; expected {_signature(tool)}")
    for key, value in args.items():
        expected = props[key].get("type")
        types = _JSON_TYPES.get(expected) if isinstance(expected, str) else None
        # bool is an int in Python, not in JSON
        if types and (not isinstance(value, types) or (isinstance(value, bool) and expected != "boolean")):
            raise ToolError(f"{tool.name}: argument {key!r} must be a {expected}, got {json.dumps(value)}")
    return args


def coerce_arguments(tool: Tool, raw: str) -> dict[str, Any]:
    """Arguments from an ``Action Input`` text: a JSON object, or, for a one-parameter tool, a bare value."""
    text = _strip_fences(raw.strip())
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, dict):
        return validate_args(tool, value)
    props = list(tool.parameters.get("properties", {}))
    required = tool.parameters.get("required", [])
    single = required[0] if len(required) == 1 else (props[0] if len(props) == 1 else None)
    if single is None:
        raise ToolError(f"{tool.name}: Action Input must be a JSON object like {_signature(tool)}")
    if isinstance(value, str):
        value = _unquote(value)
    elif props and tool.parameters["properties"][single].get("type") == "string":
        value = text  # e.g. a bare number for a string parameter: keep the text as written
    return validate_args(tool, {single: value})


def _signature(tool: Tool) -> str:
    props = tool.parameters.get("properties", {})
    return "{" + ", ".join(f'"{k}": <{v.get("type", "value")}>' for k, v in props.items()) + "}"


def _strip_fences(text: str) -> str:
    if text.startswith("```"):
        text = text.strip("`")
        if text.startswith("json"):
            text = text[4:]
    return text.strip()


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"`":
        return text[1:-1]
    return text
