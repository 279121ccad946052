"""Run the services as separate processes on one machine (the embedded stack of `puyu up` / `puyu demo`).

Starts a local nats-server when none answers at the configured URL, launches every service as its
own process (``python -m services.<name>``) with logs under HOME/logs, waits for their health
endpoints, and restarts a service that dies (as a process manager would), so that killing one
mid-chain only delays the chain: its unacked message is redelivered to the restarted process.

A nats-server the stack starts has users: the stack makes an NKEY identity per service (and one for
the operator and the admin) in HOME/nats-auth on first start, writes the server's authorization from
``shared.bus.permissions`` at every start, gives each service its own seed and provisions the streams
as the admin. On a NATS it finds running, the services use the identity their settings name (none:
that server has no users, and each service warns).

Callers of the services' HTTP and gRPC APIs need tokens (``shared.auth``): on first start the stack
makes an admin token (the CLI's) and one per service in HOME/auth, and gives every service the
tokens file and its own token.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from shared.auth import ClientAuth
from shared.auth.local import ADMIN as ADMIN_PRINCIPAL
from shared.auth.local import TokenDir, local_principals, service_principal
from shared.bus.identity import NatsIdentity
from shared.bus.natsauth import DEFAULT_GATEWAY_INSTANCE, AuthDir, local_users
from shared.bus.permissions import ADMIN, GATEWAY, OPERATOR, role_for_service
from shared.bus.streams import provision
from shared.natsserver import NatsServer, answers, free_port
from shared.ports import SERVICES, grpc_port, http_base_url, http_port
from shared.settings import CommonSettings

NATS_URL_FILE = "nats.url"  # in a stack's home while the stack's own nats-server runs
NATS_AUTH_DIR = "nats-auth"  # the identities of a stack's own nats-server, in its home
# The identity settings a stack sets per service: one inherited from the launcher must not win.
_IDENTITY_ENV = ("PUYU_NATS_NKEY_SEED_FILE", "PUYU_NATS_CREDS_FILE")
_TOKEN_ENV = ("PUYU_AUTH_TOKEN", "PUYU_AUTH_TOKEN_FILE")


def local_auth(home: Path) -> AuthDir:
    return AuthDir(home / NATS_AUTH_DIR)


def operator_identity(settings: CommonSettings, home: Path | None = None) -> NatsIdentity:
    """Who the CLI is on NATS: the identity its settings name, else the operator identity of the
    stack under ``home`` (default: the settings' home) when that stack made one."""
    configured = NatsIdentity.from_settings(settings)
    if not configured.anonymous:
        return configured
    auth = local_auth(home or settings.home)
    seed = auth.seed_file_of(OPERATOR)
    return auth.identity(OPERATOR) if seed.is_file() else configured


def recorded_nats_url(home: Path) -> str | None:
    """The URL of the nats-server a running stack with its own NATS (``puyu demo``) started under
    ``home``: None when none is recorded or the recorded one no longer answers (a killed stack)."""
    path = home / NATS_URL_FILE
    if not path.is_file():
        return None
    url = path.read_text(encoding="utf-8").strip()
    return url if url and answers(url) else None


def start_secured_nats(
    home: Path, port: int, gateway_instance: str = DEFAULT_GATEWAY_INSTANCE, workers: tuple[str, ...] = ()
) -> tuple[NatsServer, AuthDir]:
    """A nats-server on 127.0.0.1:``port`` with the users of a stack under ``home`` (seeds made on
    first start and kept; ``workers``: inference worker instances, each its own user), its streams
    and buckets provisioned as the admin. Its store is HOME/nats."""
    auth = local_auth(home)
    config = auth.ensure(local_users(gateway_instance=gateway_instance, workers=workers))
    server = NatsServer(home / "nats", port=port, host="127.0.0.1", config_file=config).start()
    try:
        asyncio.run(provision(server.url, auth.identity(ADMIN)))
    except BaseException:
        server.stop()
        raise
    return server, auth


class Stack:
    def __init__(
        self,
        settings: CommonSettings,
        services: tuple[str, ...] = SERVICES,
        extra_env: dict[str, str] | None = None,
        restart: bool = True,
        own_nats: bool = False,
    ) -> None:
        """``own_nats``: always start a nats-server of this stack's own (free port, store under its home)
        instead of using one that answers at the configured URL, so that no state from earlier runs
        (processed-event markers, the job board, durable consumers) reaches this one."""
        self.settings = settings
        self.own_nats = own_nats
        self.services = services
        self.extra_env = extra_env or {}
        self.restart = restart
        self.home = settings.home.resolve()
        self.log_dir = self.home / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = dict.fromkeys(services, 0)
        self.nats: NatsServer | None = None
        self.auth: AuthDir | None = None  # the identities of this stack's own nats-server
        self.tokens = TokenDir.of_home(self.home)  # who may call the services' APIs
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    # ------------------------------------------------------------------------------ nats
    def ensure_nats(self) -> str:
        if self.own_nats:
            taken = {f(name, self.settings) for name in self.services for f in (grpc_port, http_port)}
            port = free_port()
            while port in taken:  # an ephemeral port may be one a service is about to bind
                port = free_port()
            self.nats = self._start_nats(port)
            self.settings = self.settings.model_copy(update={"nats_url": self.nats.url})
            # on a free port nobody can guess: recorded so that `puyu status` finds this stack's jobs
            (self.home / NATS_URL_FILE).write_text(self.nats.url, encoding="utf-8")
            return self.nats.url
        url = self.settings.nats_url
        if answers(url):
            return url
        parsed = urlparse(url)
        if parsed.hostname not in ("127.0.0.1", "localhost"):
            raise RuntimeError(f"no NATS answers at {url} and it is not local: start it or set PUYU_NATS_URL")
        self.nats = self._start_nats(parsed.port or 4222)
        return url

    def _start_nats(self, port: int) -> NatsServer:
        gateway = self.extra_env.get("PUYU_GATEWAY_INSTANCE") or os.environ.get("PUYU_GATEWAY_INSTANCE")
        server, self.auth = start_secured_nats(self.home, port, gateway or DEFAULT_GATEWAY_INSTANCE)
        return server

    def identity(self, service: str) -> NatsIdentity | None:
        """The identity this stack gives ``service`` (None: the one its settings name)."""
        if self.auth is None:
            return None
        role = role_for_service(service)
        if role == GATEWAY:
            gateway = self.extra_env.get("PUYU_GATEWAY_INSTANCE") or os.environ.get("PUYU_GATEWAY_INSTANCE")
            return self.auth.identity(GATEWAY, gateway or DEFAULT_GATEWAY_INSTANCE)
        return self.auth.identity(role)

    def operator_identity(self) -> NatsIdentity:
        """Who a client of this stack (the demo's CLI, a test) is on its NATS."""
        if self.auth is not None:
            return self.auth.identity(OPERATOR)
        return NatsIdentity.from_settings(self.settings)

    # ------------------------------------------------------------------------------ API tokens
    def ensure_tokens(self) -> None:
        self.tokens.ensure(local_principals(SERVICES))  # every service: one may join the stack later

    def admin_token(self) -> str:
        """The token of the stack's admin: what the CLI (and a test driving the stack) sends."""
        return self.tokens.token(ADMIN_PRINCIPAL)

    def client_auth(self) -> ClientAuth:
        return ClientAuth.from_settings(self.settings, token=self.admin_token())

    # ------------------------------------------------------------------------------ services
    def env(self, service: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        # Every service of the stack shares this machine's cores: OpenMP threads that spin while
        # waiting (the default) starve the other services' torch work; passive waits do not.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.update(
            PUYU_HOME=str(self.home),
            PUYU_NATS_URL=self.settings.nats_url,
            PUYU_GRPC_PORT_BASE=str(self.settings.grpc_port_base),
            PUYU_HTTP_PORT_BASE=str(self.settings.http_port_base),
            PUYU_HOST=self.settings.host,
            PYTHONUNBUFFERED="1",
        )
        if self.settings.artifact_root:
            env["PUYU_ARTIFACT_ROOT"] = self.settings.artifact_root
        if self.settings.database_url:
            env["PUYU_DATABASE_URL"] = self.settings.database_url
        for key in _TOKEN_ENV:  # one inherited from the launcher must not stand in for the service's
            env.pop(key, None)
        env["PUYU_AUTH_TOKENS_FILE"] = str(self.tokens.tokens_file)
        env["PUYU_AUTH_REQUIRED"] = "true"
        if service:
            env["PUYU_AUTH_TOKEN_FILE"] = str(self.tokens.token_file(service_principal(service)))
        env.update(self.extra_env)
        identity = self.identity(service) if service else None
        if identity is not None and identity.nkey_seed_file is not None:
            for key in _IDENTITY_ENV:
                env.pop(key, None)
            env["PUYU_NATS_NKEY_SEED_FILE"] = str(identity.nkey_seed_file)
        return env

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env=self.env(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches the stack, which stops children in order
        )
        with self._lock:
            self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.ensure_tokens()
        self.ensure_nats()
        for name in self.services:
            self.spawn(name)
        if self.restart:
            self._supervisor = threading.Thread(target=self._supervise, daemon=True, name="stack-supervisor")
            self._supervisor.start()

    def health_url(self, name: str) -> str:
        return f"{http_base_url(name, self.settings)}/health"

    def healthy(self, name: str) -> bool:
        try:
            verify = ClientAuth.from_settings(self.settings).verify
            return httpx.get(self.health_url(name), timeout=2, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = 180.0, names: tuple[str, ...] | None = None) -> None:
        pending = set(names or self.services)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is not None and not self.restart:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode}; see {self.log_dir / (name + '.log')}"
                    )
                if self.healthy(name):
                    pending.discard(name)
            time.sleep(0.5)
        if pending:
            raise TimeoutError(
                f"services not healthy after {timeout:.0f}s: {', '.join(sorted(pending))} "
                f"(logs in {self.log_dir})"
            )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(30)

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and not self._stopping.is_set():
                    self.restarts[name] += 1
                    time.sleep(min(2 ** self.restarts[name], 10))
                    if not self._stopping.is_set():
                        self.spawn(name)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            procs = list(self.procs.items())
        for _, proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 20
        for _, proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.nats:
            (self.home / NATS_URL_FILE).unlink(missing_ok=True)
            self.nats.stop()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path: Path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
