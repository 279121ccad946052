"""compose.yaml and deploy/k8s give every service the tokens file and its own API token from
secrets that ``python -m shared.auth deployment`` writes, never from a manifest or the image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from shared.auth.local import write_deployment_tokens
from shared.auth.tokens import read_entries
from shared.ports import SERVICES

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = [*(s.replace("_", "-") for s in SERVICES), "inference-worker"]


def test_compose_mounts_each_service_its_own_token(tmp_path: Path) -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    env = compose["x-puyu-env"]
    assert env["PUYU_AUTH_TOKENS_FILE"] == "/run/secrets/puyu-auth/tokens.jsonl"
    assert env["PUYU_AUTH_TOKEN_FILE"] == "/run/secrets/puyu-auth/token"
    out = tmp_path / "auth"
    write_deployment_tokens(out, (*SERVICES, "inference_worker"))
    for name in DEPLOYED:
        mounted = {m["target"]: m["source"] for m in compose["services"][name]["secrets"]}
        assert mounted["/run/secrets/puyu-auth/token"] == f"puyu-auth-{name}"
        assert mounted["/run/secrets/puyu-auth/tokens.jsonl"] == "puyu-auth-tokens"
    for name, secret in compose["secrets"].items():
        if name.startswith("puyu-auth-"):
            path = secret["file"]
            assert path.startswith("./deploy/secrets/auth/"), name
            assert (out / path.removeprefix("./deploy/secrets/auth/")).is_file(), f"no {path} is written"
    assert {e.principal for e in read_entries(out / "tokens.jsonl")} >= {"admin", "service:inference_worker"}
    assert "deploy/secrets" in (ROOT / ".dockerignore").read_text()
    assert (ROOT / "deploy" / "secrets" / ".gitignore").read_text().splitlines()[1] == "*"


def test_k8s_pods_mount_their_own_token_secret() -> None:
    docs = [
        d
        for f in sorted((ROOT / "deploy" / "k8s").rglob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
    ]
    config = next(
        d for d in docs if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "puyu-common"
    )
    assert config["data"]["PUYU_AUTH_TOKENS_FILE"] == "/run/secrets/puyu-auth/tokens.jsonl"
    assert config["data"]["PUYU_AUTH_TOKEN_FILE"] == "/run/secrets/puyu-auth/token"
    deployments = {d["metadata"]["name"]: d for d in docs if d and d["kind"] in ("Deployment", "StatefulSet")}
    for name in DEPLOYED:
        spec = deployments[name]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["api-auth"]["secret"]["secretName"] == f"puyu-auth-{name}"
        assert volumes["tls"]["secret"] == {"secretName": "puyu-tls", "defaultMode": 0o440, "optional": True}
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["api-auth"] == "/run/secrets/puyu-auth"
    assert not any(
        d and d["kind"] == "Secret" and d["metadata"]["name"].startswith("puyu-auth") for d in docs
    )
