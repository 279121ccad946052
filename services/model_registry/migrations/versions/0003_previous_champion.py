"""model versions remember the champion they replaced

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00

A rollback restores the champion that the current one replaced, and the champion after that is the
one the restored version had replaced. That second step used to be read back from the audit log's
JSON; it is now a column. Existing rows are filled from the audit log as the old code read it: for
each version, the latest champion move that landed on it (promote, manual_promote, set_alias,
rollback with details.alias == "champion") says what the champion was before.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHAMPION_MOVES = ("promote", "manual_promote", "set_alias", "rollback")

audit_log = sa.table(
    "audit_log",
    sa.column("id", sa.Integer),
    sa.column("action", sa.String),
    sa.column("model", sa.String),
    sa.column("version", sa.Integer),
    sa.column("details", sa.JSON),
)
registered_models = sa.table("registered_models", sa.column("id", sa.Integer), sa.column("name", sa.String))
model_versions = sa.table(
    "model_versions",
    sa.column("id", sa.Integer),
    sa.column("model_id", sa.Integer),
    sa.column("version", sa.Integer),
    sa.column("previous_champion", sa.Integer),
)


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous_champion", sa.Integer(), nullable=True))
    _fill_from_audit_log(op.get_bind())


def _fill_from_audit_log(conn: sa.Connection) -> None:
    rows = conn.execute(
        sa.select(audit_log.c.model, audit_log.c.version, audit_log.c.details)
        .where(audit_log.c.action.in_(CHAMPION_MOVES), audit_log.c.version.is_not(None))
        .order_by(audit_log.c.id)
    )
    previous: dict[tuple[str, int], Any] = {}
    for model, version, details in rows:  # in id order: the latest move on a version wins
        if isinstance(details, dict) and details.get("alias") == "champion":
            prev = details.get("previous")
            previous[(model, version)] = int(prev) if prev is not None else None
    for (model, version), prev in previous.items():
        if prev is None:
            continue  # the new column's default
        model_id = sa.select(registered_models.c.id).where(registered_models.c.name == model).scalar_subquery()
        conn.execute(
            sa.update(model_versions)
            .where(model_versions.c.model_id == model_id, model_versions.c.version == version)
            .values(previous_champion=prev)
        )


def downgrade() -> None:
    # The audit log still holds the history the older code reads it from.
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("previous_champion")
