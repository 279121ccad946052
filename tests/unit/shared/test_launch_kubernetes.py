"""The kubernetes launcher without a cluster (none runs here): the Job and Service it sends, as the
client serialises them, validated against the Kubernetes JSON schemas (as tests/contract validates
deploy/k8s); run states from the client's own V1Job models; refusals before any API call."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from shared.launch import LauncherUnavailable, LaunchSpecError, RunSpec, RunState, launcher_from
from shared.launch.kubernetes import (
    RUN_LABEL,
    KubernetesLauncher,
    KubernetesSettings,
    job_name,
    map_job,
    rendered_objects,
    run_hash,
)
from shared.natsserver import free_port
from shared.settings import LaunchSettings

K8S_VERSION = "1.33"  # as tests/contract/test_contract_k8s.py
RUNS = Path("/var/lib/puyu/runs")


def settings(**kw: Any) -> KubernetesSettings:
    base: dict[str, Any] = {
        "image": "registry.example/puyu:1.0-cuda",
        "namespace": "puyu",
        "service_account": "puyu-runs",
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "memory": "200Gi",
        "volumes": [{"name": "runs", "persistentVolumeClaim": {"claimName": "puyu-runs"}}],
        "volume_mounts": [{"name": "runs", "mountPath": "/var/lib/puyu"}],
        "env_from_config_maps": ["puyu-common"],
        "env_from_secrets": ["puyu-secrets"],
    }
    return KubernetesSettings(**{**base, **kw})


def run_spec(**kw: Any) -> RunSpec:
    fields: dict[str, Any] = {
        "run_id": "Pretrain_Job.42",
        "module": "services.trainer.run_worker",
        "args": ("--run-dir", str(RUNS / "pretrain-job-42")),
        "run_dir": RUNS / "pretrain-job-42",
        "nprocs_per_node": 8,
        "nnodes": 4,
        "gpus_per_node": 8,
        "env": {"NCCL_DEBUG": "WARN"},
        **kw,
    }
    return RunSpec(**fields)


def test_indexed_job_and_headless_service_validate_against_the_schemas() -> None:
    import kubernetes_validate as kv

    job, service = rendered_objects(KubernetesLauncher(settings()), run_spec())
    kv.validate(dict(job), K8S_VERSION, strict=True)
    kv.validate(dict(service), K8S_VERSION, strict=True)
    # The validation is real: a misspelt field in the same object is refused.
    broken = copy.deepcopy(dict(job))
    broken["spec"]["template"]["spec"]["tolerations"][0]["efect"] = "NoSchedule"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_job_shape_torchrun_and_rendezvous() -> None:
    job, service = rendered_objects(KubernetesLauncher(settings()), run_spec())
    name = job["metadata"]["name"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    assert spec["podFailurePolicy"]["rules"][0]["onPodConditions"] == [
        {"type": "DisruptionTarget", "status": "True"}
    ]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == name and pod["restartPolicy"] == "Never"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    (container,) = pod["containers"]
    cmd = container["command"]
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"]
    assert {"--nnodes=4", "--nproc-per-node=8", "--rdzv-backend=c10d", f"--rdzv-id={name}"} <= set(cmd)
    assert f"--rdzv-endpoint={name}-0.{name}:29400" in cmd
    assert cmd[cmd.index("-m", 3) + 1 :] == ["services.trainer.run_worker", *run_spec().args]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["resources"]["requests"]["memory"] == "200Gi"
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["serviceAccountName"] == "puyu-runs" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "runs", "mountPath": "/var/lib/puyu"} in container["volumeMounts"]
    assert container["workingDir"] == str(RUNS / "pretrain-job-42")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NCCL_DEBUG"] == "WARN" and env["PUYU_RUN_ID"] == "Pretrain_Job.42"
    # Secrets only by reference.
    assert {"secretRef": {"name": "puyu-secrets"}} in container["envFrom"]
    assert job["metadata"]["labels"][RUN_LABEL] == run_hash("Pretrain_Job.42")
    assert job["metadata"]["annotations"]["puyu.dev/run-id"] == "Pretrain_Job.42"


def test_cpu_only_run_asks_for_no_gpu() -> None:
    job, _ = rendered_objects(
        KubernetesLauncher(settings(memory=None, tolerations=[], node_selector={})),
        run_spec(nnodes=1, nprocs_per_node=2, gpus_per_node=0),
    )
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "2"}}
    assert "tolerations" not in job["spec"]["template"]["spec"]


def test_names_are_dns_labels_distinct_per_run_and_short_enough_for_pod_hostnames() -> None:
    import re

    long_id = "X" * 200
    names = {job_name(r, "abc123") for r in ("a", "A", "a.b", "a_b", long_id, long_id[:-1] + "Y")}
    assert len(names) == 6
    for n in names:
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", n) and len(n) + len("-1023") <= 63, n


@pytest.mark.parametrize(
    ("kw", "spec_kw", "error", "needle"),
    [
        ({"image": None}, {}, LauncherUnavailable, "PUYU_K8S_IMAGE"),
        ({}, {"env": {"HF_TOKEN": "hf_x"}}, LaunchSpecError, "HF_TOKEN"),
        ({}, {"env": {"AWS_SECRET_ACCESS_KEY": "x"}}, LaunchSpecError, "Secret"),
        ({"volume_mounts": []}, {}, LaunchSpecError, "on no volume"),
        (
            {"volume_mounts": [{"name": "runs", "mountPath": "/var/lib/puyu-other"}]},
            {},
            LaunchSpecError,
            "no volume",
        ),
    ],
)
def test_refusals_before_any_api_call(
    kw: dict[str, Any], spec_kw: dict[str, Any], error: type, needle: str
) -> None:
    with pytest.raises(error, match=needle):
        KubernetesLauncher(settings(**kw)).submit(run_spec(**spec_kw))


def test_unconfigured_cluster_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PUYU_LAUNCHER", "kubernetes")
    monkeypatch.setenv("PUYU_K8S_IMAGE", "puyu:latest")
    launcher = launcher_from(LaunchSettings())
    assert isinstance(launcher, KubernetesLauncher) and launcher.settings.image == "puyu:latest"
    with pytest.raises(LauncherUnavailable, match="no cluster configured"):
        launcher.check()


def test_unreachable_api_server_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{free_port()}"}}}}]
users: [{{name: u, user: {{token: not-a-real-token}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u, namespace: puyu}}}}]
current-context: x
"""
    )
    launcher = KubernetesLauncher(settings(kubeconfig=kubeconfig, request_timeout=5))
    with pytest.raises(LauncherUnavailable, match="does not answer"):
        launcher.check()
    with pytest.raises(LauncherUnavailable, match="does not answer"):
        launcher.status('{"namespace": "puyu", "job": "puyu-x-1", "run_dir": "/tmp"}')


