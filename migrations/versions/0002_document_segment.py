"""Documents record the index segment that made them visible (the packed-segment index engine).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("segment", sa.String(64), nullable=True))
    op.create_index("ix_units_version_document", "units", ["index_version_id", "document_id", "ordinal"])


def downgrade() -> None:
    op.drop_index("ix_units_version_document", table_name="units")
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("segment")
