"""compose.yaml is a valid Compose file and wires the real services, ports and dependencies."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import pytest
import yaml

from shared.ports import (
    SERVICES,
    grpc_port,
    http_port,
    inference_worker_grpc_port,
    inference_worker_http_port,
)
from shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
INFRA = {"nats", "postgres", "minio", "minio-init"}
ONE_SHOT = {"minio-init"}
PUBLISHED = {"model_registry", "inference_gateway", "agent_runtime"}
WORKERS = {"inference-worker": "inference_gateway"}  # more processes of a service, in another role
# The GPU variants (profiles gpu, gpu-vllm): each is a CPU service of the stack on the CUDA image.
GPU = {
    "trainer-gpu": "trainer",
    "finetuner-gpu": "finetuner",
    "evaluator-gpu": "evaluator",
    "inference-worker-gpu": "inference-worker",
    "inference-worker-vllm": "inference-worker",
}
DEFAULTS = CommonSettings.model_construct()  # the port bases the images run with (no PUYU_*_PORT_BASE set)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def compose_spec() -> dict[str, Any]:
    # check-jsonschema vendors the official compose-spec schema (no network needed).
    path = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text())


def test_validates_against_compose_spec(compose: dict[str, Any], compose_spec: dict[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(compose_spec)(compose_spec)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_spec_validation_catches_mistakes(compose: dict[str, Any], compose_spec: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["dedup"]["healthcheck"]["intervall"] = "5s"
    validator = jsonschema.validators.validator_for(compose_spec)(compose_spec)
    assert not validator.is_valid(broken)


def _package(name: str) -> str:
    return name.replace("-", "_")


def test_every_service_is_a_real_package(compose: dict[str, Any]) -> None:
    services = compose["services"]
    app = set(services) - INFRA - set(WORKERS) - set(GPU)
    assert {_package(n) for n in app} == set(SERVICES), (
        "compose must run exactly the services of shared.ports"
    )
    for name in app | set(WORKERS):
        pkg = WORKERS.get(name) or _package(name)
        assert (ROOT / "services" / pkg / "__init__.py").is_file(), f"services/{pkg} is not a package"
        assert services[name]["command"] == ["puyu", "run", pkg]
        assert services[name]["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert (ROOT / services[name]["build"]["context"] / "deploy/docker/Dockerfile").is_file()


def test_dependencies_exist_and_are_acyclic(compose: dict[str, Any]) -> None:
    services = compose["services"]
    graph: dict[str, set[str]] = {}
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with a condition"
        for target, spec in deps.items():
            assert target in services, f"{name} depends on unknown service {target}"
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {target}"
        graph[name] = set(deps)
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {n for n, deps in graph.items() if n not in done and deps <= done}
        assert ready, f"depends_on cycle among {sorted(set(graph) - done)}"
        done |= ready


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no"
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_service_healthchecks_and_ports_follow_shared_ports(compose: dict[str, Any]) -> None:
    for pkg in SERVICES:
        svc = compose["services"][pkg.replace("_", "-")]
        probe = " ".join(svc["healthcheck"]["test"])
        assert re.search(rf"http://127\.0\.0\.1:{http_port(pkg, DEFAULTS)}/health\b", probe), (pkg, probe)
        published = {p.split(":")[-1] for p in svc.get("ports", [])}
        if pkg in PUBLISHED:
            assert published == {str(http_port(pkg, DEFAULTS)), str(grpc_port(pkg, DEFAULTS))}, pkg
        else:
            assert not published, f"{pkg} should not be published"


def test_inference_workers_scale_behind_a_routing_gateway(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker, gateway = services["inference-worker"], services["inference-gateway"]
    env = worker["environment"]
    assert env["PUYU_GATEWAY_ROLE"] == "worker"
    ports = {int(env["PUYU_GATEWAY_HTTP_PORT"]), int(env["PUYU_GATEWAY_GRPC_PORT"])}
    assert ports == {inference_worker_http_port(DEFAULTS), inference_worker_grpc_port(DEFAULTS)}
    taken = {p for pkg in SERVICES for p in (http_port(pkg, DEFAULTS), grpc_port(pkg, DEFAULTS))}
    assert not ports & (taken | {4222, 8222, 9000, 9001, 5432}), "a worker port clashes with a service's"
    probe = " ".join(worker["healthcheck"]["test"])
    assert f"http://127.0.0.1:{env['PUYU_GATEWAY_HTTP_PORT']}/health" in probe
    # Replicas (--scale) need no host ports, no fixed name and an address of their own (the default
    # advertise host: the container's IP, as PUYU_HOST is a wildcard).
    assert "ports" not in worker and "container_name" not in worker and "hostname" not in worker
    assert "PUYU_GATEWAY_ADVERTISE_HOST" not in env and "PUYU_GATEWAY_INSTANCE" not in env
    assert worker["depends_on"].keys() >= {"nats", "minio-init", "model-registry"}
    assert gateway["environment"]["PUYU_GATEWAY_LOCAL_MODELS"] == "false"
    assert "PUYU_GATEWAY_ROLE" not in gateway["environment"]


def test_service_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    registry = services["model-registry"]
    for pkg in [*SERVICES, *WORKERS]:
        env = services[pkg.replace("_", "-")]["environment"]
        assert env["PUYU_NATS_URL"] == "tls://nats:4222"
        assert env["PUYU_NATS_NKEY_SEED_FILE"] == "/run/secrets/nats/seed.nk"
        assert env["PUYU_NATS_TLS_CA_FILE"] == "/run/secrets/nats/ca.crt"
        assert env["PUYU_ARTIFACT_ROOT"].startswith("s3://")
        assert env["PUYU_HOST"] == "0.0.0.0"
        assert env["FSSPEC_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
        assert env["PUYU_REGISTRY_GRPC"] == f"model-registry:{grpc_port('model_registry', DEFAULTS)}"
        assert (
            env["PUYU_GATEWAY_URL"] == f"http://inference-gateway:{http_port('inference_gateway', DEFAULTS)}"
        )
        assert ("PUYU_DATABASE_URL" in env) == (pkg == "model_registry")
        assert ("PUYU_GATEWAY_ROLE" in env) == (pkg in WORKERS)
    assert registry["environment"]["PUYU_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert registry["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The credentials the services use are the ones MinIO and PostgreSQL are set up with.
    minio = services["minio"]["environment"]
    env = registry["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    bucket = env["PUYU_ARTIFACT_ROOT"].removeprefix("s3://").split("/")[0]
    assert f"/{bucket}" in " ".join(services["minio-init"]["command"])
    pg = services["postgres"]["environment"]
    assert (
        f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
        in (env["PUYU_DATABASE_URL"])
    )


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source}"


def test_nats_runs_jetstream_with_monitoring(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    cmd = nats["command"]
    assert "-js" in cmd
    conf_mount = next(v for v in nats["volumes"] if v.split(":")[1] == cmd[cmd.index("--config") + 1])
    assert 'store_dir: "/data"' in (ROOT / conf_mount.split(":")[0]).read_text()
    assert any(v.endswith(":/data") for v in nats["volumes"])
    assert "8222/healthz" in " ".join(nats["healthcheck"]["test"])


def test_nats_has_users_and_tls_from_secrets(compose: dict[str, Any], tmp_path: Path) -> None:
    """Each service mounts its own NATS identity only; the server its authorization and certificate;
    every file comes from what ``python -m shared.bus.natsauth`` writes, none from the image."""
    from shared.bus.natsauth import write_deployment_secrets

    services, secrets = compose["services"], compose["secrets"]
    for name in [*(p.replace("_", "-") for p in SERVICES), *WORKERS]:
        mounted = {
            m["target"]: m["source"]
            for m in services[name]["secrets"]
            if m["source"].startswith("puyu-nats-")
        }
        assert mounted == {
            "/run/secrets/nats/seed.nk": f"puyu-nats-{name}",
            "/run/secrets/nats/ca.crt": "puyu-nats-ca",
        }
    nats = {m["target"]: m["source"] for m in services["nats"]["secrets"]}
    assert set(nats) == {"/etc/nats/auth/auth.conf", "/etc/nats/auth/tls.crt", "/etc/nats/auth/tls.key"}
    conf = (ROOT / "deploy" / "nats" / "nats.conf").read_text()
    assert 'include "auth/auth.conf"' in conf and "tls {" in conf
    for target in nats:
        assert target.removeprefix("/etc/nats/") in conf or f'"{target}"' in conf, target
    out = tmp_path / "secrets"
    write_deployment_secrets(out, ["nats", "localhost"])
    for name, secret in secrets.items():
        if name.startswith("puyu-auth-"):  # API tokens: test_contract_auth_deploy
            continue
        path = secret["file"]
        assert path.startswith("./deploy/nats/secrets/"), name
        assert (out / path.removeprefix("./deploy/nats/secrets/")).is_file(), (
            f"{name}: the generator writes no {path}"
        )
    assert "deploy/nats/secrets" in (ROOT / ".dockerignore").read_text()
    assert "/deploy/nats/secrets/" in (ROOT / ".gitignore").read_text()


def _image_targets() -> set[str]:
    """The stage names of deploy/docker/Dockerfile (the targets ``build.target`` may name)."""
    commands = dockerfile.parse_file(str(ROOT / "deploy" / "docker" / "Dockerfile"))
    return {c.value[2] for c in commands if c.cmd == "FROM"}


def test_gpu_profiles_run_the_cuda_image_on_reserved_gpus(
    compose: dict[str, Any], compose_spec: dict[str, Any]
) -> None:
    services = compose["services"]
    targets = _image_targets()
    for name, base_name in GPU.items():
        svc, base = services[name], services[base_name]
        vllm = name.endswith("-vllm")
        assert svc["profiles"] == (["gpu-vllm"] if vllm else ["gpu"]), name
        target = svc["build"]["target"]
        assert target == ("gpu-vllm" if vllm else "gpu") and target in targets, name
        assert svc["image"] == f"puyu:{target}" != base["image"], "a CPU build must not overwrite the GPU tag"
        assert {k: v for k, v in svc["build"].items() if k != "target"} == base["build"]
        # Everything else is its CPU service's: identity on NATS, API token, settings, health, dependencies.
        same = set(base) - {"image", "build", "environment", "deploy", "shm_size"}
        assert {k: svc.get(k) for k in same} == {k: base[k] for k in same}, name
        expected_env = {**base["environment"], **({"PUYU_WORKER_ENGINE": "vllm"} if vllm else {})}
        assert svc["environment"] == expected_env, name
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert ("count" in device) != ("device_ids" in device), name
        if "inference-worker" in name:
            # a count gives every replica the same first GPUs: a worker names its device
            (ids,) = device["device_ids"]
            assert re.fullmatch(r"\$\{PUYU_\w+_GPU:-\d+\}", ids), ids
    for name in set(services) - set(GPU):
        assert "profiles" not in services[name], f"{name}: `docker compose up` must start it"
        assert "devices" not in str(services[name].get("deploy", {})), name
    # The documented command scales every CPU counterpart of the gpu profile to zero.
    header = (ROOT / "compose.yaml").read_text().split("\nname:")[0]
    scaled = set(re.findall(r"--scale ([\w-]+)=0", header))
    assert scaled == {base for name, base in GPU.items() if services[name]["profiles"] == ["gpu"]}
    # The schema knows device reservations: one without capabilities is refused.
    broken = json.loads(json.dumps(compose))
    del broken["services"]["trainer-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
    assert not jsonschema.validators.validator_for(compose_spec)(compose_spec).is_valid(broken)
