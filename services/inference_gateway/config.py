"""Settings of the inference gateway (``PUYU_GATEWAY_*``)."""

from __future__ import annotations

import socket
from typing import Any, Literal

from pydantic import ByteSize, Field, model_validator

from shared.settings import CommonSettings

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})


class GatewaySettings(CommonSettings):
    gateway_role: Literal["gateway", "worker"] = Field(
        default="gateway",
        description="gateway: the OpenAI API, routing to workers; worker: engines behind gRPC only.",
    )
    gateway_instance: str | None = Field(
        default=None,
        description="Stable name in announcements, consumers and deployment events "
        "(default: gateway-0; a worker: worker-HOST-GRPCPORT).",
    )
    gateway_max_batch_size: int = Field(
        default=16, ge=1, description="Sequences decoded together per engine."
    )
    gateway_block_size: int = Field(default=16, ge=1, description="Tokens per KV-cache block.")
    gateway_kv_blocks: int | None = Field(
        default=None,
        ge=1,
        description="KV-cache blocks per engine (default: as many as PUYU_GATEWAY_KV_CACHE_MEMORY holds, "
        "else a full batch at 2048 tokens).",
    )
    gateway_kv_cache_memory: ByteSize | None = Field(
        default=None,
        description="Memory the paged KV cache of each engine may take (e.g. 2GiB, 512MB, bytes): the "
        "blocks that fit at the KV dtype's size, scales included (int8 and fp8 hold about twice the "
        "tokens of bf16). On the CPU the per-sequence rows, in the same dtype, come on top of it.",
    )
    gateway_kv_cache_dtype: Literal["auto", "int8", "fp8"] = Field(
        default="auto",
        description="How the KV cache stores keys and values: auto (the model's dtype), int8 or fp8 "
        "(e4m3), both symmetric with a scale per token and KV head, quantised on write.",
    )
    gateway_max_step_tokens: int = Field(
        default=256, ge=1, description="Tokens per engine step (decodes + prefill chunks)."
    )
    gateway_prefix_caching: bool = Field(
        default=True, description="Reuse cached KV blocks of shared prefixes."
    )
    gateway_kv_layout: Literal["auto", "rows", "paged"] = Field(
        default="auto",
        description="Where attention reads keys/values: contiguous rows per sequence (the CPU default) "
        "or the paged blocks (the CUDA default).",
    )
    gateway_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="Precision of the served models' weights and KV cache: auto is the checkpoint's on "
        "CUDA and, on the CPU, bfloat16 where the processor multiplies it natively, else float32.",
    )
    worker_engine: Literal["puyu", "vllm"] = Field(
        default="puyu",
        description="The engine that runs the served models (PUYU_WORKER_ENGINE): puyu's own, or vLLM's "
        "engine in this process (vLLM must be installed in its Python: `make vllm-worker-env`, then "
        "`.venv-vllm/bin/python -m services.inference_gateway worker`).",
    )
    worker_vllm_args: dict[str, Any] = Field(
        default_factory=dict,
        description="With vLLM: more of its engine arguments, as a JSON object (PUYU_WORKER_VLLM_ARGS, "
        'e.g. {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.4, "enforce_eager": true}).',
    )
    gateway_default_max_tokens: int = Field(
        default=16, ge=1, description="max_tokens when a request omits it."
    )
    gateway_drain_timeout: float = Field(default=300.0, gt=0, description="Seconds an old version may drain.")
    gateway_stop_drain_timeout: float = Field(
        default=10.0, ge=0, description="Seconds a stopping process lets running requests finish."
    )
    gateway_api_key: str | None = Field(
        default=None, description="Bearer key the OpenAI API requires, if set."
    )
    gateway_api_keys: str | None = Field(default=None, description="More accepted keys, comma-separated.")
    gateway_rate_limit_rpm: float = Field(
        default=0, ge=0, description="Requests per minute per key (0: off)."
    )
    gateway_max_queue: int = Field(
        default=0, ge=0, description="Waiting requests per engine before 503 (0: off)."
    )
    gateway_request_timeout: float = Field(default=0, ge=0, description="Seconds per request (0: none).")
    gateway_announce_interval: float = Field(
        default=1.0, gt=0, description="Seconds between load announcements in the puyu_workers KV bucket."
    )
    gateway_local_models: bool = Field(
        default=True,
        description="The gateway loads promoted models into its own engines too (off: it only routes).",
    )
    gateway_route_workers: bool = Field(
        default=True, description="Route requests to the worker processes announced in puyu_workers."
    )
    gateway_worker_ttl: float = Field(
        default=6.0, gt=0, description="Seconds a worker's announcement stays valid without a newer one."
    )
    gateway_worker_attempts: int = Field(
        default=3,
        ge=1,
        description="Workers a request tries before it fails (a worker gone before its first token).",
    )
    gateway_num_threads: int | None = Field(default=None, ge=1, description="torch CPU threads.")
    gateway_grpc_port: int | None = None
    gateway_http_port: int | None = None
    gateway_advertise_host: str | None = Field(
        default=None,
        description="Host other processes reach this one at, in its announcements (default: PUYU_HOST "
        "unless a wildcard, else the IP of this machine's hostname: the container or pod IP).",
    )

    @model_validator(mode="after")
    def _one_kv_size(self) -> GatewaySettings:
        if self.gateway_kv_blocks is not None and self.gateway_kv_cache_memory is not None:
            raise ValueError("set PUYU_GATEWAY_KV_BLOCKS or PUYU_GATEWAY_KV_CACHE_MEMORY, not both")
        if self.gateway_kv_cache_memory is not None and self.gateway_kv_cache_memory < 1:
            raise ValueError("PUYU_GATEWAY_KV_CACHE_MEMORY must be positive")
        return self

    def advertised_host(self) -> str:
        """The host a gateway on another machine (container, pod) dials to reach this process."""
        if self.gateway_advertise_host:
            return self.gateway_advertise_host
        if self.host not in WILDCARD_HOSTS:
            return self.host
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"

    def advertised_address(self, port: int) -> str:
        """``host:port`` of this process for others (an IPv6 literal in brackets)."""
        host = self.advertised_host()
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def instance(self, grpc_port: int) -> str:
        if self.gateway_instance:
            return self.gateway_instance
        if self.gateway_role == "worker":
            return f"worker-{socket.gethostname()}-{grpc_port}"
        return "gateway-0"

    def keys(self) -> tuple[str, ...]:
        extra = [k.strip() for k in (self.gateway_api_keys or "").split(",") if k.strip()]
        return tuple(dict.fromkeys([*([self.gateway_api_key] if self.gateway_api_key else []), *extra]))

    def engine_kwargs(self) -> dict[str, object]:
        return {
            "max_batch_size": self.gateway_max_batch_size,
            "block_size": self.gateway_block_size,
            "num_blocks": self.gateway_kv_blocks,
            "max_step_tokens": self.gateway_max_step_tokens,
            "prefix_caching": self.gateway_prefix_caching,
            "kv_layout": self.gateway_kv_layout,
            "kv_cache_dtype": self.gateway_kv_cache_dtype,
            "kv_cache_memory": self.gateway_kv_cache_memory,
            "dtype": self.gateway_dtype,
            **({"vllm_args": self.worker_vllm_args} if self.worker_engine == "vllm" else {}),
        }
