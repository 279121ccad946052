"""Fixtures shared by every test: a real nats-server per test, isolated settings."""

from __future__ import annotations

import os

# Set before torch loads OpenMP: the tests run services, workers and ranks as processes on the same
# few cores, and OpenMP threads that spin while waiting (its default) starve the others — a torch
# loop on a loaded 2-core machine measured 20x slower spinning than with passive waits.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.cli.stack import Stack
from shared.natsserver import NatsServer, free_port
from shared.settings import CommonSettings

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
    """Every test gets its own PUYU_HOME, never the developer's .puyu.

    Services a test builds in its own process take callers without a token while none is configured
    (PUYU_AUTH_REQUIRED false); the stacks of ``service_stack`` and the tests of shared.auth run with
    authentication on, as ``puyu up`` does."""
    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "puyu-home"))
    monkeypatch.setenv("PUYU_AUTH_REQUIRED", "false")
    for key in ("PUYU_AUTH_TOKENS_FILE", "PUYU_AUTH_TOKEN", "PUYU_AUTH_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PUYU_LOG_JSON", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base(services: int = 8) -> int:
    """A base whose next ``services`` ports are free (the stack's ports are base+1 .. base+8)."""
    while True:
        base = free_port() - 1
        if base > 1024 and all(_free(base + i) for i in range(1, services + 1)):
            return base


@pytest.fixture
def service_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Stack]]:
    """Start services as separate processes (``python -m services.<name>``) on a nats-server of the
    stack's own, secured as ``puyu up`` / ``puyu demo`` secure it (a user per service, permissions from
    shared.bus.permissions; API tokens in its home, every service authenticating its callers); this
    test process is the operator on NATS (PUYU_NATS_NKEY_SEED_FILE) and the stack's admin on the APIs
    (PUYU_AUTH_TOKEN_FILE; a raw HTTP client sends ``stack.client_auth().headers()``)."""
    stacks: list[Stack] = []

    def start(services: tuple[str, ...], **env: str) -> Stack:
        settings = CommonSettings(
            home=tmp_path / "home",
            log_json=False,
            grpc_port_base=free_port_base(),
            http_port_base=free_port_base(),
        )
        stack = Stack(
            settings,
            services=services,
            extra_env={"PUYU_LOG_JSON": "false", "OMP_NUM_THREADS": "2", **env},
            own_nats=True,
        )
        stacks.append(stack)
        stack.start()
        operator = stack.operator_identity()
        assert operator.nkey_seed_file is not None
        monkeypatch.setenv("PUYU_NATS_NKEY_SEED_FILE", str(operator.nkey_seed_file))
        monkeypatch.setenv("PUYU_AUTH_TOKEN_FILE", str(stack.tokens.token_file("admin")))
        stack.wait_healthy(timeout=240)
        return stack

    yield start
    for stack in stacks:
        stack.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.cuda`` tests need a CUDA device: skipped, saying so, on machines without one
    (``make gpu-check`` runs them on a GPU). torch is imported only when such a test was collected."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    reason = "needs a CUDA device (marker cuda: `make gpu-check` runs these on a GPU)"
    if torch.version.cuda is None:
        reason += f"; this torch ({torch.__version__}) is a CPU build"
    for item in marked:
        item.add_marker(pytest.mark.skip(reason=reason))


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's own status once its report is written: a native library's threads (seen
    once after the integration tests: SIGSEGV during interpreter teardown, after the summary) must not
    turn a finished run's result into a crash. The status is pytest's, so a failure still fails."""
    if _EXIT_STATUS and os.environ.get("PUYU_TEST_PLAIN_EXIT") != "1":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
