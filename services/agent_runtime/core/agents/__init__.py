"""Agents: each turns a question into a stream of steps, calling the gateway and tools."""

from services.agent_runtime.core.agents.base import Agent, AgentStep
from services.agent_runtime.core.agents.react import ReActAgent, parse_turn

__all__ = ["Agent", "AgentStep", "ReActAgent", "parse_turn"]
