"""What users rely on from the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from core.errors import StoreUnavailable
from core.store import Store, create_engine, upgrade_database
from core.store.models import Request
from core.types import Decision

CODER = "qwen2.5-coder:7b"
GENERAL = "llama3.2:3b"


def decision(model: str = CODER, query_type: str = "coding") -> Decision:
    return Decision(
        recommended_model=model,
        confidence=0.9,
        reasoning="test",
        query_type=query_type,  # type: ignore[arg-type]
        complexity="simple",
        source="local",
        fallback_reason="no_api_key",
        decision_ms=2.5,
    )


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    await upgrade_database(db_url)
    s = Store(create_engine(db_url))
    yield s
    await s.close()


async def answered(store: Store, model: str = CODER, query_type: str = "coding", status: str = "ok") -> int:
    """A request answered by `model`, as the service records it."""
    request_id = await store.record_request(
        platform="slack", channel_id="C1", user_id="U0", query="q", decision=decision(model, query_type)
    )
    assert request_id is not None
    answer_id = await store.start_answer(request_id, model, "http://127.0.0.1:11434")
    if status != "streaming":
        await store.finish_answer(answer_id, status=status, chars=10)
    return answer_id


async def count(store: Store, table: str) -> int:
    async with store.engine.connect() as conn:
        return (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()


async def test_a_redelivered_event_is_claimed_once(store: Store) -> None:
    assert await store.claim_event("slack:Ev123") is True
    assert await store.claim_event("slack:Ev123") is False
    assert await store.claim_event("slack:Ev124") is True
    # concurrent deliveries of one event: exactly one wins
    results = await asyncio.gather(*(store.claim_event("discord:42") for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]


async def test_the_decision_is_kept_as_the_contract_json(store: Store) -> None:
    d = decision()
    request_id = await store.record_request(
        platform="discord", channel_id="1", user_id="2", query="x", decision=d
    )
    async with store.engine.connect() as conn:
        row = (
            await conn.execute(
                select(Request.decision, Request.recommended_model, Request.fallback_reason).where(
                    Request.id == request_id
                )
            )
        ).one()
    assert Decision.model_validate(row[0]) == d
    assert row[1:] == (CODER, "no_api_key")


async def test_one_rating_per_person_per_answer_and_changing_replaces_it(store: Store) -> None:
    answer = await answered(store)
    await store.set_feedback(answer, "U1", 1, "+1")
    await store.set_feedback(answer, "U1", -1, "confused")
    stats = (await store.model_stats())[CODER]
    assert (stats.feedback_count, stats.satisfaction) == (1, 0.0)

    await store.set_feedback(answer, "U2", 1, "heart")
    stats = (await store.model_stats())[CODER]
    assert (stats.feedback_count, stats.satisfaction) == (2, 0.5)


async def test_removing_a_reaction_withdraws_the_rating(store: Store) -> None:
    answer = await answered(store)
    await store.set_feedback(answer, "U1", 1, "+1")
    await store.set_feedback(answer, "U1", 1, "heart")  # the heart replaced the thumbs-up
    # taking back the old thumbs-up leaves the heart's rating in place
    assert await store.remove_feedback(answer, "U1", "+1") is False
    assert (await store.model_stats())[CODER].feedback_count == 1

    assert await store.remove_feedback(answer, "U1", "heart") is True
    stats = (await store.model_stats())[CODER]
    assert (stats.feedback_count, stats.satisfaction) == (0, None)
    assert await store.remove_feedback(answer, "U1") is False


async def test_a_reaction_on_any_part_of_a_long_answer_rates_that_answer(store: Store) -> None:
    answer = await answered(store)
    other = await answered(store)
    for ts in ("1700000000.000100", "1700000000.000200"):
        await store.add_answer_message(answer, "slack", "C1", ts)
    await store.add_answer_message(other, "slack", "C1", "1700000000.000300")
    await store.add_answer_message(answer, "slack", "C1", "1700000000.000200")  # re-sent edit: no-op

    assert await store.answer_for_message("slack", "C1", "1700000000.000200") == answer
    assert await store.answer_for_message("slack", "C1", "1700000000.000100") == answer
    assert await store.answer_for_message("slack", "C1", "1700000000.000300") == other
    assert await store.answer_for_message("slack", "C2", "1700000000.000200") is None

    # the same person reacting on both parts still rates the answer once
    for ts in ("1700000000.000100", "1700000000.000200"):
        target = await store.answer_for_message("slack", "C1", ts)
        assert target is not None
        await store.set_feedback(target, "U1", 1, "+1")
    assert (await store.model_stats())[CODER].feedback_count == 1


async def test_model_stats_follow_the_contract(store: Store) -> None:
    before = datetime.now(UTC)
    await answered(store, CODER, "coding")
    await answered(store, CODER, "coding", status="incomplete")
    await answered(store, CODER, "coding", status="error")  # failed: generated nothing
    await answered(store, CODER, "coding", status="streaming")  # not finished yet
    last = await answered(store, GENERAL, "general")
    after = datetime.now(UTC)

    stats = await store.model_stats()
    assert stats[CODER].requests == 2
    assert stats[CODER].satisfaction is None  # no feedback yet: null, not 0
    assert stats[CODER].feedback_count == 0
    assert stats[GENERAL].requests == 1
    lu = stats[GENERAL].last_used
    assert lu is not None and lu.utcoffset() is not None and before <= lu <= after
    assert stats[CODER].last_used is not None and stats[CODER].last_used <= lu

    maths = await answered(store, CODER, "math")
    await store.set_feedback(maths, "U1", -1, "-1")
    await store.set_feedback(last, "U1", 1, "+1")
    coding = await answered(store, CODER, "coding")
    await store.set_feedback(coding, "U1", 1, "star")
    await store.set_feedback(coding, "U2", 1, "tada")

    stats = await store.model_stats()
    assert stats[CODER].satisfaction == pytest.approx(2 / 3)
    assert stats[CODER].feedback_count == 3
    coding, maths = stats[CODER].by_type["coding"], stats[CODER].by_type["math"]
    assert (coding.positive_votes, coding.votes, maths.positive_votes, maths.votes) == (2, 2, 0, 1)
    assert stats[GENERAL].satisfaction == 1.0


async def test_model_names_are_counted_under_their_normalised_name(store: Store) -> None:
    await answered(store, "mistral")
    assert (await store.model_stats())["mistral:latest"].requests == 1


async def test_router_call_count_and_spend_in_a_window(store: Store) -> None:
    assert await store.router_calls_since(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert await store.router_spend_since(datetime(2000, 1, 1, tzinfo=UTC)) == 0.0
    start = datetime.now(UTC)
    await store.record_router_call("gpt-4o-mini", "ok", 0.002, 310.0)
    await store.record_router_call("gpt-4o-mini", "timeout", 0.0, 4000.0)
    await asyncio.sleep(0.01)
    window = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await store.record_router_call("gpt-4o-mini", "ok", 0.003, 280.0)

    assert await store.router_calls_since(start) == 3
    assert await store.router_calls_since(window) == 1
    assert await store.router_spend_since(start) == pytest.approx(0.005)
    assert await store.router_spend_since(window) == pytest.approx(0.003)
    # a naive time is read as UTC, whatever the server's zone
    assert await store.router_calls_since(window.replace(tzinfo=None)) == 1


async def test_question_text_is_not_kept_when_disabled_but_its_hash_is(db_url: str) -> None:
    await upgrade_database(db_url)
    engine = create_engine(db_url)
    private = Store(engine, store_question_text=False)
    kept = Store(engine, store_question_text=True)
    try:
        a = await private.record_request(
            platform="slack", channel_id="C1", user_id="U1", query="My  secret plan", decision=decision()
        )
        b = await kept.record_request(
            platform="slack", channel_id="C1", user_id="U1", query="my secret plan", decision=decision()
        )
        async with engine.connect() as conn:
            rows = dict(
                (r[0], r[1:])
                for r in await conn.execute(text("SELECT id, query_text, query_hash FROM requests"))
            )
        assert rows[a][0] is None
        assert rows[b][0] == "my secret plan"
        # the same question asked differently is still recognisable by its hash
        assert rows[a][1] == rows[b][1] == hashlib.sha256(b"my secret plan").hexdigest()
    finally:
        await engine.dispose()


async def test_a_thread_is_one_conversation_even_when_raced(store: Store) -> None:
    ids = await asyncio.gather(*(store.conversation("slack", "C1", "1700.1", "T1") for _ in range(5)))
    assert len(set(ids)) == 1
    assert await store.conversation("slack", "C1", "1700.2") != ids[0]
    # a channel message with no thread is its own conversation, found again the same way
    top = await store.conversation("discord", "42", None)
    assert await store.conversation("discord", "42", None) == top
    request = await store.record_request(
        platform="slack",
        channel_id="C1",
        user_id="U1",
        query="q",
        decision=decision(),
        conversation_id=ids[0],
    )
    assert request is not None


async def test_answers_cut_off_by_a_restart_are_found_and_closed(store: Store) -> None:
    done = await answered(store)
    cut = await answered(store, status="streaming")
    await store.add_answer_message(cut, "discord", "42", "9001")
    await store.add_answer_message(cut, "discord", "42", "9002")

    unfinished = await store.unfinished_answers()
    assert [u.answer_id for u in unfinished] == [cut]
    assert [m.message_id for m in unfinished[0].messages] == ["9001", "9002"]
    assert unfinished[0].model == CODER

    assert await store.mark_incomplete([cut, done]) == 1  # the finished one stays as it was
    assert await store.unfinished_answers() == []
    assert (await store.model_stats())[CODER].requests == 2  # what it showed still counts


async def test_model_events_are_recorded(store: Store) -> None:
    await store.record_model_event("llama3.2:3b", "http://127.0.0.1:11434", "pull", {"bytes": 2_000_000_000})
    await store.record_model_event("llama3.2:3b", "http://127.0.0.1:11434", "load")
    assert await count(store, "model_events") == 2
    with pytest.raises(ValueError):
        await store.record_model_event("llama3.2:3b", "http://127.0.0.1:11434", "explode")


async def test_an_unreachable_database_degrades_without_leaking_the_password() -> None:
    # nothing listens on port 1
    store = Store(create_engine("postgresql+asyncpg://bot:s3cret-pw@127.0.0.1:1/metarouter"))
    try:
        assert await store.ping() is False
        with pytest.raises(StoreUnavailable) as info:
            await store.router_calls_since(datetime.now(UTC))
        assert "s3cret-pw" not in str(info.value)
        assert info.value.user_message == StoreUnavailable.user_message
    finally:
        await store.close()


async def test_a_reachable_database_answers_ping(store: Store) -> None:
    assert await store.ping() is True
