"""deploy/k8s: valid Kubernetes objects, generated from shared/ports.py, probes on the right ports."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
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
GPU_K8S = ROOT / "deploy" / "k8s-gpu"  # the GPU overlay (kustomize refuses one inside its base)
K8S_VERSION = "1.33"
DEFAULTS = CommonSettings.model_construct()
REQUIRED_KINDS = {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet"}
WORKERS = {"inference-worker": "inference_gateway"}  # more Deployments of a service, in another role


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("puyu_k8s_render", K8S / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # importlib's recipe: pydantic resolves its models' annotations there
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
    render = _render_module()
    for folder, rendered, inputs in (
        (K8S, render.render(), set()),
        (GPU_K8S, render.render_gpu(), {"values.yaml"}),  # the overlay's values: what one edits
    ):
        committed = {p.relative_to(folder).as_posix() for p in folder.rglob("*.yaml")} - inputs
        assert committed == set(rendered), "stale or missing manifests: run `python deploy/k8s/render.py`"
        for rel, text in rendered.items():
            assert (folder / rel).read_text() == text, f"{rel} drifted: run `python deploy/k8s/render.py`"


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


# ------------------------------------------------------------------------------------------ GPU overlay
GPU_FIELDS = ("image", "resources", "nodeSelector", "tolerations", "runtimeClassName", "strategy")


def _without_gpu_parts(deployment: dict[str, Any]) -> dict[str, Any]:
    """The Deployment less what the GPU overlay sets, to compare with the base's."""
    out = yaml.safe_load(yaml.safe_dump(deployment))
    out["spec"].pop("strategy")
    pod = out["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for key in GPU_FIELDS:
        pod.pop(key, None)
        container.pop(key, None)
    container["env"] = [e for e in container["env"] if e["name"] != "PUYU_WORKER_ENGINE"]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "dshm"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "dshm"]
    return out


def _gpu_patches() -> dict[str, dict[str, Any]]:
    kustomization = next(d for d in yaml.safe_load_all((GPU_K8S / "kustomization.yaml").read_text()) if d)
    assert kustomization["resources"] == ["../k8s"], "the overlay builds on the base"
    patches = {}
    for patch in kustomization["patches"]:
        (doc,) = [d for d in yaml.safe_load_all((GPU_K8S / patch["path"]).read_text()) if d]
        patches[doc["metadata"]["name"]] = doc
    return patches


def _check_gpu_deployment(deployment: dict[str, Any], base: dict[str, Any], values: dict[str, Any]) -> None:
    import kubernetes_validate as kv

    name = deployment["metadata"]["name"]
    kv.validate(deployment, K8S_VERSION, strict=True)
    workload = values["workloads"][name]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    vllm = workload.get("engine") == "vllm"
    assert container["image"] == values["vllm_image" if vllm else "image"], name
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == workload["gpus"], name
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == workload["memory"]
    assert resources["requests"]["cpu"] == workload["cpu"]
    assert pod.get("nodeSelector", {}) == values.get("node_selector", {}), name
    assert pod.get("tolerations", []) == values.get("tolerations", []), name
    assert pod.get("runtimeClassName") == values.get("runtime_class_name"), name
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": workload["shm"]}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    engine = {e["name"]: e.get("value") for e in container["env"]}.get("PUYU_WORKER_ENGINE")
    assert engine == workload.get("engine"), name
    # A rollout never waits for GPUs its predecessor holds.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    # Everything else is the base's: identity, secrets, probes, ports, security context.
    assert _without_gpu_parts(deployment) == _without_gpu_parts(base), name


def test_gpu_overlay_asks_for_gpus_and_keeps_the_base(objects: list[dict[str, Any]]) -> None:
    values = yaml.safe_load((GPU_K8S / "values.yaml").read_text())
    patches = _gpu_patches()
    assert set(patches) == {"trainer", "finetuner", "evaluator", "inference-worker"}
    for name, patch in patches.items():
        _check_gpu_deployment(patch, _named(objects, "Deployment", name), values)


def test_gpu_overlay_takes_the_values_one_sets(objects: list[dict[str, Any]]) -> None:
    render = _render_module()
    values = {
        "image": "registry.example/puyu:1.0-gpu",
        "vllm_image": "registry.example/puyu:1.0-gpu-vllm",
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        "tolerations": [
            {
                "key": "dedicated",
                "operator": "Equal",
                "value": "ml",
                "effect": "NoExecute",
                "tolerationSeconds": 60,
            }
        ],
        "runtime_class_name": "nvidia",
        "workloads": {
            "trainer": {"gpus": 8, "cpu": "64", "memory": "512Gi", "shm": "64Gi"},
            "inference-worker": {"gpus": 2, "cpu": "8", "memory": "96Gi", "shm": "8Gi", "engine": "vllm"},
        },
    }
    files = render.gpu_overlay(render.GpuValues.model_validate(values))
    assert set(files) == {"trainer.yaml", "inference-worker.yaml", "kustomization.yaml"}
    for name in ("trainer", "inference-worker"):
        (deployment,) = files[f"{name}.yaml"]
        _check_gpu_deployment(deployment, _named(objects, "Deployment", name), values)


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"workloads": {"trainer": {"gpus": 0, "cpu": "8", "memory": "64Gi", "shm": "1Gi"}}}, "gpus"),
        ({"workloads": {"trainer": {"gpus": 1, "cpu": "8", "memory": "64 GB", "shm": "1Gi"}}}, "memory"),
        ({"workloads": {"dedup": {"gpus": 1, "cpu": "1", "memory": "1Gi", "shm": "1Gi"}}}, "dedup"),
        (
            {
                "workloads": {
                    "trainer": {"gpus": 1, "cpu": "1", "memory": "1Gi", "shm": "1Gi", "engine": "vllm"}
                }
            },
            "engine",
        ),
        ({"tolerations": [{"key": "nvidia.com/gpu", "effect": "NoSchedul"}]}, "effect"),
        ({"node_selectors": {"a": "b"}}, "node_selectors"),
    ],
)
def test_bad_gpu_values_are_refused_naming_the_problem(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    render = _render_module()
    values = yaml.safe_load((GPU_K8S / "values.yaml").read_text()) | change
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(SystemExit, match=problem):
        render.load_gpu_values(path)
    with pytest.raises(SystemExit):  # and nothing is written
        render.write(tmp_path / "k8s", tmp_path / "k8s-gpu", render.load_gpu_values(path))
    assert not (tmp_path / "k8s").exists()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_gpu_overlay_builds_with_kustomize() -> None:
    """kustomize's strategic merge of each patch onto the base is the patch itself; the rest is the base."""
    import kubernetes_validate as kv

    def build(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
        out = subprocess.run(
            ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}

    base, gpu = build(K8S), build(GPU_K8S)
    assert set(base) == set(gpu)
    patches = _gpu_patches()
    for key, obj in gpu.items():
        kv.validate(obj, K8S_VERSION, strict=True)
        if key[0] == "Deployment" and key[1] in patches:
            assert obj == patches[key[1]], f"{key}: the merge is not the patch"
        else:
            assert obj == base[key], key
