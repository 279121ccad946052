"""Tools the agents call: each declares a JSON schema of its arguments and runs as plain Python."""

from services.agent_runtime.tools.base import Tool, ToolError, coerce_arguments, tool_schema, validate_args
from services.agent_runtime.tools.calculator import Calculator
from services.agent_runtime.tools.python import PythonInterpreter
from services.agent_runtime.tools.search import SearchCorpus

__all__ = [
    "Calculator",
    "PythonInterpreter",
    "SearchCorpus",
    "Tool",
    "ToolError",
    "coerce_arguments",
    "tool_schema",
    "validate_args",
]
