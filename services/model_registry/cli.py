"""`puyu models ...`: list, show, promote and roll back models through the registry's REST API."""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx

from shared.ports import http_port
from shared.settings import CommonSettings


class RegistryError(RuntimeError):
    pass


def base_url(settings: CommonSettings | None = None) -> str:
    settings = settings or CommonSettings()
    return f"http://{settings.host}:{http_port('model_registry', settings)}"


def _request(method: str, path: str, url: str | None, **kw: Any) -> Any:
    try:
        r = httpx.request(method, (url or base_url()) + path, timeout=30, **kw)
    except httpx.HTTPError as exc:
        raise RegistryError(f"registry not reachable at {url or base_url()}: {exc}") from exc
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise RegistryError(f"{r.status_code}: {detail}")
    return r.json()


def models_list(url: str | None = None) -> list[dict[str, Any]]:
    return list(_request("GET", "/v1/models", url))


def models_show(ref: str, url: str | None = None) -> dict[str, Any]:
    """``NAME`` (model with all versions), ``NAME:VERSION`` or ``NAME@ALIAS``."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return dict(_request("GET", f"/v1/models/{name}/aliases/{alias}", url))
    if ":" in ref:
        name, num = ref.rsplit(":", 1)
        if not num.isdigit():
            raise RegistryError(f"bad version in {ref!r}: expected NAME:VERSION")
        return dict(_request("GET", f"/v1/models/{name}/versions/{num}", url))
    return dict(_request("GET", f"/v1/models/{ref}", url))


def models_promote(name: str, version: int, reason: str = "", url: str | None = None) -> dict[str, Any]:
    return dict(
        _request(
            "POST",
            f"/v1/models/{name}/promote",
            url,
            json={"version": version, "reason": reason, "actor": "cli"},
        )
    )


def models_rollback(name: str, reason: str = "manual rollback", url: str | None = None) -> dict[str, Any]:
    return dict(_request("POST", f"/v1/models/{name}/rollback", url, json={"reason": reason, "actor": "cli"}))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list")
    show = sub.add_parser("show")
    show.add_argument("ref", help="NAME, NAME:VERSION or NAME@ALIAS")
    promote = sub.add_parser("promote")
    promote.add_argument("ref", help="NAME:VERSION")
    promote.add_argument("--reason", default="")
    rollback = sub.add_parser("rollback")
    rollback.add_argument("name")
    rollback.add_argument("--reason", default="manual rollback")
    parser.add_argument("--registry-url", default=None, help="default: http://HOST:<registry http port>")


def run(args: argparse.Namespace) -> int:
    """Entry point for `puyu models <list|show|promote|rollback>`; prints JSON, returns the exit code."""
    url = args.registry_url
    try:
        if args.models_command == "list":
            out: Any = models_list(url)
        elif args.models_command == "show":
            out = models_show(args.ref, url)
        elif args.models_command == "promote":
            name, _, num = args.ref.rpartition(":")
            if not name or not num.isdigit():
                raise RegistryError("promote expects NAME:VERSION")
            out = models_promote(name, int(num), args.reason, url)
        else:
            out = models_rollback(args.name, args.reason, url)
    except RegistryError as exc:
        print(f"error: {exc}")
        return 1
    print(json.dumps(out, indent=2))
    return 0
