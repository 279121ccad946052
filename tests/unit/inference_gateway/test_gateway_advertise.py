"""The address a worker announces: the one a gateway in another container or pod can dial."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from services.inference_gateway import app
from services.inference_gateway.config import GatewaySettings
from services.inference_gateway.core.pool import ModelPool


@pytest.fixture(autouse=True)
def _no_advertise_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUYU_GATEWAY_ADVERTISE_HOST", raising=False)


def _hostname_resolves_to(monkeypatch: pytest.MonkeyPatch, ip: str | None) -> None:
    def resolve(name: str) -> str:
        assert name == "pod-7"
        if ip is None:
            raise socket.gaierror(socket.EAI_NONAME, "no such host")
        return ip

    monkeypatch.setattr(socket, "gethostname", lambda: "pod-7")
    monkeypatch.setattr(socket, "gethostbyname", resolve)


def test_explicit_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    _hostname_resolves_to(monkeypatch, "10.0.0.5")
    monkeypatch.setenv("PUYU_GATEWAY_ADVERTISE_HOST", "10.1.2.3")
    assert GatewaySettings(host="0.0.0.0").advertised_host() == "10.1.2.3"
    assert GatewaySettings(host="192.168.1.4").advertised_host() == "10.1.2.3"


@pytest.mark.parametrize("host", ["127.0.0.1", "192.168.1.4", "worker-a.internal"])
def test_a_specific_bind_host_is_advertised(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    _hostname_resolves_to(monkeypatch, "10.0.0.5")
    assert GatewaySettings(host=host).advertised_host() == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_wildcard_advertises_the_ip_of_the_hostname(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    _hostname_resolves_to(monkeypatch, "10.0.0.5")  # the container IP under Docker, the pod IP under k8s
    assert GatewaySettings(host=host).advertised_host() == "10.0.0.5"


def test_an_unresolvable_hostname_falls_back_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    _hostname_resolves_to(monkeypatch, None)
    assert GatewaySettings(host="0.0.0.0").advertised_host() == "127.0.0.1"


def test_addresses_bracket_ipv6_literals() -> None:
    assert GatewaySettings(host="10.0.0.5").advertised_address(50067) == "10.0.0.5:50067"
    assert GatewaySettings(host="::1").advertised_address(50067) == "[::1]:50067"
    assert GatewaySettings(gateway_advertise_host="fd00::7").advertised_address(8117) == "[fd00::7]:8117"


def test_a_worker_announces_its_advertised_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    _hostname_resolves_to(monkeypatch, "10.0.0.5")
    announced: dict[str, Any] = {}

    class Recorder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            announced.update(kwargs)

        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        async def withdraw(self) -> None: ...

    monkeypatch.setattr(app, "Announcer", Recorder)
    settings = GatewaySettings(
        gateway_role="worker", host="0.0.0.0", gateway_grpc_port=50067, gateway_http_port=8117
    )
    service = app.create_service(settings, pool=ModelPool())
    assert announced["grpc_target"] == "10.0.0.5:50067"
    assert announced["http_url"] == "http://10.0.0.5:8117"
    assert service.core.instance == "worker-pod-7-50067"
