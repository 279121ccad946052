"""The launcher's own nats-server (what `puyu demo` uses): a fresh JetStream of its own, on a port no
service of the stack binds, gone when the stack stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli.stack import Stack
from shared.natsserver import answers
from shared.ports import SERVICES, grpc_port, http_port
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration


def test_own_nats_is_fresh_and_stops_with_the_stack(tmp_path: Path) -> None:
    settings = CommonSettings(home=tmp_path, nats_url="nats://127.0.0.1:4222")
    stack = Stack(settings, restart=False, own_nats=True)
    stack.ensure_nats()  # what start() does first, before it spawns the services
    try:
        url = stack.settings.nats_url
        assert url != "nats://127.0.0.1:4222" and answers(url)
        port = int(url.rsplit(":", 1)[1])
        assert port not in {f(s, settings) for s in SERVICES for f in (grpc_port, http_port)}
        assert (tmp_path / "nats").is_dir()  # its store lives in the stack's home
    finally:
        stack.stop()
    assert not answers(url)
