"""deploy/k8s: valid Kubernetes objects, generated from shared/ports.py, probes on the right ports."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

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
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.33"
DEFAULTS = CommonSettings.model_construct()
REQUIRED_KINDS = {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet"}
WORKERS = {"inference-worker": "inference_gateway"}  # more Deployments of a service, in another role


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("puyu_k8s_render", K8S / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(rel: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / rel).read_text()) if d]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kustomization = _load("kustomization.yaml")[0]
    return [doc for rel in kustomization["resources"] for doc in _load(rel)]


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def test_manifests_are_generated_from_render() -> None:
    rendered = _render_module().render()
    committed = {p.relative_to(K8S).as_posix() for p in K8S.rglob("*.yaml")}
    assert committed == set(rendered), "stale or missing manifests: run `python deploy/k8s/render.py`"
    for rel, text in rendered.items():
        assert (K8S / rel).read_text() == text, f"{rel} drifted: run `python deploy/k8s/render.py`"


def test_structure(objects: list[dict[str, Any]]) -> None:
    assert REQUIRED_KINDS <= {o["kind"] for o in objects}
    seen = set()
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "puyu", obj["metadata"]["name"]
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


def test_against_kubernetes_schemas(objects: list[dict[str, Any]]) -> None:
    import kubernetes_validate as kv  # a dev dependency: it ships the k8s JSON schemas

    for obj in objects:
        kv.validate(obj, K8S_VERSION, strict=True)
    broken = _named(objects, "Deployment", "dedup")
    broken = yaml.safe_load(yaml.safe_dump(broken))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["prot"] = 8102
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_every_service_has_deployment_service_and_probes(objects: list[dict[str, Any]]) -> None:
    configmap = _named(objects, "ConfigMap", "puyu-common")
    secret = _named(objects, "Secret", "puyu-secrets")
    for pkg in SERVICES:
        name = pkg.replace("_", "-")
        deployment = _named(objects, "Deployment", name)
        pod = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        (container,) = pod["spec"]["containers"]
        assert container["command"] == ["puyu", "run", pkg]
        assert (ROOT / "services" / pkg / "__init__.py").is_file()
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] == "/health", (name, probe)
            assert _port_number(container, get["port"]) == http_port(pkg, DEFAULTS), (name, probe)
        assert _port_number(container, "grpc") == grpc_port(pkg, DEFAULTS)
        assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in container["envFrom"]
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "puyu-secrets" and ref["key"] in secret["stringData"], env
        assert any(e["name"] == "PUYU_DATABASE_URL" for e in container["env"]) == (pkg == "model_registry")

        svc = _named(objects, "Service", name)
        assert svc["spec"]["selector"] == pod["metadata"]["labels"]
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["http"]["port"] == http_port(pkg, DEFAULTS) and ports["grpc"]["port"] == grpc_port(
            pkg, DEFAULTS
        )
        for port in ports.values():
            assert _port_number(container, port["targetPort"]) == port["port"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_inference_workers_behind_a_routing_gateway(objects: list[dict[str, Any]]) -> None:
    kustomization = _load("kustomization.yaml")[0]
    assert "services/inference-worker.yaml" in kustomization["resources"]
    deployment = _named(objects, "Deployment", "inference-worker")
    gateway = _named(objects, "Deployment", "inference-gateway")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "serving"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["puyu", "run", WORKERS["inference-worker"]]
    env = _env(container)
    assert env["PUYU_GATEWAY_ROLE"] == "worker"
    assert env["PUYU_GATEWAY_INSTANCE"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The address it announces is the pod's: the gateway dials it there (PUYU_HOST is 0.0.0.0).
    assert env["PUYU_GATEWAY_ADVERTISE_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    http, grpc = inference_worker_http_port(DEFAULTS), inference_worker_grpc_port(DEFAULTS)
    assert (int(env["PUYU_GATEWAY_HTTP_PORT"]), int(env["PUYU_GATEWAY_GRPC_PORT"])) == (http, grpc)
    assert (_port_number(container, "http"), _port_number(container, "grpc")) == (http, grpc)
    taken = {p for pkg in SERVICES for p in (http_port(pkg, DEFAULTS), grpc_port(pkg, DEFAULTS))}
    assert not {http, grpc} & taken
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and _port_number(container, get["port"]) == http, probe
    (gw_container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == gw_container["resources"]
    assert {"configMapRef": {"name": "puyu-common"}} in container["envFrom"]
    assert _env(gw_container)["PUYU_GATEWAY_LOCAL_MODELS"] == "false"
    assert "PUYU_GATEWAY_ROLE" not in _env(gw_container)
    # No Service selects the workers: requests reach them through the gateway only.
    labels = pod["metadata"]["labels"]
    for svc in (o for o in objects if o["kind"] == "Service"):
        assert not svc["spec"]["selector"].items() <= labels.items(), svc["metadata"]["name"]


def test_common_config_points_at_cluster_services(objects: list[dict[str, Any]]) -> None:
    data = _named(objects, "ConfigMap", "puyu-common")["data"]
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    assert data["PUYU_HOST"] == "0.0.0.0"
    assert data["PUYU_ARTIFACT_ROOT"].startswith("s3://")
    host, port = data["PUYU_REGISTRY_GRPC"].split(":")
    assert host.split(".")[0] in services and int(port) == grpc_port("model_registry", DEFAULTS)
    assert data["PUYU_GATEWAY_URL"].endswith(f":{http_port('inference_gateway', DEFAULTS)}")
    assert data["PUYU_NATS_URL"].split("//")[1].split(".")[0] == "nats"


def test_nats_statefulset_runs_jetstream(objects: list[dict[str, Any]]) -> None:
    sts = _named(objects, "StatefulSet", "nats")
    config = _named(objects, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert config == (ROOT / "deploy" / "nats" / "nats.conf").read_text()
    assert "jetstream" in config and 'store_dir: "/data"' in config
    spec = sts["spec"]
    assert _named(objects, "Service", spec["serviceName"])["spec"]["clusterIP"] == "None"
    (container,) = spec["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] in {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"].startswith("/healthz") and _port_number(container, get["port"]) == 8222
    assert _port_number(container, "client") == 4222


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert kinds.count("Deployment") == len(SERVICES) + len(WORKERS)


def test_nats_identities_and_tls_are_mounted_secrets_never_manifests(objects: list[dict[str, Any]]) -> None:
    data = _named(objects, "ConfigMap", "puyu-common")["data"]
    assert data["PUYU_NATS_URL"].startswith("tls://")
    seed, ca = data["PUYU_NATS_NKEY_SEED_FILE"], data["PUYU_NATS_TLS_CA_FILE"]
    secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    assert secrets == {"puyu-secrets"}, "NATS keys and certificates must not be in a manifest"
    for name in [*(p.replace("_", "-") for p in SERVICES), *WORKERS]:
        pod = _named(objects, "Deployment", name)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        own = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
        assert [s for s in own if s.startswith("puyu-nats-")] == [f"puyu-nats-{name}"], name
        assert Path(seed).parent == Path(ca).parent == Path(mounts["nats-identity"])
        assert volumes["nats-identity"]["secret"]["secretName"] == f"puyu-nats-{name}"
    sts = _named(objects, "StatefulSet", "nats")["spec"]["template"]["spec"]
    (container,) = sts["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["auth"] == "/etc/nats/auth"
    assert {"name": "auth", "secret": {"secretName": "nats-server", "defaultMode": 0o400}} in sts["volumes"]
    conf = _named(objects, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert 'include "auth/auth.conf"' in conf and "/etc/nats/auth/tls.crt" in conf
