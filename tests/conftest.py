"""Fixtures shared by every test: a real nats-server per test, isolated settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.natsserver import NatsServer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream and its own store, on a free port."""
    with NatsServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"test data folder {SHARED_DATA} is absent (it sits beside the checkout in CI)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own PUYU_HOME, never the developer's .puyu."""
    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "puyu-home"))
    monkeypatch.setenv("PUYU_LOG_JSON", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
