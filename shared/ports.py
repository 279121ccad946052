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

# An inference worker (the gateway's engine process, PUYU_GATEWAY_ROLE=worker) in a container
# (compose.yaml, deploy/k8s) serves on fixed ports past every service's; elsewhere a worker takes the
# ports it is given (PUYU_GATEWAY_GRPC_PORT, _HTTP_PORT) or free ones, as several share a host.
INFERENCE_WORKER_PORT_OFFSET = 17


def grpc_port(service: str, settings: CommonSettings) -> int:
    return settings.grpc_port_base + 1 + SERVICES.index(service)


def http_port(service: str, settings: CommonSettings) -> int:
    return settings.http_port_base + 1 + SERVICES.index(service)


def registry_grpc_target(settings: CommonSettings) -> str:
    return settings.registry_grpc or f"{settings.host}:{grpc_port('model_registry', settings)}"


def http_base_url(service: str, settings: CommonSettings) -> str:
    """The base URL of a service of the embedded stack (https where the stack speaks TLS)."""
    scheme = "https" if settings.tls_clients else "http"
    return f"{scheme}://{settings.host}:{http_port(service, settings)}"


def gateway_base_url(settings: CommonSettings) -> str:
    return settings.gateway_url or http_base_url("inference_gateway", settings)


def inference_worker_grpc_port(settings: CommonSettings) -> int:
    return settings.grpc_port_base + INFERENCE_WORKER_PORT_OFFSET


def inference_worker_http_port(settings: CommonSettings) -> int:
    return settings.http_port_base + INFERENCE_WORKER_PORT_OFFSET
