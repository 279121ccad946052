"""model versions record how they were quantised from their parent

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 22:00:00

A quantised version (kind ``quantize``) keeps its method, bits, group size, layout and calibration in
one JSON column; its parent stays in parent_model / parent_version. Existing rows were not quantised:
the column is null for them, and dropping it on downgrade loses nothing an older registry knew.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quantization", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("quantization")
