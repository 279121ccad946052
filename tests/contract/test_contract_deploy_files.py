"""The Dockerfile and NATS configuration: checked without a Docker daemon."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import nats
import pytest

from shared.bus import Bus
from shared.bus.identity import NatsAuthError, NatsIdentity
from shared.bus.natsauth import write_deployment_secrets
from shared.natsserver import find_binary, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
NATS_CONF = ROOT / "deploy" / "nats" / "nats.conf"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_is_multi_stage_with_pinned_cpu_torch() -> None:
    steps = _instructions()
    stages = [arg for op, arg in steps if op == "FROM"]
    assert len(stages) >= 2, "builder and runtime stages"
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    pinned = next(
        p
        for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
            "ml"
        ]
        if p.startswith("torch")
    )
    assert pinned == f"torch=={args['TORCH_VERSION']}", "the image's torch must match pyproject's pin"
    assert "download.pytorch.org/whl/cpu" in args["TORCH_INDEX_URL"]
    runs = [a for op, a in steps if op == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "torch==" in r)
    project_at = next(i for i, r in enumerate(runs) if re.search(r"pip install \"\.\[all", r))
    assert torch_at < project_at, "torch must be installed before the project (else pip pulls a CUDA build)"
    for op, arg in steps:
        if op == "COPY" and "--from" not in arg:
            for src in arg.split()[:-1]:
                assert list(ROOT.glob(src)) or src.endswith("*"), f"COPY source {src} missing"
    cmd = json.loads(next(a for op, a in steps if op == "CMD"))
    assert cmd[:2] == ["puyu", "run"]
    assert any(op == "USER" and a != "root" for op, a in steps), "run as a non-root user"


def test_dockerignore_keeps_context_small_but_complete() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    assert not ignored & {"contracts", "shared", "services", "pyproject.toml", "README.md"}


def _deployed_conf(tmp_path: Path) -> tuple[Path, Path]:
    """deploy/nats/nats.conf beside the secrets ``python -m shared.bus.natsauth`` writes, laid out as
    compose and k8s mount them (auth/ next to the config); its store dir moved out of the way."""
    secrets = tmp_path / "secrets"
    write_deployment_secrets(secrets, ["localhost", "127.0.0.1"])
    etc = tmp_path / "etc"
    shutil.copytree(secrets / "nats-server", etc / "auth")
    text = NATS_CONF.read_text()
    assert 'store_dir: "/data"' in text and "/etc/nats/auth/" in text
    conf = etc / "nats.conf"
    conf.write_text(
        text.replace('store_dir: "/data"', f'store_dir: "{tmp_path / "store"}"').replace(
            "/etc/nats/auth/", f"{etc / 'auth'}/"
        )
    )
    return conf, secrets


async def _tls_and_users(url: str, secrets: Path) -> None:
    ca = secrets / "nats-server" / "ca.crt"
    trainer = NatsIdentity(nkey_seed_file=secrets / "puyu-nats-trainer" / "seed.nk", tls_ca_file=ca)
    bus = Bus(url, "trainer", identity=trainer)
    await asyncio.wait_for(bus.start(), 20)
    await bus.stop()
    with pytest.raises(NatsAuthError, match="requires credentials"):
        await Bus(url, "anonymous", identity=NatsIdentity(tls_ca_file=ca)).start()
    with pytest.raises((nats.errors.Error, OSError)):  # without the CA the server's cert is not trusted
        await nats.connect(
            url, allow_reconnect=False, connect_timeout=3, **trainer.connect_options() | {"tls": None}
        )
    plain = url.replace("tls://", "nats://")
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(
            plain, allow_reconnect=False, connect_timeout=3, inbox_prefix=trainer.inbox_prefix()
        )


def test_nats_conf_is_valid_and_serves_jetstream_with_users_and_tls(tmp_path: Path) -> None:
    binary = find_binary()
    conf, secrets = _deployed_conf(tmp_path)
    check = subprocess.run([binary, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    port, monitor = free_port(), free_port()
    # The config as deployed (with compose's -js), its ports moved out of the way here.
    proc = subprocess.Popen(
        [binary, "-c", str(conf), "-js", "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true", timeout=1
                ):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("nats-server with deploy/nats/nats.conf did not become healthy")
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=2) as resp:
            varz = json.load(resp)
        assert varz["max_payload"] == 8 * 1024 * 1024
        assert varz["jetstream"]["config"]["store_dir"].startswith(str(tmp_path))
        assert varz["tls_required"] and varz["auth_required"]
        asyncio.run(_tls_and_users(f"tls://localhost:{port}", secrets))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
