"""User-defined tools, declared in a YAML or JSON file (``PUYU_AGENT_TOOLS_FILE``)::

    tools:
      - name: word_count
        description: Count the words of a text.
        parameters: {type: object, properties: {text: {type: string}}, required: [text]}
        python: |                      # runs in the sandbox; `args` holds the validated arguments
          print(len(args["text"].split()))
      - name: weather
        description: Current weather of a city.
        parameters: {type: object, properties: {city: {type: string}}, required: [city]}
        http: {url: "http://weather.internal/lookup", timeout_s: 5}   # POSTs the arguments as JSON

Every declaration is checked at start-up; a bad one is refused with the file, the tool and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.agent_runtime.core.errors import ToolError
from services.agent_runtime.core.sandbox import Sandbox, SandboxError

MAX_HTTP_OUTPUT = 4_000


class ToolConfigError(ValueError):
    """The tools file cannot be read or declares a tool wrongly."""


class HttpSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://")
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    headers: dict[str, str] = Field(default_factory=dict)


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    description: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    python: str | None = None
    http: HttpSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ToolSpec:
        if (self.python is None) == (self.http is None):
            raise ValueError("declare exactly one of 'python' or 'http'")
        if self.parameters.get("type") != "object" or not isinstance(
            self.parameters.get("properties", {}), dict
        ):
            raise ValueError("parameters must be a JSON schema of type object with 'properties'")
        return self


class ToolsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tools: list[ToolSpec]


class PythonTool:
    """Runs the declared code in the sandbox with ``args`` bound to the call's arguments."""

    def __init__(self, spec: ToolSpec, sandbox: Sandbox) -> None:
        self.name, self.description, self.parameters = spec.name, spec.description, spec.parameters
        self.code = spec.python or ""
        self.sandbox = sandbox

    def run(self, args: dict[str, Any]) -> str:
        # the arguments travel as a JSON file in the sandbox's directory, never spliced into the code
        prelude = "import json\nargs = json.load(open('args.json'))\n"
        try:
            return self.sandbox.run(prelude + self.code, {"args.json": json.dumps(args)}).observation()
        except SandboxError as exc:
            raise ToolError(f"{self.name}: {exc}") from None


class HttpTool:
    """POSTs the arguments as JSON; the response body (text) is the observation."""

    def __init__(self, spec: ToolSpec, transport: httpx.BaseTransport | None = None) -> None:
        assert spec.http is not None
        self.name, self.description, self.parameters = spec.name, spec.description, spec.parameters
        self.spec = spec.http
        self._client = httpx.Client(
            timeout=self.spec.timeout_s, headers=self.spec.headers, transport=transport
        )

    def run(self, args: dict[str, Any]) -> str:
        try:
            resp = self._client.post(self.spec.url, json=args)
        except httpx.HTTPError as exc:
            raise ToolError(f"{self.name}: {self.spec.url} unreachable: {exc}") from None
        if resp.status_code >= 400:
            raise ToolError(f"{self.name}: {self.spec.url} answered {resp.status_code}: {resp.text[:200]}")
        return resp.text[:MAX_HTTP_OUTPUT]


def load_tools(path: Path, sandbox: Sandbox, reserved: set[str]) -> list[PythonTool | HttpTool]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except OSError as exc:
        raise ToolConfigError(f"cannot read tools file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ToolConfigError(f"tools file {path} is not valid YAML/JSON: {exc}") from None
    try:
        declared = ToolsFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ToolConfigError(f"tools file {path}: {problems}") from None
    tools: list[PythonTool | HttpTool] = []
    seen = set(reserved)
    for spec in declared.tools:
        if spec.name in seen:
            raise ToolConfigError(f"tools file {path}: tool name {spec.name!r} is already taken")
        seen.add(spec.name)
        tools.append(PythonTool(spec, sandbox) if spec.python is not None else HttpTool(spec))
    return tools
