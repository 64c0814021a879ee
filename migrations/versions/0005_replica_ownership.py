"""Replica ownership of streaming answers (heartbeats), and the message a request came from.

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-04 15:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("started_at", UTC_TS, nullable=False),
        sa.Column("heartbeat_at", UTC_TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replicas")),
    )
    with op.batch_alter_table("answers") as batch:
        batch.add_column(sa.Column("replica", sa.String(), nullable=True))
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("message_id", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("message_id")
    with op.batch_alter_table("answers") as batch:
        batch.drop_column("replica")
    op.drop_table("replicas")
