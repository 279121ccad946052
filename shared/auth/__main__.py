"""``python -m shared.auth``: issue and revoke tokens in a tokens file (``PUYU_AUTH_TOKENS_FILE``).

    python -m shared.auth issue alice operator --file tokens.jsonl   # prints the new token once
    python -m shared.auth revoke alice --file tokens.jsonl
    python -m shared.auth deployment deploy/secrets/auth   # what compose.yaml and deploy/k8s mount

Services re-read the file within a second of a change: no restart is needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.auth.local import write_deployment_tokens
from shared.auth.principals import Role
from shared.auth.tokens import TokenEntry, new_token, read_entries, token_hash, write_entries
from shared.ports import SERVICES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.auth")
    sub = parser.add_subparsers(dest="command", required=True)
    issue = sub.add_parser("issue", help="add a token for a principal (replacing its earlier ones)")
    issue.add_argument("principal")
    issue.add_argument("role", choices=[r.label for r in Role])
    revoke = sub.add_parser("revoke", help="remove every token of a principal")
    revoke.add_argument("principal")
    for command in (issue, revoke):
        command.add_argument("--file", type=Path, required=True)
    deployment = sub.add_parser("deployment", help="tokens of every service and the admin, as secrets")
    deployment.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "deployment":
        write_deployment_tokens(args.out, (*SERVICES, "inference_worker"))
        print(f"tokens in {args.out}: the admin's in admin.token", file=sys.stderr)
        return 0
    entries = read_entries(args.file) if args.file.exists() else []
    kept = [e for e in entries if e.principal != args.principal]
    if args.command == "issue":
        token = new_token()
        write_entries(
            args.file, [*kept, TokenEntry(args.principal, Role.parse(args.role), token_hash(token))]
        )
        print(token)
    else:
        write_entries(args.file, kept)
        print(f"revoked {len(entries) - len(kept)} token(s) of {args.principal}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
