"""Default ports of the services in the embedded stack (each overridable by environment)."""

from __future__ import annotations

from shared.settings import CommonSettings

SERVICES = (
    "corpus_ingest",
    "dedup",
    "trainer",
    "finetuner",
    "evaluator",
    "model_registry",
    "inference_gateway",
    "agent_runtime",
)


def grpc_port(service: str, settings: CommonSettings) -> int:
    return settings.grpc_port_base + 1 + SERVICES.index(service)


def http_port(service: str, settings: CommonSettings) -> int:
    return settings.http_port_base + 1 + SERVICES.index(service)


def registry_grpc_target(settings: CommonSettings) -> str:
    return settings.registry_grpc or f"{settings.host}:{grpc_port('model_registry', settings)}"


def gateway_base_url(settings: CommonSettings) -> str:
    return settings.gateway_url or f"http://{settings.host}:{http_port('inference_gateway', settings)}"
