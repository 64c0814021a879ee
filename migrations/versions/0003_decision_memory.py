"""Decision memory: one sentence embedding per recorded request, to find similar past decisions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 15:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "request_embeddings",
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_request_embeddings_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_request_embeddings")),
    )
    op.create_index(
        op.f("ix_request_embeddings_created_at"), "request_embeddings", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_request_embeddings_created_at"), table_name="request_embeddings")
    op.drop_table("request_embeddings")
