"""Tools the agents call: each declares a JSON schema of its arguments and runs as plain Python."""

from services.agent_runtime.core.errors import ToolError
from services.agent_runtime.core.tools.base import Tool, coerce_arguments, tool_schema, validate_args
from services.agent_runtime.core.tools.calculator import Calculator
from services.agent_runtime.core.tools.python import PythonInterpreter
from services.agent_runtime.core.tools.search import SearchCorpus

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