def job_model(status: dict[str, Any] | None = None, **meta: Any) -> Any:
    """A V1Job as the API returns it, through the client's own deserialisation."""
    return client.V1Job.from_dict(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "puyu-r-1", **meta},
            "spec": {"template": {"spec": {"containers": [{"name": "run", "image": "i"}]}}},
            "status": status or {},
        }
    )


def cond(kind: str, reason: str = "", message: str = "", status: str = "True") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("status", "state", "restarts", "needle"),
    [
        ({}, RunState.PENDING, 0, "waiting for pods"),
        ({"active": 4, "ready": 0}, RunState.PENDING, 0, "4 active"),
        ({"active": 4, "ready": 4, "failed": 1}, RunState.RUNNING, 1, "4 of 4 pods ready"),
        ({"succeeded": 4, "conditions": [cond("Complete")]}, RunState.SUCCEEDED, 0, "complete"),
        (
            {
                "failed": 1,
                "conditions": [cond("FailureTarget"), cond("Failed", "BackoffLimitExceeded", "too many")],
            },
            RunState.FAILED,
            1,
            "BackoffLimitExceeded: too many",
        ),
        ({"conditions": [cond("Failed", "DeadlineExceeded")]}, RunState.FAILED, 0, "DeadlineExceeded"),
        ({"conditions": [cond("Suspended")]}, RunState.PENDING, 0, "suspended"),
        (
            {"active": 1, "ready": 1, "conditions": [cond("Complete", status="False")]},
            RunState.RUNNING,
            0,
            "ready",
        ),
    ],
)
def test_states_from_the_clients_job_model(
    status: dict[str, Any], state: RunState, restarts: int, needle: str
) -> None:
    got = map_job(job_model(status))
    assert got.state is state and got.restarts == restarts and needle in got.message, got


def test_a_job_being_deleted_is_cancelled() -> None:
    got = map_job(job_model({"active": 2, "ready": 2}, deletionTimestamp="2026-12-05T10:00:00Z"))
    assert got.state is RunState.CANCELLED
