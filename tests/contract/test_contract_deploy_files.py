"""The Dockerfile and NATS configuration: checked without a Docker daemon."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dockerfile
import nats
import pytest

from shared.bus import Bus
from shared.bus.identity import NatsAuthError, NatsIdentity
from shared.bus.natsauth import write_deployment_secrets
from shared.natsserver import find_binary, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
NATS_CONF = ROOT / "deploy" / "nats" / "nats.conf"


@dataclass
class Stage:
    name: str
    parent: str  # an image, or an earlier stage's name
    steps: list[dockerfile.Command]

    def ops(self, op: str) -> list[dockerfile.Command]:
        return [c for c in self.steps if c.cmd == op]

    def args(self) -> dict[str, str | None]:
        """Each ARG of the stage and its default (None: the global ARG's)."""
        pairs = (a.partition("=") for c in self.ops("ARG") for a in c.value)
        return {name: (value if eq else None) for name, eq, value in pairs}

    def runs(self) -> list[str]:
        return [c.value[0] for c in self.ops("RUN")]


def _parse() -> tuple[dict[str, str], dict[str, Stage]]:
    """The global ARGs and the stages in order, as BuildKit's own parser reads the file."""
    commands = dockerfile.parse_file(str(DOCKERFILE))
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for command in commands:
        if command.cmd == "FROM":
            image, as_, name = command.value
            assert as_.upper() == "AS", command.original
            current = stages[name] = Stage(name, image, [])
        elif current is None:
            assert command.cmd == "ARG", f"only ARG may come before the first FROM: {command.original}"
            global_args.update(a.split("=", 1) for a in command.value)  # type: ignore[arg-type]
        else:
            current.steps.append(command)
    return global_args, stages


def _lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    chain = [stages[name]]
    while chain[-1].parent in stages:
        chain.append(stages[chain[-1].parent])
    return chain


def _env(stages: dict[str, Stage], name: str) -> dict[str, str]:
    """The environment a container of the stage starts with ($VAR expanded as Docker expands ENV)."""
    env: dict[str, str] = {}
    for stage in reversed(_lineage(stages, name)):
        for command in stage.ops("ENV"):
            for key, value in zip(command.value[::2], command.value[1::2], strict=True):
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return env


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerfile_is_multi_stage_with_pinned_cpu_torch() -> None:
    global_args, stages = _parse()
    assert list(stages)[-1] == "runtime", "a build without --target must make the CPU image"
    assert global_args["PYTHON_IMAGE"] == "python:3.11-slim"
    pinned = next(p for p in _pyproject()["project"]["optional-dependencies"]["ml"] if p.startswith("torch"))
    assert pinned == f"torch=={global_args['TORCH_VERSION']}", "the image's torch must match pyproject's pin"
    builder = stages["builder"]
    assert "download.pytorch.org/whl/cpu" in str(builder.args()["TORCH_INDEX_URL"])
    runs = builder.runs()
    torch_at = next(i for i, r in enumerate(runs) if '--index-url "${TORCH_INDEX_URL}" "torch==' in r)
    project_at = next(i for i, r in enumerate(runs) if re.search(r"pip install \"\.\[all,s3\]\"", r))
    assert torch_at < project_at, "torch must be installed before the project (else pip pulls a CUDA build)"
    runtime = stages["runtime"]
    assert _lineage(stages, "runtime")[-1].parent == "${PYTHON_IMAGE}"
    assert any(
        c.value == ("/opt/venv", "/opt/venv") and "--from=builder" in c.flags for c in runtime.ops("COPY")
    )
    for name in ("runtime", "gpu", "gpu-vllm"):
        chain = _lineage(stages, name)
        cmd = next(c for stage in chain for c in stage.ops("CMD"))
        assert cmd.json and list(cmd.value[:2]) == ["puyu", "run"]
        user = next(c.value[0] for stage in chain for c in stage.ops("USER"))  # the last one set
        assert user not in ("root", "0"), f"{name} must run as a non-root user"
        assert _env(stages, name)["PUYU_HOME"] == "/var/lib/puyu"


def test_every_stage_is_well_formed() -> None:
    """Stages derive from the python image or an earlier stage; COPY --from names an earlier stage and
    COPY sources exist; every ${VAR} a RUN uses is an ARG or ENV of its stage's lineage (a global ARG
    must be declared again inside a stage, or it expands to nothing)."""
    global_args, stages = _parse()
    seen: set[str] = set()
    for name, stage in stages.items():
        assert stage.parent == "${PYTHON_IMAGE}" or stage.parent in seen, f"{name}: FROM {stage.parent}"
        seen.add(name)
        declared = set(_env(stages, name))
        for ancestor in _lineage(stages, name):
            declared |= set(ancestor.args())
        for command in stage.ops("RUN"):
            for var in re.findall(r"\$\{(\w+)\}", command.value[0]):
                assert var in declared, f"{name}: RUN uses ${{{var}}}, not an ARG/ENV of the stage"
        for command in stage.ops("ARG"):
            for arg in command.value:
                if "=" not in arg:  # a global ARG brought into the stage must exist
                    assert arg in global_args, f"{name}: ARG {arg} has no global default"
        for command in stage.ops("COPY"):
            source_stage = next((f.split("=", 1)[1] for f in command.flags if f.startswith("--from=")), None)
            if source_stage is not None:
                assert source_stage in seen - {name}, f"{name}: COPY --from={source_stage}"
                continue
            for src in command.value[:-1]:
                assert list(ROOT.glob(src)) or src.endswith("*"), f"COPY source {src} missing"


def test_gpu_targets_take_cuda_torch_triton_and_the_gpu_extra() -> None:
    _, stages = _parse()
    extras = _pyproject()["project"]["optional-dependencies"]
    assert "gpu" in extras
    builder = stages["gpu-builder"]
    assert builder.parent == "${PYTHON_IMAGE}"
    assert re.fullmatch(
        r"https://download\.pytorch\.org/whl/cu12\d+", str(builder.args()["TORCH_CUDA_INDEX_URL"])
    )
    assert builder.args()["TORCH_VERSION"] is None, "the pin comes from the global ARG (pyproject's)"
    runs = builder.runs()
    torch_at = next(i for i, r in enumerate(runs) if '--index-url "${TORCH_CUDA_INDEX_URL}" "torch==' in r)
    assert "import torch, triton" in runs[torch_at], "the CUDA wheel must bring Triton"
    project_at = next(i for i, r in enumerate(runs) if 'pip install ".[all,s3,gpu]"' in r)
    assert torch_at < project_at and "pip check" in runs[project_at]
    gpu = stages["gpu"]
    assert any(
        c.value == ("/opt/venv", "/opt/venv") and "--from=gpu-builder" in c.flags for c in gpu.ops("COPY")
    )
    assert any("gcc" in r for r in gpu.runs()), "Triton compiles its launcher with the system C compiler"
    env = _env(stages, "gpu")
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert [s.name for s in _lineage(stages, "gpu")] == ["gpu", "base"], "the runtime base: no build tools"


def test_gpu_vllm_target_runs_workers_in_vllms_venv(tmp_path: Path) -> None:
    _, stages = _parse()
    vllm = stages["vllm-builder"]
    assert vllm.parent == "gpu-builder"
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(vllm.args()["VLLM_VERSION"])), "pin vLLM's version"
    install = next(r for r in vllm.runs() if "/opt/vllm/bin/pip install" in r)
    assert '"vllm==${VLLM_VERSION}"' in install and "--no-deps ." in install
    assert "-c /tmp/vllm-held.txt -r /tmp/serve-requirements.txt" in install
    image = stages["gpu-vllm"]
    assert image.parent == "gpu"
    assert any(
        c.value == ("/opt/vllm", "/opt/vllm") and "--from=vllm-builder" in c.flags for c in image.ops("COPY")
    )
    env = _env(stages, "gpu-vllm")
    assert env["PATH"].split(":")[:2] == ["/opt/vllm/bin", "/opt/venv/bin"]
    assert env["PUYU_WORKER_ENGINE"] == "vllm"
    # The heredoc that names puyu[serve,s3]'s requirements, run on this checkout's pyproject.toml.
    (names_step,) = [c for c in vllm.ops("RUN") if c.heredocs]
    assert names_step.value[0].startswith("python - > /tmp/serve-requirements.txt")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    done = subprocess.run(
        [sys.executable, "-"],
        input=names_step.heredocs[0].content,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    names = set(done.stdout.split())
    wanted = {"transformers", "torch", "sse-starlette", "s3fs", "faststream[nats]", "grpcio"}
    assert wanted <= names, wanted - names
    assert not any(n.startswith("puyu") for n in names)


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
