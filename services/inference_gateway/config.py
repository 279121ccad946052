"""Settings of the inference gateway (``PUYU_GATEWAY_*``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class GatewaySettings(CommonSettings):
    gateway_instance: str = Field(default="gateway-0", description="Stable name in deployment events.")
    gateway_max_batch_size: int = Field(default=16, ge=1, description="Requests decoded together per engine.")
    gateway_default_max_tokens: int = Field(
        default=16, ge=1, description="max_tokens when a request omits it."
    )
    gateway_drain_timeout: float = Field(default=300.0, gt=0, description="Seconds an old version may drain.")
    gateway_api_key: str | None = Field(
        default=None, description="Bearer key the OpenAI API requires, if set."
    )
    gateway_num_threads: int | None = Field(default=None, ge=1, description="torch CPU threads.")
    gateway_grpc_port: int | None = None
    gateway_http_port: int | None = None
