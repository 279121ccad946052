"""The ``kubernetes`` launcher: an indexed Job per run, created, watched and deleted through the API.

One pod per node (``completionMode: Indexed``, parallelism = completions = nnodes), each running
torchrun with ``nprocs_per_node`` ranks. The pods meet in a c10d rendezvous on pod 0, which a
headless Service names: an indexed Job's pod is ``<job>-<index>`` in the Service's subdomain, so
``<job>-0.<service>`` resolves to pod 0 before any pod is ready (``publishNotReadyAddresses``).
The Service belongs to the Job (an owner reference): deleting the Job removes both.

Nothing secret goes into the objects: the run's environment is refused if a name looks like a
credential, and the settings add ConfigMaps and Secrets by reference only (``envFrom``). Pods run
as a non-root user with no capabilities and no API token (the run never calls the API).
A preempted or evicted pod (condition ``DisruptionTarget``) does not count against the Job's
``backoffLimit``: the Job starts it again and the run resumes from its last checkpoint.

Every pod must see the run folder at the same path: the artifact/run volume is a setting
(``PUYU_K8S_VOLUMES`` / ``PUYU_K8S_VOLUME_MOUNTS``, e.g. a ReadWriteMany claim mounted at the
runs folder); submit refuses a run folder that no mount covers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.launch.base import (
    Launcher,
    LauncherUnavailable,
    LaunchSpecError,
    RunSpec,
    RunState,
    RunStatus,
    read_error,
    read_result,
)
from shared.launch.environment import looks_secret

RUN_LABEL = "puyu.dev/run"  # a hash of the run id (label values are short); the id is an annotation


class KubernetesSettings(BaseSettings):
    """``PUYU_K8S_*``: where runs' Jobs go and what their pods get. JSON for lists and maps."""

    model_config = SettingsConfigDict(env_prefix="PUYU_K8S_", env_file=".env", extra="ignore")

    namespace: str = Field(default="puyu", description="Namespace of the runs' Jobs.")
    image: str | None = Field(default=None, description="Image of the run pods (puyu's, with the trainer).")
    image_pull_policy: str = Field(default="IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    service_account: str | None = Field(default=None, description="Service account of the run pods.")
    node_selector: dict[str, str] = Field(default_factory=dict, description='e.g. {"gpu": "a100"}.')
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description='e.g. [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}].',
    )
    cpu: str | None = Field(default=None, description="CPU request per pod (default: one per process).")
    memory: str | None = Field(default=None, description="Memory request and limit per pod, e.g. 64Gi.")
    shm_size: str = Field(default="8Gi", description="/dev/shm per pod (data loaders, NCCL).")
    volumes: list[dict[str, Any]] = Field(
        default_factory=list,
        description='Pod volumes, e.g. [{"name": "runs", "persistentVolumeClaim": {"claimName": "puyu-runs"}}].',
    )
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list,
        description='Where they mount, e.g. [{"name": "runs", "mountPath": "/var/lib/puyu"}]: '
        "one must cover the runs folder.",
    )
    env_from_config_maps: list[str] = Field(default_factory=list, description="ConfigMaps as environment.")
    env_from_secrets: list[str] = Field(
        default_factory=list, description="Secrets as environment (by reference, e.g. the store's keys)."
    )
    run_as_user: int = Field(default=10001, ge=1, description="The image's non-root user.")
    python: str = Field(default="python", description="Interpreter in the image.")
    rdzv_port: int = Field(default=29400, ge=1024, le=65535, description="c10d rendezvous port on pod 0.")
    backoff_limit: int = Field(
        default=0, ge=0, description="Failed pods retried before the run fails (preemptions never count)."
    )
    max_restarts: int = Field(
        default=0, ge=0, description="torchrun's in-pod restarts of failed ranks (elastic re-rendezvous)."
    )
    ttl_seconds_after_finished: int = Field(
        default=86400, ge=0, description="A finished run's Job is removed this long after it ends."
    )
    active_deadline_seconds: int | None = Field(default=None, ge=1, description="Wall-clock limit per run.")
    kubeconfig: Path | None = Field(
        default=None, description="kubeconfig (default: in-cluster, then ~/.kube)."
    )
    context: str | None = Field(default=None, description="kubeconfig context.")
    request_timeout: float = Field(default=30.0, gt=0, description="Seconds an API call may take.")


