"""``puyu agent run``: run an agent against a gateway and print each step as it happens."""

from __future__ import annotations

import asyncio
import json

from rich.console import Console
from rich.markup import escape

from services.agent_runtime.config import AgentRuntimeSettings
from services.agent_runtime.core import AgentRefusal, AgentStep, build_runtime
from services.agent_runtime.core.sandbox import SandboxError
from services.agent_runtime.core.tools.custom import ToolConfigError

_STYLE = {
    "plan": "magenta",
    "thought": "cyan",
    "tool_call": "yellow",
    "observation": "white",
    "answer": "bold green",
    "error": "bold red",
}


def render(console: Console, step: AgentStep) -> None:
    label = f"[{_STYLE[step.kind]}]{step.kind:<11}[/]"
    if step.kind == "tool_call":
        console.print(f"{label} {escape(step.tool)} {escape(json.dumps(step.arguments))}")
    else:
        console.print(f"{label} {escape(step.content)}")


async def _run(
    agent: str,
    question: str,
    gateway_url: str | None,
    model: str | None,
    manifest: str | None,
    max_steps: int | None,
    session: str | None,
    console: Console,
) -> int:
    core = build_runtime(AgentRuntimeSettings(), gateway_url)
    try:
        if manifest:
            docs = await asyncio.to_thread(core.index.add_manifest, manifest, manifest)
            console.print(f"[dim]indexed {docs} documents from {escape(manifest)}[/]")
        run = core.start(agent, question, model=model, max_steps=max_steps, session_id=session)
        async for step in run:
            render(console, step)
            if step.fatal:
                return 1
        return 0 if run.answer is not None else 1
    finally:
        await core.aclose()


def agent_run_cmd(
    agent: str,
    question: str,
    gateway_url: str | None = None,
    model: str | None = None,
    manifest: str | None = None,
    max_steps: int | None = None,
    session: str | None = None,
) -> int:
    """Returns the exit code: 0 with an answer, 1 on failure, 2 for a bad request.

    With ``session`` the run continues that session (kept under PUYU_HOME's artifact store) and is recorded.
    """
    console = Console()
    try:
        return asyncio.run(_run(agent, question, gateway_url, model, manifest, max_steps, session, console))
    except (AgentRefusal, ToolConfigError, SandboxError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 2
