"""python: run code in the sandbox (``sandbox.py``); the observation is its output and any error."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from services.agent_runtime.core.errors import ToolError
from services.agent_runtime.core.sandbox import Sandbox, SandboxError

MAX_CODE_CHARS = 20_000
_FENCE = re.compile(r"^\s*```(?:python|py)?\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


class PythonInterpreter:
    name = "python"
    description = (
        "Run Python 3 code in a sandbox (standard library maths modules, no network, no files outside "
        "its own directory) and return what it prints; the value of a last bare expression is printed."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "e.g. print(sum(range(1, 101)))"}},
        "required": ["code"],
    }

    def __init__(self, sandbox: Sandbox | None = None) -> None:
        self.sandbox = sandbox or Sandbox()

    def run(self, args: dict[str, Any]) -> str:
        code = args.get("code")
        if not isinstance(code, str) or not code.strip():
            raise ToolError("python: argument 'code' must be non-empty Python source")
        if len(code) > MAX_CODE_CHARS:
            raise ToolError(f"python: code longer than {MAX_CODE_CHARS} characters")
        fenced = _FENCE.match(code)
        if fenced:  # models often wrap code in a markdown fence
            code = fenced.group(1)
        try:
            return self.sandbox.run(code).observation()
        except SandboxError as exc:
            raise ToolError(f"python: {exc}") from None
