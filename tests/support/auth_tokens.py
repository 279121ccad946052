"""Tokens for tests of authenticated services: one principal per role in a tokens file."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.auth import Role
from shared.auth.tokens import TokenEntry, new_token, token_hash, write_entries

PRINCIPALS = {Role.READER: "rita-reader", Role.OPERATOR: "otto-operator", Role.ADMIN: "ada-admin"}


def issue_tokens(path: Path) -> dict[Role, str]:
    """Write a tokens file with a reader, an operator and an admin; returns their tokens."""
    tokens = {role: new_token() for role in Role}
    write_entries(path, [TokenEntry(PRINCIPALS[r], r, token_hash(t)) for r, t in tokens.items()])
    return tokens


def require_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[Role, str]:
    """Authentication on for services built from now on in this test, as a deployment runs them."""
    tokens = issue_tokens(tmp_path / "tokens.jsonl")
    monkeypatch.setenv("PUYU_AUTH_TOKENS_FILE", str(tmp_path / "tokens.jsonl"))
    monkeypatch.setenv("PUYU_AUTH_REQUIRED", "true")
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
