"""``puyu agent run``: run an agent against a gateway and print each step as it happens."""

from __future__ import annotations

import argparse
import asyncio
import json

from rich.console import Console
from rich.markup import escape

from services.agent_runtime.agents.base import AgentStep
from services.agent_runtime.app import build_core
from services.agent_runtime.catalog import InvalidRun, UnknownAgent
from services.agent_runtime.config import AgentRuntimeSettings
from services.agent_runtime.corpus import CorpusError
from services.agent_runtime.sandbox import SandboxError
from services.agent_runtime.sessions import InvalidSession
from services.agent_runtime.tools.custom import ToolConfigError

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
    settings = AgentRuntimeSettings()
    core = build_core(settings, gateway_url)
    try:
        if manifest:
            docs = await asyncio.to_thread(core.index.add_manifest, manifest, manifest)
            console.print(f"[dim]indexed {docs} documents from {escape(manifest)}[/]")
        answer = None
        steps = core.catalog.run(agent, question, model=model, max_steps=max_steps, session_id=session)
        async for step in steps:
            render(console, step)
            if step.fatal:
                return 1
            answer = step.content if step.kind == "answer" else answer
        return 0 if answer is not None else 1
    finally:
        await core.llm.aclose()


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
    except (UnknownAgent, InvalidRun, CorpusError, InvalidSession, ToolConfigError, SandboxError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    parser.add_argument("--agent", default="react")
    parser.add_argument("--gateway-url", default=None, help="default: PUYU_GATEWAY_URL or the local gateway")
    parser.add_argument("--model", default=None, help="served model name (default: PUYU_AGENT_DEFAULT_MODEL)")
    parser.add_argument("--manifest", default=None, help="dataset manifest to index for search_corpus")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--session", default=None, help="session id: continue (and record) a conversation")


def main(args: argparse.Namespace) -> int:
    return agent_run_cmd(
        args.agent, args.question, args.gateway_url, args.model, args.manifest, args.max_steps, args.session
    )
