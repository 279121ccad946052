"""The tokens of a local stack (``puyu up``, ``puyu demo``, the tests' stacks), kept in its home.

On first start the stack makes an admin token (the CLI's: whoever runs the stack owns it) and one per
service (what each sends when it calls another); later starts keep them. ``tokens.jsonl`` holds
their hashes with each principal's role, next to any principal an administrator added by hand.
Token files are mode 0600 in a 0700 folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.auth.principals import Role
from shared.auth.tokens import TokenEntry, new_token, read_entries, token_hash, write_entries
from shared.settings import CommonSettings

AUTH_DIR = "auth"
ADMIN = "admin"


def service_principal(service: str) -> str:
    return f"service:{service}"


def local_principals(services: tuple[str, ...]) -> dict[str, Role]:
    """The admin, and each service as a reader: a service only reads what it asks another for
    (versions and champions from the registry, completions from the gateway or a worker)."""
    return {ADMIN: Role.ADMIN, **{service_principal(s): Role.READER for s in services}}


class TokenDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def of_home(cls, home: Path) -> TokenDir:
        return cls(Path(home) / AUTH_DIR)

    @property
    def tokens_file(self) -> Path:
        return self.root / "tokens.jsonl"

    def token_file(self, principal: str) -> Path:
        return self.root / f"{principal.replace(':', '-')}.token"

    def token(self, principal: str) -> str:
        return self.token_file(principal).read_text(encoding="utf-8").strip()

    def ensure(self, principals: dict[str, Role]) -> Path:
        """Make the tokens still missing (existing ones are kept) and write ``tokens.jsonl``: these
        principals with their roles, and every other principal already in it."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        entries = []
        for principal, role in principals.items():
            path = self.token_file(principal)
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(new_token() + "\n")
            entries.append(TokenEntry(principal, role, token_hash(self.token(principal))))
        if self.tokens_file.exists():
            entries += [e for e in read_entries(self.tokens_file) if e.principal not in principals]
        write_entries(self.tokens_file, entries)
        return self.tokens_file


# Compose and Kubernetes: one secret per deployment (its token and the tokens file), named as the
# deployment is; the inference workers share theirs (their names are not known in advance).
SECRET_PREFIX = "puyu-auth-"
DEPLOYMENT_TOKEN_FILE = "token"


def deployment_name(service: str) -> str:
    return service.replace("_", "-")


def write_deployment_tokens(out: Path, services: tuple[str, ...]) -> None:
    """What compose.yaml and deploy/k8s mount: OUT/tokens.jsonl, OUT/admin.token and, per service,
    OUT/puyu-auth-<name>/{token,tokens.jsonl}; tokens already there are kept (run it again to add
    a service; delete the folder to rotate them all)."""
    tokens = TokenDir(out)
    tokens_file = tokens.ensure(local_principals(services))
    for service in services:
        folder = out / f"{SECRET_PREFIX}{deployment_name(service)}"
        folder.mkdir(mode=0o700, exist_ok=True)
        for name, data in (
            (DEPLOYMENT_TOKEN_FILE, tokens.token(service_principal(service)) + "\n"),
            (tokens_file.name, tokens_file.read_text(encoding="utf-8")),
        ):
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)


def cli_token(settings: CommonSettings, home: Path | None = None) -> str | None:
    """The token the CLI sends: the one its settings name, else the admin token of the stack under
    ``home`` (default: the settings' home) when that stack made one."""
    if token := settings.client_token():
        return token
    path = TokenDir.of_home(home or settings.home).token_file(ADMIN)
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None
