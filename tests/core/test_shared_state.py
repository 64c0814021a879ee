"""Decision cache and rate limits shared by replicas: two processes' worth of clients on one Redis or one
PostgreSQL database see the same decisions and the same buckets, and a backend that is down leaves each
process limiting and caching on its own rather than failing a question."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core.shared_state import (
    RedisDecisionStore,
    RedisRateLimiter,
    SharedState,
    SqlDecisionStore,
    SqlRateLimiter,
    shared_state,
)
from core.store import create_engine, upgrade_database
from core.types import Decision
from tests.conftest import fresh_pg_database
from tests.core.test_service import RecordingReply, message

DECISION = Decision(
    recommended_model="qwen2.5-coder:7b",
    confidence=0.1 + 0.2,  # 0.30000000000000004: a float that must come back bit for bit
    reasoning='Python debugging; "quotes", ünïcode and\nnewlines survive',
    query_type="coding",
    complexity="moderate",
    specializations_needed=["python", "debugging"],
    alternatives=["llama3.2:3b"],
    download_if_needed=True,
    source="openai",
    fallback_reason=None,
    decision_ms=123.456789,
    cost_usd=0.000123,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@contextlib.asynccontextmanager
async def backend_engines(request: pytest.FixtureRequest, backend: str) -> AsyncIterator[list[AsyncEngine]]:
    """For "postgresql", two engines (two replicas' pools) on a fresh, upgraded database; for "redis",
    none (the settings point at Redis)."""
    if backend == "redis":
        request.getfixturevalue("redis_url")  # skips or fails when Redis does not answer
        yield []
        return
    async with fresh_pg_database() as url:
        await upgrade_database(url)
        engines = [create_engine(url), create_engine(url)]
        try:
            yield engines
        finally:
            for e in engines:
                await e.dispose()


@pytest.fixture(params=["redis", "postgresql"])
async def replicas(request, make_settings, redis_prefix) -> AsyncIterator[tuple[SharedState, SharedState]]:
    """The shared state of two replicas, as `build_app` wires it, on Redis or on PostgreSQL."""
    async with backend_engines(request, request.param) as engines:
        if request.param == "redis":
            settings = make_settings(
                redis_url=request.getfixturevalue("redis_url"), redis_prefix=redis_prefix
            )
        else:
            settings = make_settings()
        states = [shared_state(settings, engines[i] if engines else None) for i in range(2)]
        assert all(s.backend == request.param for s in states)
        try:
            yield states[0], states[1]
        finally:
            for s in states:
                await s.close()


async def test_a_decision_cached_by_one_replica_is_served_by_the_other_exactly(replicas) -> None:
    a, b = replicas
    assert await b.cache.get("k1") is None
    await a.cache.put("k1", DECISION)
    got = await b.cache.get("k1")
    assert got is not None
    assert got.model_dump_json() == DECISION.model_dump_json()
    assert got.confidence == 0.1 + 0.2


async def test_a_person_over_the_limit_is_refused_by_every_replica(replicas) -> None:
    a, b = replicas
    assert await a.limiter.take("user:slack:U1", 2) == 0.0
    assert await b.limiter.take("user:slack:U1", 2) == 0.0
    wait_a = await a.limiter.take("user:slack:U1", 2)
    wait_b = await b.limiter.take("user:slack:U1", 2)
    assert 0 < wait_a <= 30 and 0 < wait_b <= 30  # a token every 30 s at 2 per minute
    assert await b.limiter.take("user:slack:U2", 2) == 0.0  # someone else is not held back


async def test_two_replicas_taking_at_once_spend_the_bucket_exactly(replicas) -> None:
    a, b = replicas
    waits = await asyncio.gather(*(r.limiter.take("channel:slack:C1", 5) for r in (a, b) * 10))
    assert waits.count(0.0) == 5


async def test_postgresql_decisions_expire_with_the_ttl(request) -> None:
    clock = Clock()
    async with backend_engines(request, "postgresql") as engines:
        store = SqlDecisionStore(engines[0], ttl_s=3600, clock=clock)
        await store.put("k", DECISION)
        clock.t += 3599
        assert await store.get("k") == DECISION
        clock.t += 2
        assert await store.get("k") is None
        await store.put("k", DECISION)  # an expired row is replaced, not a conflict
        assert await store.get("k") == DECISION


async def test_redis_decisions_expire_with_the_ttl(redis_url, redis_prefix) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await RedisDecisionStore(redis, ttl_s=3600, prefix=redis_prefix).put("k", DECISION)
        ttl_ms = await redis.pttl(redis_prefix + "decision:k")
        assert 3_590_000 < ttl_ms <= 3_600_000
    finally:
        await redis.aclose()


@pytest.mark.parametrize("backend", ["redis", "postgresql"])
async def test_a_bucket_refills_with_time(backend, request, redis_prefix) -> None:
    clock = Clock()
    async with backend_engines(request, backend) as engines:
        client = Redis.from_url(request.getfixturevalue("redis_url")) if backend == "redis" else None
        limiter = (
            RedisRateLimiter(client, redis_prefix, clock=clock)
            if client
            else SqlRateLimiter(engines[0], clock=clock)
        )
        try:
            assert [await limiter.take("u", 2) for _ in range(3)][:2] == [0.0, 0.0]
            clock.t += 29
            assert await limiter.take("u", 2) == pytest.approx(1.0)  # refused: one more second to go
            clock.t += 1
            assert await limiter.take("u", 2) == 0.0
            assert await limiter.take("u", 2) > 0
        finally:
            if client is not None:
                await client.aclose()


@pytest.mark.parametrize("backend", ["redis", "postgresql"])
async def test_a_shared_backend_that_is_down_leaves_each_process_on_its_own(
    backend, make_settings, caplog
) -> None:
    if backend == "redis":
        settings, engine = make_settings(redis_url="redis://127.0.0.1:9/0"), None
    else:
        settings = make_settings()
        engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:9/none")
    state = shared_state(settings, engine)
    assert state.backend == backend
    try:
        with caplog.at_level(logging.WARNING, logger="core.shared_state"):
            await asyncio.wait_for(state.cache.put("k", DECISION), 10)
            assert await asyncio.wait_for(state.cache.get("k"), 10) == DECISION  # this process's cache
            waits = [await asyncio.wait_for(state.limiter.take("user:slack:U1", 1), 10) for _ in range(2)]
        assert waits[0] == 0.0 and waits[1] > 0  # still limited, by this process
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 2, warnings  # one per outage and kind, not one per question
        assert all("unavailable" in w and "127.0.0.1:9" not in w for w in warnings)
    finally:
        await state.close()
        if engine is not None:
            await engine.dispose()


async def test_without_question_text_decisions_are_not_shared_but_limits_are(request, make_settings) -> None:
    # the meta-router's reasoning can quote the question, which must then not reach a shared store
    async with backend_engines(request, "postgresql") as engines:
        states = [shared_state(make_settings(store_question_text=False), e) for e in engines]
        await states[0].cache.put("k", DECISION)
        assert await states[1].cache.get("k") is None
        assert [await s.limiter.take("user:slack:U1", 1) == 0.0 for s in states] == [True, False]


async def test_sqlite_and_no_database_keep_state_in_the_process(make_settings, tmp_path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        assert shared_state(make_settings(), engine).backend == "process"
        assert shared_state(make_settings(), None).backend == "process"
    finally:
        await engine.dispose()


async def test_two_apps_on_one_redis_share_limits_and_decisions(
    core_app, redis_url, redis_prefix, openai_double
) -> None:
    """build_app wiring with REDIS_URL: what one process decided or counted, the other sees."""
    shared = {"redis_url": redis_url, "redis_prefix": redis_prefix, "user_rate_per_minute": 1}
    a, b = await core_app(**shared), await core_app(**shared)
    assert a.shared is not None and a.shared.backend == "redis"

    first = await a.service.handle(message("explain quicksort", user_id="U1"), RecordingReply())
    assert first is not None and first.error is None and first.decision is not None
    refused = await b.service.handle(message("another question", user_id="U1"), RecordingReply())
    assert refused is not None and refused.error is not None and "faster" in refused.error

    again = await b.service.handle(message("explain quicksort", user_id="U2"), RecordingReply())
    assert again is not None and again.decision is not None and again.decision.source == "cache"
    assert again.decision.recommended_model == first.decision.recommended_model
    assert openai_double.calls == 1
