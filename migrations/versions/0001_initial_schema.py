"""Initial schema: conversations, requests, answers, their messages, feedback, router calls, model events.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 10:29:31
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Plain types on purpose: a revision must not change when core.store.models changes later.
UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("workspace_id", sa.String(), nullable=True),
        sa.Column("channel_id", sa.String(), nullable=False),
        sa.Column("thread_id", sa.String(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
        sa.UniqueConstraint(
            "platform",
            "channel_id",
            "thread_id",
            name=op.f("uq_conversations_platform_channel_id_thread_id"),
        ),
    )
    op.create_table(
        "model_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_events")),
    )
    op.create_table(
        "event_claims",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_event_claims")),
    )
    op.create_index(op.f("ix_event_claims_created_at"), "event_claims", ["created_at"])
    op.create_table(
        "router_calls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("router_model", sa.String(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_router_calls")),
    )
    op.create_index(op.f("ix_router_calls_created_at"), "router_calls", ["created_at"])
    op.create_table(
        "requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=True),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("channel_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=True),
        sa.Column("query_text", sa.Text(), nullable=True),
        sa.Column("query_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("decision", sa.JSON(), nullable=False),
        sa.Column("recommended_model", sa.String(), nullable=False),
        sa.Column("query_type", sa.String(), nullable=False),
        sa.Column("complexity", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("fallback_reason", sa.String(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("decision_ms", sa.Float(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_requests_conversation_id_conversations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_requests")),
    )
    op.create_index(op.f("ix_requests_conversation_id"), "requests", ["conversation_id"])
    op.create_index(op.f("ix_requests_created_at"), "requests", ["created_at"])
    op.create_table(
        "answers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("load_ms", sa.Float(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("chars", sa.Integer(), nullable=False),
        sa.Column("trimmed", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("finished_at", UTC_TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_answers_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_answers")),
    )
    op.create_index(op.f("ix_answers_model"), "answers", ["model"])
    op.create_index(op.f("ix_answers_request_id"), "answers", ["request_id"])
    op.create_table(
        "answer_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("answer_id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("channel_id", sa.String(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["answer_id"],
            ["answers.id"],
            name=op.f("fk_answer_messages_answer_id_answers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_answer_messages")),
        sa.UniqueConstraint(
            "platform",
            "channel_id",
            "message_id",
            name=op.f("uq_answer_messages_platform_channel_id_message_id"),
        ),
    )
    op.create_index(op.f("ix_answer_messages_answer_id"), "answer_messages", ["answer_id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("answer_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("reaction", sa.String(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
        sa.CheckConstraint("rating IN (-1, 1)", name=op.f("ck_feedback_rating")),
        sa.ForeignKeyConstraint(
            ["answer_id"],
            ["answers.id"],
            name=op.f("fk_feedback_answer_id_answers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("answer_id", "user_id", name=op.f("uq_feedback_answer_id_user_id")),
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_index(op.f("ix_answer_messages_answer_id"), table_name="answer_messages")
    op.drop_table("answer_messages")
    op.drop_index(op.f("ix_answers_request_id"), table_name="answers")
    op.drop_index(op.f("ix_answers_model"), table_name="answers")
    op.drop_table("answers")
    op.drop_index(op.f("ix_requests_created_at"), table_name="requests")
    op.drop_index(op.f("ix_requests_conversation_id"), table_name="requests")
    op.drop_table("requests")
    op.drop_index(op.f("ix_router_calls_created_at"), table_name="router_calls")
    op.drop_table("router_calls")
    op.drop_index(op.f("ix_event_claims_created_at"), table_name="event_claims")
    op.drop_table("event_claims")
    op.drop_table("model_events")
    op.drop_table("conversations")
