"""`puyu models ...`: list, show, promote and roll back models through the registry's REST API.

The functions return the API's JSON as it came (the commands print it); where they use a value of
it, they read it through the core's view.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx

from services.model_registry.core.views import VersionView
from shared.auth import ClientAuth
from shared.auth.local import cli_token
from shared.ports import http_base_url
from shared.settings import CommonSettings


class RegistryError(RuntimeError):
    pass


def base_url(settings: CommonSettings | None = None) -> str:
    return http_base_url("model_registry", settings or CommonSettings())


def _request(method: str, path: str, url: str | None, **kw: Any) -> Any:
    try:
        settings = CommonSettings()
        auth = ClientAuth.from_settings(settings, token=cli_token(settings))
        r = httpx.request(method, (url or base_url()) + path, timeout=30, **auth.httpx_options(), **kw)
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
            json={"version": version, "reason": reason},
        )
    )


def models_promote_ref(ref: str, reason: str = "", url: str | None = None) -> dict[str, Any]:
    """Promote ``NAME:VERSION`` or ``NAME@ALIAS`` (e.g. ``demo@candidate`` in manual-approval mode)."""
    if "@" in ref:
        name, version = ref.split("@", 1)[0], VersionView.model_validate(models_show(ref, url)).version
    else:
        name, _, num = ref.rpartition(":")
        if not name or not num.isdigit():
            raise RegistryError(f"bad reference {ref!r}: expected NAME:VERSION or NAME@ALIAS")
        version = int(num)
    return models_promote(name, version, reason, url)


def models_rollback(name: str, reason: str = "manual rollback", url: str | None = None) -> dict[str, Any]:
    return dict(_request("POST", f"/v1/models/{name}/rollback", url, json={"reason": reason}))


def models_tag(
    ref: str,
    set_: dict[str, str] | None = None,
    delete: list[str] | None = None,
    reason: str = "",
    url: str | None = None,
) -> dict[str, Any]:
    """Tags of ``NAME`` (the model) or ``NAME:VERSION``: set ``key=value`` pairs, delete keys."""
    body = {"set": set_ or {}, "delete": delete or [], "reason": reason}
    if ":" in ref:
        name, num = ref.rsplit(":", 1)
        if not num.isdigit():
            raise RegistryError(f"bad version in {ref!r}: expected NAME or NAME:VERSION")
        return dict(_request("PATCH", f"/v1/models/{name}/versions/{num}/tags", url, json=body))
    return dict(_request("PATCH", f"/v1/models/{ref}", url, json=body))


def parse_tags(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` → ``{"k": "v"}``; a pair without ``=`` is an error that names it."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RegistryError(f"bad tag {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list")
    show = sub.add_parser("show")
    show.add_argument("ref", help="NAME, NAME:VERSION or NAME@ALIAS")
    promote = sub.add_parser("promote")
    promote.add_argument("ref", help="NAME:VERSION or NAME@ALIAS")
    promote.add_argument("--reason", default="")
    rollback = sub.add_parser("rollback")
    rollback.add_argument("name")
    rollback.add_argument("--reason", default="manual rollback")
    tag = sub.add_parser("tag")
    tag.add_argument("ref", help="NAME or NAME:VERSION")
    tag.add_argument("pairs", nargs="*", help="KEY=VALUE tags to set")
    tag.add_argument("--delete", action="append", default=[], help="tag key to remove (repeatable)")
    tag.add_argument("--reason", default="")
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
            out = models_promote_ref(args.ref, args.reason, url)
        elif args.models_command == "tag":
            out = models_tag(args.ref, parse_tags(args.pairs), args.delete, args.reason, url)
        else:
            out = models_rollback(args.name, args.reason, url)
    except RegistryError as exc:
        print(f"error: {exc}")
        return 1
    print(json.dumps(out, indent=2))
    return 0