def job_name(run_id: str, attempt: str) -> str:
    """A DNS label for one submission's Job and Service: ``puyu-<slug>-<hash>-<attempt>``, at most 52
    characters, so a pod's hostname ``<job>-<index>`` stays within 63. The hash keeps distinct run ids
    distinct; the attempt lets a resubmission start while the last attempt's Job is still going away."""
    if not re.fullmatch(r"[a-z0-9]{1,6}", attempt):
        raise ValueError(f"attempt {attempt!r}: 1-6 lowercase letters or digits")
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")[:30].strip("-") or "run"
    return f"puyu-{slug}-{run_hash(run_id)[:8]}-{attempt}"


def run_hash(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:16]


def map_job(job: Any) -> RunStatus:
    """A ``V1Job`` (the client's model) as a run status. Restarts: the pods that failed and were
    started again (preemptions included)."""
    status = job.status
    name = job.metadata.name if job.metadata else "?"
    restarts = int((status.failed if status else 0) or 0)
    if job.metadata is not None and job.metadata.deletion_timestamp is not None:
        return RunStatus(RunState.CANCELLED, f"job {name} is being deleted", restarts)
    conditions = {c.type: c for c in (status.conditions or []) if c.status == "True"} if status else {}
    if "Complete" in conditions:
        return RunStatus(RunState.SUCCEEDED, f"job {name} complete", restarts)
    if "Failed" in conditions:
        c = conditions["Failed"]
        return RunStatus(RunState.FAILED, f"job {name} failed: {c.reason}: {c.message}", restarts)
    if "Suspended" in conditions or (job.spec is not None and job.spec.suspend):
        return RunStatus(RunState.PENDING, f"job {name} is suspended", restarts)
    ready = int((status.ready if status else 0) or 0)
    active = int((status.active if status else 0) or 0)
    if ready > 0:
        return RunStatus(RunState.RUNNING, f"job {name}: {ready} of {active} pods ready", restarts)
    return RunStatus(RunState.PENDING, f"job {name}: waiting for pods ({active} active)", restarts)


