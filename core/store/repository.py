"""`Store`: everything the bot records and reads back, one short transaction per method.

Nothing outside this module sees an ORM object: methods return ids, plain values or the frozen
dataclasses below. A database that cannot be reached raises `StoreUnavailable`, so callers can
degrade (answer without recording) instead of crashing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.config import Settings
from core.errors import StoreUnavailable
from core.feedback import DEFAULT_HALFLIFE_DAYS, RatingCount, tally
from core.store.engine import create_engine, session_factory
from core.store.models import (
    Answer,
    AnswerMessage,
    Conversation,
    EventClaim,
    Feedback,
    JobRun,
    ModelEvent,
    Replica,
    Request,
    RequestEmbedding,
    RouterCall,
    RouterVersion,
    utcnow,
)
from core.types import Decision, ModelStats, normalise_model_name

FINAL_STATUSES = frozenset({"ok", "error", "incomplete"})
# answers that count as the model having answered (a broken-off stream still showed text)
GENERATED_STATUSES = ("ok", "incomplete")
# prepull / evict mark the pulls and removals the forecast job made (the Generator's own pull and
# remove events record that they happened; these say why)
MODEL_EVENT_KINDS = frozenset({"pull", "pull_failed", "remove", "load", "prepull", "evict"})


def _midday(day: date | str) -> datetime:
    """Noon UTC of a day as the database returns it (PostgreSQL a date, SQLite an ISO string): the
    ratings of one day are weighed as if all given then, half a day off at most."""
    d = day if isinstance(day, date) else date.fromisoformat(str(day)[:10])
    return datetime.combine(d, time(12), tzinfo=UTC)


def query_hash(query: str) -> str:
    """sha256 of the query with case and runs of whitespace ignored: equal questions, equal hashes."""
    return hashlib.sha256(" ".join(query.split()).casefold().encode()).hexdigest()


@dataclass(frozen=True)
class MessageRef:
    platform: str
    channel_id: str
    message_id: str


@dataclass(frozen=True)
class UnfinishedAnswer:
    """An answer still marked streaming: the process that wrote it stopped before it finished."""

    answer_id: int
    request_id: int
    model: str
    host: str
    started_at: datetime
    messages: tuple[MessageRef, ...]
    question_id: str | None = None  # the platform message that asked, for a retry button
    replica: str | None = None  # the process that was writing it


@dataclass(frozen=True)
class RequestRecord:
    """One request as reports see it: the decision, the answer (if any) and its ratings."""

    created_at: datetime
    query_type: str
    source: str
    fallback_reason: str | None
    decision_ms: float
    cost_usd: float
    recommended_model: str
    model: str | None  # the model that answered; None when no answer was generated
    status: str | None
    prompt_tokens: int
    completion_tokens: int
    positive: int
    negative: int


@dataclass(frozen=True)
class StoredEmbedding:
    request_id: int
    created_at: datetime
    private: bool
    embedding: bytes  # float16, unit length


@dataclass(frozen=True)
class PastDecision:
    """A recorded request as the decision memory shows it: what was asked, where, what answered, how
    it was rated."""

    request_id: int
    created_at: datetime
    platform: str
    channel_id: str
    workspace_id: str | None
    query_text: str | None  # None when store_question_text was off
    query_type: str
    model: str  # the model that answered (the last one, after any fallback), else the one chosen
    positive: int
    negative: int


@dataclass(frozen=True)
class ModelEventRecord:
    model: str
    host: str
    kind: str
    created_at: datetime
    detail: Any


@dataclass(frozen=True)
class LabelledDecision:
    """A question the meta-router classified and the bot followed, with how its answer was rated."""

    request_id: int
    created_at: datetime
    text: str
    query_type: str
    rating: int  # positive minus negative ratings of its answers; 0 when unrated


@dataclass(frozen=True)
class RouterVersionInfo:
    id: int
    created_at: datetime
    metrics: dict[str, Any]
    examples: int
    decisions: int
    last_request_id: int
    active: bool
    installed: bool  # False: a rejected run, kept for its scores only


@dataclass(frozen=True)
class UsageTotals:
    """All-time counts for /metrics; histograms as cumulative counts at each bound (ms)."""

    requests: dict[str, int]  # source -> n
    fallbacks: dict[str, int]  # reason -> n
    feedback: dict[int, int]  # rating -> n
    model_events: dict[str, int]  # kind -> n
    answers: dict[str, int]  # status -> n
    decision_ms: tuple[list[int], int, float]  # (cumulative count per bound, count, sum)
    generation_ms: tuple[list[int], int, float]
    completion_tokens: int


class Store:
    def __init__(
        self, engine: AsyncEngine, *, store_question_text: bool = True, replica_id: str | None = None
    ) -> None:
        self.engine = engine
        self.store_question_text = store_question_text
        # this process, as the owner of the answers it streams (see heartbeat() and abandoned_answers())
        self.replica_id = replica_id
        self._sessions = session_factory(engine)
        # both dialects spell ON CONFLICT the same way; only the import differs
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        # SQLite has one writer at a time; concurrent transactions from one process would otherwise
        # queue on its file lock with busy-wait retries (seconds under a burst of mentions), so they
        # queue here instead, in order and without polling.
        self._serial = asyncio.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(create_engine(settings.db_url), store_question_text=settings.store_question_text)

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self._serial, self._sessions.begin() as session:
                yield session
        except (OperationalError, InterfaceError, OSError) as exc:
            # the type only: driver messages can quote the URL, and the URL can hold a password
            raise StoreUnavailable(f"database unavailable ({type(exc).__name__})") from exc
        except DBAPIError as exc:
            if not exc.connection_invalidated:  # a lost connection, not a refused statement
                raise
            raise StoreUnavailable(f"database connection lost ({type(exc).__name__})") from exc

    async def ping(self) -> bool:
        """True when the database answers (for /healthz)."""
        try:
            async with self._tx() as s:
                await s.execute(text("SELECT 1"))
        except StoreUnavailable:
            return False
        return True

    # --- conversations and requests ---------------------------------------------------------------

    async def conversation(
        self,
        platform: str,
        channel_id: str,
        thread_id: str | None,
        workspace_id: str | None = None,
        *,
        at: datetime | None = None,
    ) -> int:
        """The id of the conversation, created on first sight; two callers at once get the same id."""
        thread = thread_id or ""
        where = (
            Conversation.platform == platform,
            Conversation.channel_id == channel_id,
            Conversation.thread_id == thread,
        )
        async with self._tx() as s:
            found = await s.scalar(select(Conversation.id).where(*where))
            if found is not None:
                return found
            stmt = (
                self._insert(Conversation)
                .values(
                    platform=platform,
                    channel_id=channel_id,
                    thread_id=thread,
                    workspace_id=workspace_id,
                    created_at=at or utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["platform", "channel_id", "thread_id"])
                .returning(Conversation.id)
            )
            new_id = (await s.execute(stmt)).scalar_one_or_none()
            if new_id is not None:
                return new_id
            # someone else created it between our select and insert
            return (await s.execute(select(Conversation.id).where(*where))).scalar_one()

    async def record_request(
        self,
        *,
        platform: str,
        channel_id: str,
        user_id: str | None,
        query: str,
        decision: Decision,
        conversation_id: int | None = None,
        message_id: str | None = None,
        at: datetime | None = None,
        hashed: str | None = None,
    ) -> int:
        """`at` is when it was asked, for a record written late (after a database outage); `hashed` is
        the query's hash when the query itself was not kept."""
        stmt = (
            self._insert(Request)
            .values(
                conversation_id=conversation_id,
                platform=platform,
                channel_id=channel_id,
                user_id=user_id,
                query_text=query if self.store_question_text else None,
                query_hash=hashed or query_hash(query),
                message_id=message_id,
                created_at=at or utcnow(),
                decision=decision.with_votes(),
                recommended_model=decision.recommended_model,
                query_type=decision.query_type,
                complexity=decision.complexity,
                source=decision.source,
                fallback_reason=decision.fallback_reason,
                confidence=decision.confidence,
                decision_ms=decision.decision_ms,
                cost_usd=decision.cost_usd,
            )
            .returning(Request.id)
        )
        async with self._tx() as s:
            return (await s.execute(stmt)).scalar_one()

    async def record_embedding(self, request_id: int, embedding: bytes, *, private: bool) -> None:
        """Keep a request's question embedding; recording the same request again changes nothing."""
        stmt = (
            self._insert(RequestEmbedding)
            .values(request_id=request_id, created_at=utcnow(), private=private, embedding=embedding)
            .on_conflict_do_nothing(index_elements=["request_id"])
        )
        async with self._tx() as s:
            await s.execute(stmt)

    async def embeddings_since(self, since: datetime) -> list[StoredEmbedding]:
        async with self._tx() as s:
            rows = (
                await s.execute(
                    select(
                        RequestEmbedding.request_id,
                        RequestEmbedding.created_at,
                        RequestEmbedding.private,
                        RequestEmbedding.embedding,
                    )
                    .where(RequestEmbedding.created_at >= since)
                    .order_by(RequestEmbedding.created_at, RequestEmbedding.request_id)
                )
            ).all()
        return [StoredEmbedding(*r) for r in rows]

    async def past_decisions(self, request_ids: Iterable[int]) -> list[PastDecision]:
        """The given requests with their (last) answer's model and ratings, in no particular order."""
        ids = list(request_ids)
        if not ids:
            return []
        # only these requests' answers: summing every rating ever given would cost a table scan
        ratings = _ratings_per_answer(
            Feedback.answer_id.in_(select(Answer.id).where(Answer.request_id.in_(ids)))
        )
        stmt = (
            select(
                Request.id,
                Request.created_at,
                Request.platform,
                Request.channel_id,
                Conversation.workspace_id,
                Request.query_text,
                Request.query_type,
                Request.recommended_model,
                Answer.model,
                ratings.c.pos,
                ratings.c.neg,
            )
            .outerjoin(Conversation, Conversation.id == Request.conversation_id)
            .outerjoin(Answer, Answer.request_id == Request.id)
            .outerjoin(ratings, ratings.c.answer_id == Answer.id)
            .where(Request.id.in_(ids))
            .order_by(Request.id, Answer.id)
        )
        async with self._tx() as s:
            rows = (await s.execute(stmt)).all()
        found: dict[int, PastDecision] = {}
        for r in rows:  # a later answer to the same request (a retry) replaces the earlier one
            found[r[0]] = PastDecision(
                request_id=r[0],
                created_at=r[1],
                platform=r[2],
                channel_id=r[3],
                workspace_id=r[4],
                query_text=r[5],
                query_type=r[6],
                model=r[8] or r[7],
                positive=int(r[9] or 0),
                negative=int(r[10] or 0),
            )
        return list(found.values())

    async def claim_event(self, key: str) -> bool:
        """True for the first claim of a delivery id, False for every later one, across processes."""
        stmt = (
            self._insert(EventClaim)
            .values(key=key, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(EventClaim.key)
        )
        async with self._tx() as s:
            return (await s.execute(stmt)).scalar_one_or_none() is not None

    # --- answers --------------------------------------------------------------------------------

    async def start_answer(
        self,
        request_id: int,
        model: str,
        host: str,
        *,
        at: datetime | None = None,
        replica: str | None = None,
    ) -> int:
        """A new answer, streaming, owned by `replica` (by default this process)."""
        answer = Answer(
            request_id=request_id,
            model=normalise_model_name(model),
            host=host,
            status="streaming",
            replica=replica or self.replica_id,
            created_at=at or utcnow(),
        )
        async with self._tx() as s:
            s.add(answer)
            await s.flush()
            return answer.id

    async def finish_answer(
        self,
        answer_id: int,
        *,
        status: str,
        error: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        load_ms: float | None = None,
        total_ms: float | None = None,
        chars: int = 0,
        trimmed: bool = False,
        at: datetime | None = None,
    ) -> None:
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {sorted(FINAL_STATUSES)}, not {status!r}")
        async with self._tx() as s:
            await s.execute(
                update(Answer)
                .where(Answer.id == answer_id)
                .values(
                    status=status,
                    error=error,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    load_ms=load_ms,
                    total_ms=total_ms,
                    chars=chars,
                    trimmed=trimmed,
                    finished_at=at or utcnow(),
                )
            )

    async def add_answer_message(
        self, answer_id: int, platform: str, channel_id: str, message_id: str
    ) -> None:
        """Map one platform message of an answer back to it. A message shows one answer at a time: when
        an answer is generated again in the same messages (another host took over), they rate the new one."""
        stmt = self._insert(AnswerMessage).values(
            answer_id=answer_id, platform=platform, channel_id=channel_id, message_id=message_id
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["platform", "channel_id", "message_id"],
            set_={"answer_id": stmt.excluded.answer_id},
        )
        async with self._tx() as s:
            await s.execute(stmt)

    async def answer_for_message(self, platform: str, channel_id: str, message_id: str) -> int | None:
        """The answer a platform message belongs to, or None if the bot did not post it as an answer."""
        async with self._tx() as s:
            return await s.scalar(
                select(AnswerMessage.answer_id).where(
                    AnswerMessage.platform == platform,
                    AnswerMessage.channel_id == channel_id,
                    AnswerMessage.message_id == message_id,
                )
            )

    async def answer_decision(self, answer_id: int) -> Decision | None:
        """The routing decision an answer was generated under (the Discord buttons read it back)."""
        async with self._tx() as s:
            stored = await s.scalar(
                select(Request.decision)
                .join(Answer, Answer.request_id == Request.id)
                .where(Answer.id == answer_id)
            )
        return Decision.model_validate(stored) if stored is not None else None

    async def unfinished_answers(self, *, abandoned_after_s: float | None = None) -> list[UnfinishedAnswer]:
        """Answers still marked streaming. With `abandoned_after_s`, only those no live process is
        writing: their replica is not this one and has not sent a heartbeat for that long (or never)."""
        query = (
            select(
                Answer.id,
                Answer.request_id,
                Answer.model,
                Answer.host,
                Answer.created_at,
                Request.message_id,
                Answer.replica,
            )
            .join(Request, Request.id == Answer.request_id)
            .where(Answer.status == "streaming")
            .order_by(Answer.id)
        )
        if abandoned_after_s is not None:
            alive = select(Replica.id).where(
                Replica.heartbeat_at >= utcnow() - timedelta(seconds=abandoned_after_s)
            )
            owner_gone = Answer.replica.is_(None) | Answer.replica.not_in(alive)
            if self.replica_id is not None:
                owner_gone = owner_gone & (Answer.replica.is_(None) | (Answer.replica != self.replica_id))
            query = query.where(owner_gone)
        async with self._tx() as s:
            answers = (await s.execute(query)).all()
            if not answers:
                return []
            rows = (
                await s.execute(
                    select(
                        AnswerMessage.answer_id,
                        AnswerMessage.platform,
                        AnswerMessage.channel_id,
                        AnswerMessage.message_id,
                    )
                    .where(AnswerMessage.answer_id.in_([a.id for a in answers]))
                    .order_by(AnswerMessage.id)
                )
            ).all()
        messages: dict[int, list[MessageRef]] = {}
        for answer_id, platform, channel_id, message_id in rows:
            messages.setdefault(answer_id, []).append(MessageRef(platform, channel_id, message_id))
        return [
            UnfinishedAnswer(
                a.id,
                a.request_id,
                a.model,
                a.host,
                a.created_at,
                tuple(messages.get(a.id, ())),
                question_id=a.message_id,
                replica=a.replica,
            )
            for a in answers
        ]

    async def mark_incomplete(self, answer_ids: Iterable[int]) -> int:
        """Close answers that stopped streaming; returns how many were still open."""
        return len(await self.close_streaming(answer_ids))

    async def close_streaming(self, answer_ids: Iterable[int]) -> set[int]:
        """Mark answers incomplete that are still streaming; returns those this call closed. Two
        replicas sweeping at once close each answer once, so only one of them tells the user."""
        ids = list(answer_ids)
        if not ids:
            return set()
        async with self._tx() as s:
            closed = await s.execute(
                update(Answer)
                .where(Answer.id.in_(ids), Answer.status == "streaming")
                .values(status="incomplete", finished_at=utcnow())
                .returning(Answer.id)
            )
            return set(closed.scalars())

    async def heartbeat(self) -> None:
        """This replica is alive: its streaming answers are its own, not abandoned."""
        if self.replica_id is None:
            return
        now = utcnow()
        stmt = self._insert(Replica).values(id=self.replica_id, started_at=now, heartbeat_at=now)
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": now})
        async with self._tx() as s:
            await s.execute(stmt)

    async def retire(self) -> None:
        """This replica stops (cleanly): another may at once take over whatever it leaves open."""
        if self.replica_id is None:
            return
        async with self._tx() as s:
            await s.execute(delete(Replica).where(Replica.id == self.replica_id))

    # --- feedback -------------------------------------------------------------------------------

    async def set_feedback(
        self, answer_id: int, user_id: str, rating: int, reaction: str, *, at: datetime | None = None
    ) -> None:
        """Record one person's rating of an answer, replacing any rating they gave it before."""
        if rating not in (-1, 1):
            raise ValueError(f"rating must be 1 or -1, not {rating!r}")
        now = at or utcnow()
        stmt = self._insert(Feedback).values(
            answer_id=answer_id,
            user_id=user_id,
            rating=rating,
            reaction=reaction,
            created_at=now,
            updated_at=now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["answer_id", "user_id"],
            set_={"rating": stmt.excluded.rating, "reaction": stmt.excluded.reaction, "updated_at": now},
        )
        async with self._tx() as s:
            await s.execute(stmt)

    async def remove_feedback(self, answer_id: int, user_id: str, reaction: str | None = None) -> bool:
        """Withdraw a person's rating. With `reaction`, only if that is the reaction that set it:
        taking back an old 👍 must not undo the ❤️ that replaced it."""
        stmt = delete(Feedback).where(Feedback.answer_id == answer_id, Feedback.user_id == user_id)
        if reaction is not None:
            stmt = stmt.where(Feedback.reaction == reaction)
        async with self._tx() as s:
            result = await s.execute(stmt)
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def model_stats(
        self, *, halflife_days: float = DEFAULT_HALFLIFE_DAYS, now: datetime | None = None
    ) -> dict[str, ModelStats]:
        """Per model: answers generated, when last, the share of positive ratings (None if unrated), and
        per query type the ratings weighted by age (`halflife_days`)."""
        now = now or utcnow()
        # Ratings are counted per day in SQL and weighted in Python: the rows read back are bounded by
        # models x types x days, not by the number of ratings, and no dialect needs a power function.
        day = (
            func.date(func.timezone("UTC", Feedback.updated_at))
            if self.engine.dialect.name == "postgresql"
            else func.date(Feedback.updated_at)
        )
        async with self._tx() as s:
            usage = (
                await s.execute(
                    select(Answer.model, func.count(Answer.id), func.max(Answer.created_at))
                    .where(Answer.status.in_(GENERATED_STATUSES))
                    .group_by(Answer.model)
                )
            ).all()
            ratings = (
                await s.execute(
                    select(Answer.model, Request.query_type, Feedback.rating, day, func.count(Feedback.id))
                    .join(Answer, Feedback.answer_id == Answer.id)
                    .join(Request, Answer.request_id == Request.id)
                    .group_by(Answer.model, Request.query_type, Feedback.rating, day)
                )
            ).all()
        used: dict[str, tuple[int, datetime | None]] = {m: (n, last) for m, n, last in usage}
        by_model = tally(
            (
                RatingCount(model, query_type, int(rating), int(n), _midday(d))
                for model, query_type, rating, d, n in ratings
            ),
            now=now,
            halflife_days=halflife_days,
        )
        stats: dict[str, ModelStats] = {}
        for model in used.keys() | by_model.keys():
            by_type = by_model.get(model, {})
            pos = sum(r.positive_votes for r in by_type.values())
            total = sum(r.votes for r in by_type.values())
            requests, last_used = used.get(model, (0, None))
            stats[model] = ModelStats(
                satisfaction=pos / total if total else None,
                feedback_count=total,
                requests=requests,
                last_used=last_used,
                by_type=by_type,
            )
        return stats

    # --- meta-router calls and model events -----------------------------------------------------

    async def record_router_call(
        self,
        router_model: str,
        outcome: str,
        cost_usd: float,
        latency_ms: float,
        *,
        at: datetime | None = None,
    ) -> None:
        async with self._tx() as s:
            s.add(
                RouterCall(
                    router_model=router_model,
                    outcome=outcome,
                    cost_usd=cost_usd,
                    latency_ms=latency_ms,
                    created_at=at or utcnow(),
                )
            )

    async def router_calls_since(self, t: datetime) -> int:
        async with self._tx() as s:
            return int(
                await s.scalar(select(func.count(RouterCall.id)).where(RouterCall.created_at >= t)) or 0
            )

    async def router_spend_since(self, t: datetime) -> float:
        async with self._tx() as s:
            spent = await s.scalar(select(func.sum(RouterCall.cost_usd)).where(RouterCall.created_at >= t))
            return float(spent or 0.0)

    async def record_model_event(
        self,
        model: str,
        host: str,
        kind: str,
        detail: dict[str, Any] | None = None,
        *,
        at: datetime | None = None,
    ) -> None:
        if kind not in MODEL_EVENT_KINDS:
            raise ValueError(f"kind must be one of {sorted(MODEL_EVENT_KINDS)}, not {kind!r}")
        async with self._tx() as s:
            s.add(
                ModelEvent(
                    model=normalise_model_name(model),
                    host=host,
                    kind=kind,
                    detail=detail,
                    created_at=at or utcnow(),
                )
            )

    # --- reports, forecasts and scheduled jobs --------------------------------------------------

    async def request_records(self, since: datetime) -> list[RequestRecord]:
        """Every request since `since`, oldest first, with its (last) answer and that answer's ratings."""
        ratings = _ratings_per_answer()
        stmt = (
            select(
                Request.id,
                Request.created_at,
                Request.query_type,
                Request.source,
                Request.fallback_reason,
                Request.decision_ms,
                Request.cost_usd,
                Request.recommended_model,
                Answer.model,
                Answer.status,
                Answer.prompt_tokens,
                Answer.completion_tokens,
                ratings.c.pos,
                ratings.c.neg,
            )
            .outerjoin(Answer, Answer.request_id == Request.id)
            .outerjoin(ratings, ratings.c.answer_id == Answer.id)
            .where(Request.created_at >= since)
            .order_by(Request.id, Answer.id)
        )
        async with self._tx() as s:
            rows = (await s.execute(stmt)).all()
        by_request: dict[int, RequestRecord] = {}
        for r in rows:  # a later answer to the same request (a retry) replaces the earlier one
            by_request[r[0]] = RequestRecord(
                created_at=r[1],
                query_type=r[2],
                source=r[3],
                fallback_reason=r[4],
                decision_ms=r[5],
                cost_usd=r[6],
                recommended_model=r[7],
                model=r[8],
                status=r[9],
                prompt_tokens=int(r[10] or 0),
                completion_tokens=int(r[11] or 0),
                positive=int(r[12] or 0),
                negative=int(r[13] or 0),
            )
        return list(by_request.values())

    async def demand_times(self, since: datetime) -> list[tuple[str, datetime]]:
        """(model, when) of every request since `since`, the model being the one routing chose: the
        forecast's usage history. Not the model that answered: when the chosen one could not be
        pulled (the disk was full), another answered, and the demand for the chosen one would never
        show in the forecast that could pull it."""
        async with self._tx() as s:
            rows = (
                await s.execute(
                    select(Request.recommended_model, Request.created_at)
                    .where(Request.created_at >= since)
                    .order_by(Request.created_at)
                )
            ).all()
        return [(m, t) for m, t in rows]

    async def model_events(self, since: datetime) -> list[ModelEventRecord]:
        async with self._tx() as s:
            rows = (
                await s.execute(
                    select(
                        ModelEvent.model,
                        ModelEvent.host,
                        ModelEvent.kind,
                        ModelEvent.created_at,
                        ModelEvent.detail,
                    )
                    .where(ModelEvent.created_at >= since)
                    .order_by(ModelEvent.id)
                )
            ).all()
        return [ModelEventRecord(*r) for r in rows]

    async def claim_job_run(self, job_id: str, fire_time: datetime, status: str = "running") -> bool:
        """True for the one replica that claims this firing of the job; False for every other."""
        now = utcnow()
        stmt = (
            self._insert(JobRun)
            .values(job_id=job_id, fire_time=fire_time, started_at=now, status=status)
            .on_conflict_do_nothing(index_elements=["job_id", "fire_time"])
            .returning(JobRun.job_id)
        )
        async with self._tx() as s:
            return (await s.execute(stmt)).scalar_one_or_none() is not None

    async def finish_job_run(
        self, job_id: str, fire_time: datetime, status: str, error: str | None = None
    ) -> None:
        async with self._tx() as s:
            await s.execute(
                update(JobRun)
                .where(JobRun.job_id == job_id, JobRun.fire_time == fire_time)
                .values(status=status, error=error, finished_at=utcnow())
            )

    async def last_job_fire(self, job_id: str) -> datetime | None:
        async with self._tx() as s:
            return await s.scalar(select(func.max(JobRun.fire_time)).where(JobRun.job_id == job_id))

    async def job_runs(self, job_id: str) -> list[tuple[datetime, str]]:
        """(fire time, status) of every recorded firing of a job, oldest first."""
        async with self._tx() as s:
            rows = (
                await s.execute(
                    select(JobRun.fire_time, JobRun.status)
                    .where(JobRun.job_id == job_id)
                    .order_by(JobRun.fire_time)
                )
            ).all()
        return [(t, st) for t, st in rows]

    async def usage_totals(self, bounds_ms: list[float]) -> UsageTotals:
        """Counts since the database began, for /metrics (one round of GROUP BYs, no row scans out)."""

        def cumulative(col: Any) -> list[Any]:
            return [func.sum(case((col <= b, 1), else_=0)) for b in bounds_ms]

        async with self._tx() as s:
            by_source = (await s.execute(select(Request.source, func.count()).group_by(Request.source))).all()
            fallbacks = (
                await s.execute(
                    select(Request.fallback_reason, func.count())
                    .where(Request.fallback_reason.is_not(None))
                    .group_by(Request.fallback_reason)
                )
            ).all()
            feedback = (
                await s.execute(select(Feedback.rating, func.count()).group_by(Feedback.rating))
            ).all()
            events = (await s.execute(select(ModelEvent.kind, func.count()).group_by(ModelEvent.kind))).all()
            answers = (await s.execute(select(Answer.status, func.count()).group_by(Answer.status))).all()
            dec = (
                await s.execute(
                    select(func.count(), func.sum(Request.decision_ms), *cumulative(Request.decision_ms))
                )
            ).one()
            done = Answer.total_ms.is_not(None) & Answer.status.in_(GENERATED_STATUSES)
            gen = (
                await s.execute(
                    select(func.count(), func.sum(Answer.total_ms), *cumulative(Answer.total_ms)).where(done)
                )
            ).one()
            tokens = await s.scalar(select(func.sum(Answer.completion_tokens)))

        def hist(row: Any) -> tuple[list[int], int, float]:
            return [int(v or 0) for v in row[2:]], int(row[0] or 0), float(row[1] or 0.0)

        return UsageTotals(
            requests={k: int(n) for k, n in by_source},
            fallbacks={k: int(n) for k, n in fallbacks},
            feedback={int(k): int(n) for k, n in feedback},
            model_events={k: int(n) for k, n in events},
            answers={k: int(n) for k, n in answers},
            decision_ms=hist(dec),
            generation_ms=hist(gen),
            completion_tokens=int(tokens or 0),
        )

    # --- the local router's versions (core/routing/distill.py) ---------------------------------

    def _meta_labelled(self, after_id: int) -> Any:
        # source "openai" with no fallback reason: the meta-router answered and was followed, so its
        # query type is what the request was handled as (a fallback stores the local router's own)
        return (
            Request.source == "openai",
            Request.fallback_reason.is_(None),
            Request.query_text.is_not(None),
            Request.id > after_id,
        )

    async def meta_labelled_decisions(self, after_id: int = 0) -> list[LabelledDecision]:
        """Followed meta-router decisions with their question text, oldest first, with net ratings."""
        net = (
            select(Answer.request_id.label("request_id"), func.sum(Feedback.rating).label("net"))
            .join(Feedback, Feedback.answer_id == Answer.id)
            .group_by(Answer.request_id)
            .subquery()
        )
        stmt = (
            select(Request.id, Request.created_at, Request.query_text, Request.query_type, net.c.net)
            .outerjoin(net, net.c.request_id == Request.id)
            .where(*self._meta_labelled(after_id))
            .order_by(Request.id)
        )
        async with self._tx() as s:
            rows = (await s.execute(stmt)).all()
        return [LabelledDecision(r[0], r[1], r[2], r[3], int(r[4] or 0)) for r in rows]

    async def count_meta_labelled(self, after_id: int = 0) -> int:
        async with self._tx() as s:
            n = await s.scalar(select(func.count(Request.id)).where(*self._meta_labelled(after_id)))
        return int(n or 0)

    async def add_router_version(
        self,
        *,
        artifact: bytes | None,
        metrics: dict[str, Any],
        examples: int,
        decisions: int,
        last_request_id: int,
        keep: int,
    ) -> int:
        """Record a run; an artifact makes it the active version. Only the newest `keep` runs and the
        active one are kept (artifacts are megabytes each)."""
        async with self._tx() as s:
            row = RouterVersion(
                created_at=utcnow(),
                artifact=artifact,
                metrics=metrics,
                examples=examples,
                decisions=decisions,
                last_request_id=last_request_id,
                active=False,
            )
            s.add(row)
            await s.flush()
            if artifact is not None:
                await self._set_active(s, row.id)
            newest = (
                await s.scalars(select(RouterVersion.id).order_by(RouterVersion.id.desc()).limit(keep))
            ).all()
            await s.execute(
                delete(RouterVersion).where(RouterVersion.id.not_in(newest), RouterVersion.active.is_(False))
            )
            return row.id

    @staticmethod
    async def _set_active(s: AsyncSession, version_id: int) -> None:
        # one statement over every row, no WHERE: under PostgreSQL's READ COMMITTED two concurrent
        # activations then serialise on the row locks and exactly one version ends up active
        await s.execute(update(RouterVersion).values(active=RouterVersion.id == version_id))

    async def activate_router_version(self, version_id: int) -> bool:
        """Make an installed version the active one; 0 means the shipped model. False if there is no
        such installed version."""
        async with self._tx() as s:
            if version_id != 0:
                found = await s.scalar(
                    select(RouterVersion.id).where(
                        RouterVersion.id == version_id, RouterVersion.artifact.is_not(None)
                    )
                )
                if found is None:
                    return False
            await self._set_active(s, version_id)
            return True

    async def router_versions(self) -> list[RouterVersionInfo]:
        """Every recorded run, newest first (without the artifacts)."""
        async with self._tx() as s:
            rows = (
                await s.execute(
                    select(
                        RouterVersion.id,
                        RouterVersion.created_at,
                        RouterVersion.metrics,
                        RouterVersion.examples,
                        RouterVersion.decisions,
                        RouterVersion.last_request_id,
                        RouterVersion.active,
                        RouterVersion.artifact.is_not(None),
                    ).order_by(RouterVersion.id.desc())
                )
            ).all()
        return [RouterVersionInfo(*r) for r in rows]

    async def active_router_version(self) -> int:
        """The id of the active version; 0 for the shipped model. Cheap: replicas poll it."""
        async with self._tx() as s:
            found = await s.scalar(
                select(RouterVersion.id)
                .where(RouterVersion.active.is_(True))
                .order_by(RouterVersion.id.desc())
            )
        return int(found or 0)

    async def router_artifact(self, version_id: int) -> bytes | None:
        async with self._tx() as s:
            return await s.scalar(select(RouterVersion.artifact).where(RouterVersion.id == version_id))


def _ratings_per_answer(*where: Any) -> Any:
    """Per answer: its positive and negative ratings (`pos`, `neg`), as a subquery to join on `answer_id`."""
    return (
        select(
            Feedback.answer_id.label("answer_id"),
            func.sum(case((Feedback.rating > 0, 1), else_=0)).label("pos"),
            func.sum(case((Feedback.rating < 0, 1), else_=0)).label("neg"),
        )
        .where(*where)
        .group_by(Feedback.answer_id)
        .subquery()
    )
