"""The database schema as SQLAlchemy ORM models. Change a model, add an Alembic revision.

Every type here is portable between SQLite and PostgreSQL. Timestamps are UTC and come back
timezone-aware from both (SQLite keeps no zone, so `UTCDateTime` restores it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can name what they alter on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC; naive values are taken to be UTC already."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("platform", "channel_id", "thread_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String)  # console | slack | discord | cli
    workspace_id: Mapped[str | None] = mapped_column(String)
    channel_id: Mapped[str] = mapped_column(String)
    # "" for no thread: NULLs never collide in a unique constraint, so they could not dedupe
    thread_id: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), index=True
    )
    platform: Mapped[str] = mapped_column(String)
    channel_id: Mapped[str] = mapped_column(String)
    user_id: Mapped[str | None] = mapped_column(String)
    query_text: Mapped[str | None] = mapped_column(Text)  # None when store_question_text is off
    query_hash: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String)  # the platform message that asked
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    decision: Mapped[dict[str, Any]] = mapped_column()
    recommended_model: Mapped[str] = mapped_column(String)
    query_type: Mapped[str] = mapped_column(String)
    complexity: Mapped[str] = mapped_column(String)
    source: Mapped[str] = mapped_column(String)
    fallback_reason: Mapped[str | None] = mapped_column(String)
    confidence: Mapped[float] = mapped_column(Float)
    decision_ms: Mapped[float] = mapped_column(Float)
    cost_usd: Mapped[float] = mapped_column(Float)


class RequestEmbedding(Base):
    """The question's sentence embedding (float16, unit length), for finding similar past decisions.

    `private`: the question came from a local-only channel or workspace; nothing derived from it may go
    to the meta-router.
    """

    __tablename__ = "request_embeddings"

    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    private: Mapped[bool] = mapped_column(default=False)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)


class Answer(Base):
    __tablename__ = "answers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String, index=True)
    host: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String)  # streaming | ok | error | incomplete
    # the process streaming it (Replica.id): while that one is alive, no other may call it abandoned
    replica: Mapped[str | None] = mapped_column(String)
    error: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    load_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    chars: Mapped[int] = mapped_column(Integer, default=0)
    trimmed: Mapped[bool] = mapped_column(default=False)  # the history was cut to fit the context
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class AnswerMessage(Base):
    """Every platform message an answer was split into, so a reaction on any part rates the answer."""

    __tablename__ = "answer_messages"
    __table_args__ = (UniqueConstraint("platform", "channel_id", "message_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    answer_id: Mapped[int] = mapped_column(ForeignKey("answers.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String)
    channel_id: Mapped[str] = mapped_column(String)
    message_id: Mapped[str] = mapped_column(String)


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("answer_id", "user_id"),  # one rating per person per answer
        CheckConstraint("rating IN (-1, 1)", name="rating"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    answer_id: Mapped[int] = mapped_column(ForeignKey("answers.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String)
    rating: Mapped[int] = mapped_column(Integer)
    reaction: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class EventClaim(Base):
    """A platform delivery id taken by the first process that saw it: redeliveries (Slack retries,
    a gateway replay, another replica) find it here and are not answered twice."""

    __tablename__ = "event_claims"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class RouterCall(Base):
    """Every meta-router call: the hourly limit and monthly budget are counted here, across replicas."""

    __tablename__ = "router_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    router_model: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    outcome: Mapped[str] = mapped_column(String)  # "ok" or a fallback reason
    cost_usd: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)


class ModelEvent(Base):
    __tablename__ = "model_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String)
    host: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String)  # pull | pull_failed | remove | load
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    detail: Mapped[dict[str, Any] | None] = mapped_column()


class JobRun(Base):
    """One firing of a scheduled job. The (job, fire time) key is claimed by the first replica to
    insert it, so a firing runs once across replicas; the latest row is the job's last-run state."""

    __tablename__ = "job_runs"

    job_id: Mapped[str] = mapped_column(String, primary_key=True)
    fire_time: Mapped[datetime] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    status: Mapped[str] = mapped_column(String)  # running | ok | error | missed
    error: Mapped[str | None] = mapped_column(Text)


class Replica(Base):
    """A running serve process. Its heartbeat keeps its streaming answers its own; a replica whose
    heartbeat stopped (or that retired) leaves its unfinished answers to whoever sweeps first."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class RouterVersion(Base):
    """One `train-router` run. Installed runs keep their artifact (the local router's npz bytes) so
    every replica loads the active one and an operator can roll back; a rejected run keeps only its
    scores (artifact NULL), so the listing shows why nothing changed."""

    __tablename__ = "router_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    artifact: Mapped[bytes | None] = mapped_column(LargeBinary)
    metrics: Mapped[dict[str, Any]] = mapped_column()
    examples: Mapped[int] = mapped_column(Integer)  # training examples, shipped and stored together
    decisions: Mapped[int] = mapped_column(Integer)  # of them, meta-router decisions
    # the newest request it learned from: "new labelled decisions since" counts from here
    last_request_id: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(default=False)


class CachedDecision(Base):
    """A routing decision shared by replicas (PostgreSQL without Redis): its contract JSON, until it
    expires (Unix seconds)."""

    __tablename__ = "decision_cache"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    decision: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class RateBucket(Base):
    """One token bucket of the per-user and per-channel limits, shared by replicas. `allowed` is the
    outcome of the last take, so one upsert both updates the bucket and reports the result."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float, index=True)  # Unix seconds
    allowed: Mapped[bool] = mapped_column()