class KubernetesLauncher(Launcher):
    name = "kubernetes"
    outlives_controller = True

    def __init__(self, settings: KubernetesSettings | None = None, api_client: Any = None) -> None:
        self.settings = settings or KubernetesSettings()
        self._api_client = api_client  # built on first use from the kubeconfig / in-cluster config

    @classmethod
    def from_settings(cls, settings: Any) -> KubernetesLauncher:
        return cls(KubernetesSettings())

    # ---------------------------------------------------------------------------------- objects
    def render(self, spec: RunSpec, attempt: str = "0") -> tuple[dict[str, Any], dict[str, Any]]:
        """The Job and its headless Service, as the API takes them (camelCase dicts)."""
        s = self.settings
        if not s.image:
            raise LauncherUnavailable("kubernetes launcher: PUYU_K8S_IMAGE (the run pods' image) is not set")
        secret_like = sorted(k for k in spec.env if looks_secret(k))
        if secret_like:
            raise LaunchSpecError(
                f"kubernetes launcher: {secret_like} look like credentials and would be stored in the Job; "
                "put them in a Secret and name it in PUYU_K8S_ENV_FROM_SECRETS"
            )
        run_dir = spec.run_dir.resolve()
        if not any(_under(run_dir, str(m.get("mountPath", ""))) for m in s.volume_mounts):
            raise LaunchSpecError(
                f"kubernetes launcher: the run folder {run_dir} is on no volume the pods mount "
                "(PUYU_K8S_VOLUMES / PUYU_K8S_VOLUME_MOUNTS): its pods could not read its spec or write "
                "its checkpoints"
            )
        name = job_name(spec.run_id, attempt)
        labels = {
            "app.kubernetes.io/name": "puyu-run",
            "app.kubernetes.io/part-of": "puyu",
            "app.kubernetes.io/component": "training",
            RUN_LABEL: run_hash(spec.run_id),
        }
        annotations = {"puyu.dev/run-id": spec.run_id, "puyu.dev/run-dir": str(run_dir)}
        command = [
            s.python,
            "-m",
            "torch.distributed.run",
            f"--nnodes={spec.nnodes}",
            f"--nproc-per-node={spec.nprocs_per_node}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={name}-0.{name}:{s.rdzv_port}",
            f"--rdzv-id={name}",
            f"--max-restarts={s.max_restarts}",
            "-m",
            spec.module,
            *spec.args,
        ]
        env = [{"name": k, "value": str(v)} for k, v in sorted(spec.env.items())]
        env += [{"name": "PUYU_RUN_ID", "value": spec.run_id}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
        requests: dict[str, str] = {"cpu": s.cpu or str(spec.nprocs_per_node)}
        limits: dict[str, str] = {}
        if s.memory:
            requests["memory"] = limits["memory"] = s.memory
        if spec.gpus_per_node:
            limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(spec.gpus_per_node)
        container: dict[str, Any] = {
            "name": "run",
            "image": s.image,
            "imagePullPolicy": s.image_pull_policy,
            "command": command,
            "workingDir": str(run_dir),
            "env": env,
            "ports": [{"name": "rdzv", "containerPort": s.rdzv_port}],
            "resources": {"requests": requests, **({"limits": limits} if limits else {})},
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [*s.volume_mounts, {"name": "shm", "mountPath": "/dev/shm"}],
        }
        env_from = [{"configMapRef": {"name": n}} for n in s.env_from_config_maps]
        env_from += [{"secretRef": {"name": n}} for n in s.env_from_secrets]
        if env_from:
            container["envFrom"] = env_from
        pod: dict[str, Any] = {
            "restartPolicy": "Never",
            "subdomain": name,  # pod i answers as <job>-<i>.<service>
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": s.run_as_user,
                "runAsGroup": s.run_as_user,
                "fsGroup": s.run_as_user,
            },
            "containers": [container],
            "volumes": [
                *s.volumes,
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": s.shm_size}},
            ],
        }
        if s.service_account:
            pod["serviceAccountName"] = s.service_account
        if s.node_selector:
            pod["nodeSelector"] = dict(s.node_selector)
        if s.tolerations:
            pod["tolerations"] = list(s.tolerations)
        job_spec: dict[str, Any] = {
            "completionMode": "Indexed",
            "completions": spec.nnodes,
            "parallelism": spec.nnodes,
            "backoffLimit": s.backoff_limit,
            "ttlSecondsAfterFinished": s.ttl_seconds_after_finished,
            # Preempted / evicted pods are started again without counting as failures.
            "podFailurePolicy": {
                "rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
                ]
            },
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod},
        }
        if s.active_deadline_seconds:
            job_spec["activeDeadlineSeconds"] = s.active_deadline_seconds
        meta = {"name": name, "namespace": s.namespace, "labels": labels, "annotations": annotations}
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": s.namespace, "labels": labels},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"batch.kubernetes.io/job-name": name},
                "ports": [{"name": "rdzv", "port": s.rdzv_port, "targetPort": s.rdzv_port}],
            },
        }
        return job, service

    # ------------------------------------------------------------------------------------ API
    def _client(self) -> Any:
        if self._api_client is None:
            try:
                from kubernetes import client, config
            except ImportError as exc:
                raise LauncherUnavailable(
                    "kubernetes launcher: the `kubernetes` client is not installed (pip install 'puyu[train]')"
                ) from exc
            configuration = client.Configuration()
            try:
                if os.environ.get("KUBERNETES_SERVICE_HOST") and self.settings.kubeconfig is None:
                    config.load_incluster_config(client_configuration=configuration)
                else:
                    config.load_kube_config(
                        config_file=str(self.settings.kubeconfig) if self.settings.kubeconfig else None,
                        context=self.settings.context,
                        client_configuration=configuration,
                    )
            except (config.ConfigException, OSError, TypeError) as exc:
                raise LauncherUnavailable(
                    f"kubernetes launcher: no cluster configured (not in a pod, no kubeconfig): {exc}"
                ) from exc
            self._api_client = client.ApiClient(configuration)
        return self._api_client

    def _call(self, what: str, fn: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=self.settings.request_timeout, **kwargs)
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise LauncherUnavailable(
                f"kubernetes launcher: {what}: {exc.status} {exc.reason}: {exc.body}"
            ) from exc
        except (OSError, HTTPError) as exc:  # refused, unresolvable, timed out, TLS
            raise LauncherUnavailable(
                f"kubernetes launcher: {what}: the API server does not answer: {exc}"
            ) from exc

    def check(self) -> None:
        if not self.settings.image:
            raise LauncherUnavailable("kubernetes launcher: PUYU_K8S_IMAGE (the run pods' image) is not set")
        from kubernetes import client

        api = self._client()
        self._call("asking the API server's version", client.VersionApi(api).get_code)
        auth = client.AuthorizationV1Api(api)
        for resource, group in (("jobs", "batch"), ("services", "")):
            review = client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(
                    resource_attributes=client.V1ResourceAttributes(
                        namespace=self.settings.namespace, verb="create", resource=resource, group=group
                    )
                )
            )
            answer = self._call("checking permissions", auth.create_self_subject_access_review, review)
            if not answer.status.allowed:
                raise LauncherUnavailable(
                    f"kubernetes launcher: this service may not create {resource} in namespace "
                    f"{self.settings.namespace!r}: {answer.status.reason or 'no RBAC rule allows it'}"
                )

    def submit(self, spec: RunSpec) -> str:
        from kubernetes import client

        self.render(spec)  # refusals of the spec before any API call
        self.check()
        api = self._client()
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        ns = self.settings.namespace
        earlier = self._call(
            "listing the run's jobs",
            batch.list_namespaced_job,
            ns,
            label_selector=f"{RUN_LABEL}={run_hash(spec.run_id)}",
        )
        for old in earlier.items or []:
            if old.metadata.deletion_timestamp is None and not map_job(old).state.terminal:
                raise LaunchSpecError(
                    f"kubernetes launcher: run {spec.run_id} already has a live job "
                    f"{ns}/{old.metadata.name}; cancel it first"
                )
            self._delete(old.metadata.name)  # a finished attempt: this one replaces it
        job_obj, service_obj = self.render(spec, attempt=secrets.token_hex(3))
        name = job_obj["metadata"]["name"]
        created = self._call(
            "creating the job", batch.create_namespaced_job, ns, client.V1Job.from_dict(job_obj)
        )
        service_obj["metadata"]["ownerReferences"] = [
            {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": created.metadata.uid}
        ]
        try:
            self._call(
                "creating the rendezvous service",
                core.create_namespaced_service,
                ns,
                client.V1Service.from_dict(service_obj),
            )
        except LauncherUnavailable:
            self._delete(name)
            raise
        return json.dumps({"namespace": ns, "job": name, "run_dir": str(spec.run_dir.resolve())})

    @staticmethod
    def _parse_handle(handle: str) -> tuple[str, str, Path | None]:
        try:
            h = json.loads(handle)
            return str(h["namespace"]), str(h["job"]), Path(h["run_dir"]) if h.get("run_dir") else None
        except (ValueError, KeyError, TypeError) as exc:
            raise LaunchSpecError(
                f"kubernetes launcher: {handle!r} is not a handle of this launcher"
            ) from exc

    def status(self, handle: str) -> RunStatus:
        from kubernetes import client

        ns, name, run_dir = self._parse_handle(handle)
        batch = client.BatchV1Api(self._client())
        job = self._call("reading the run's job", batch.read_namespaced_job, name, ns, missing_ok=True)
        if job is not None:
            status = map_job(job)
            if status.state is RunState.PENDING:
                reasons = self._pod_reasons(ns, name)
                if reasons:
                    return RunStatus(status.state, f"{status.message}: {reasons}", status.restarts)
            return status
        # The Job is gone: deleted by cancel, or by its TTL after it ended. The run folder says which.
        if run_dir is not None and read_result(run_dir) is not None:
            return RunStatus(RunState.SUCCEEDED, f"job {name} removed; its run left a result")
        error = read_error(run_dir) if run_dir is not None else None
        if error is not None:
            return RunStatus(RunState.FAILED, f"job {name} removed; the run failed: {error.message}")
        return RunStatus(RunState.CANCELLED, f"job {ns}/{name} was deleted before its run finished")

    def _pod_reasons(self, ns: str, name: str) -> str:
        """Why pods wait (Unschedulable, ImagePullBackOff ...), for the controller's message."""
        from kubernetes import client

        pods = self._call(
            "listing the run's pods",
            client.CoreV1Api(self._client()).list_namespaced_pod,
            ns,
            label_selector=f"batch.kubernetes.io/job-name={name}",
        )
        reasons: set[str] = set()
        for pod in pods.items or []:
            for c in (pod.status.conditions or []) if pod.status else []:
                if c.type == "PodScheduled" and c.status == "False" and c.reason:
                    reasons.add(f"{c.reason}: {c.message or ''}".strip(": "))
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                if (
                    cs.state
                    and cs.state.waiting
                    and cs.state.waiting.reason not in (None, "ContainerCreating")
                ):
                    reasons.add(f"{cs.state.waiting.reason}: {cs.state.waiting.message or ''}".strip(": "))
        return "; ".join(sorted(reasons))

    def cancel(self, handle: str) -> None:
        ns, name, _ = self._parse_handle(handle)
        if ns != self.settings.namespace:
            raise LaunchSpecError(
                f"kubernetes launcher: job {ns}/{name} is outside namespace {self.settings.namespace}"
            )
        self._delete(name)

    def _delete(self, name: str) -> None:
        """Delete the Job and, through the owner reference and explicitly, its Service; every pod gets
        SIGTERM and its grace period (foreground deletion: the Job goes once its pods are gone)."""
        from kubernetes import client

        api, ns = self._client(), self.settings.namespace
        options = client.V1DeleteOptions(propagation_policy="Foreground")
        self._call(
            "deleting the job",
            client.BatchV1Api(api).delete_namespaced_job,
            name,
            ns,
            body=options,
            missing_ok=True,
        )
        self._call(
            "deleting the rendezvous service",
            client.CoreV1Api(api).delete_namespaced_service,
            name,
            ns,
            missing_ok=True,
        )


def _under(path: Path, mount: str) -> bool:
    return bool(mount) and (path == Path(mount) or Path(mount) in path.parents)


def rendered_objects(launcher: KubernetesLauncher, spec: RunSpec) -> list[Mapping[str, Any]]:
    """The Job and Service exactly as the client sends them (through its models and serializer)."""
    from kubernetes import client

    job, service = launcher.render(spec)
    api = client.ApiClient()
    return [
        api.sanitize_for_serialization(client.V1Job.from_dict(job)),
        api.sanitize_for_serialization(client.V1Service.from_dict(service)),
    ]
