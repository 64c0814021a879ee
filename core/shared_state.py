"""State several replicas must share: the decision cache and the rate-limit buckets.

Redis when REDIS_URL is set, else the PostgreSQL database when that is the store, else this process
(SQLite means one process). A shared backend that fails or is slow never holds an answer up: each call
has a short timeout, and after a failure this process uses its own cache and buckets for `RETRY_S`
before trying the shared ones again (one warning per outage, one when they are back). With
METAROUTER_STORE_QUESTION_TEXT off, decisions are not shared (their reasoning can quote the question).

    state = shared_state(settings, engine)      # engine: the store's, or None without a database
    cache, limiter = state.cache, state.limiter
    await state.close()
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import delete, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from core.config import Settings
from core.ratelimit import MemoryRateLimiter, RateLimiter
from core.routing.cache import DecisionCache, DecisionStore
from core.store.models import CachedDecision
from core.types import Decision

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT_S = 1.0  # the most one shared call may add to an answer
RETRY_S = 15.0  # after a failure, how long this process keeps to its own state
PRUNE_EVERY = 500  # writes between two deletions of expired rows (PostgreSQL)

Clock = Callable[[], float]


def _bucket(per_minute: float) -> tuple[float, float]:
    """(capacity, tokens per second): as MemoryRateLimiter, a bucket holds a minute's worth."""
    return max(per_minute, 1.0), per_minute / 60.0


# --- Redis ----------------------------------------------------------------------------------------

# One script, so the read, the refill and the spend are atomic across replicas. Numbers go back as
# strings: Redis turns Lua numbers into integers.
_TAKE_LUA = """
local cap, refill, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]) or cap, tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * refill)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / refill end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return tostring(wait)
"""


class RedisDecisionStore:
    """Decisions as their contract JSON under a key that expires with the cache's TTL."""

    def __init__(self, redis: Redis, ttl_s: float, prefix: str) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl_s * 1000)
        self._prefix = prefix + "decision:"

    async def get(self, key: str) -> Decision | None:
        raw = await self._redis.get(self._prefix + key)
        return Decision.model_validate_json(raw) if raw is not None else None

    async def put(self, key: str, decision: Decision) -> None:
        if self._ttl_ms > 0:
            await self._redis.set(self._prefix + key, decision.model_dump_json(), px=self._ttl_ms)


class RedisRateLimiter:
    """Token buckets in Redis hashes; an idle bucket expires once it would be full again anyway."""

    def __init__(self, redis: Redis, prefix: str, clock: Clock = time.time) -> None:
        self._take = redis.register_script(_TAKE_LUA)
        self._prefix = prefix + "rate:"
        self._clock = clock

    async def take(self, key: str, per_minute: float) -> float:
        if per_minute <= 0:
            return 0.0
        capacity, refill = _bucket(per_minute)
        idle_ms = math.ceil(capacity / refill * 1000) + 1000
        wait = await self._take(keys=[self._prefix + key], args=[capacity, refill, self._clock(), idle_ms])
        return float(wait)


# --- PostgreSQL -----------------------------------------------------------------------------------

# One upsert spends a token or reports the wait: PostgreSQL evaluates every SET expression against the
# row as it was, under the row's lock, so two replicas taking at once queue on the row.
_TAKE_SQL = text("""
INSERT INTO rate_buckets AS b (key, tokens, updated_at, allowed)
VALUES (:key, CAST(:cap AS float8) - 1, CAST(:now AS float8), true)
ON CONFLICT (key) DO UPDATE SET
    tokens = LEAST(:cap, b.tokens + GREATEST(0, :now - b.updated_at) * :refill)
        - CASE WHEN LEAST(:cap, b.tokens + GREATEST(0, :now - b.updated_at) * :refill) >= 1 THEN 1 ELSE 0 END,
    allowed = LEAST(:cap, b.tokens + GREATEST(0, :now - b.updated_at) * :refill) >= 1,
    updated_at = GREATEST(CAST(:now AS float8), b.updated_at)
RETURNING tokens, allowed
""")


class SqlDecisionStore:
    """Decisions in the `decision_cache` table; expired rows are never served and pruned now and then."""

    def __init__(self, engine: AsyncEngine, ttl_s: float, clock: Clock = time.time) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._clock = clock
        self._writes = 0

    async def get(self, key: str) -> Decision | None:
        async with self._engine.connect() as conn:
            raw = await conn.scalar(
                select(CachedDecision.decision).where(
                    CachedDecision.key == key, CachedDecision.expires_at > self._clock()
                )
            )
        return Decision.model_validate_json(raw) if raw is not None else None

    async def put(self, key: str, decision: Decision) -> None:
        if self._ttl <= 0:
            return
        now = self._clock()
        row = {"key": key, "decision": decision.model_dump_json(), "expires_at": now + self._ttl}
        upsert = postgresql.insert(CachedDecision).values(row)
        upsert = upsert.on_conflict_do_update(
            index_elements=[CachedDecision.key],
            set_={"decision": upsert.excluded.decision, "expires_at": upsert.excluded.expires_at},
        )
        async with self._engine.begin() as conn:
            await conn.execute(upsert)
            self._writes += 1
            if self._writes % PRUNE_EVERY == 0:
                await conn.execute(delete(CachedDecision).where(CachedDecision.expires_at <= now))


class SqlRateLimiter:
    """Token buckets in the `rate_buckets` table (PostgreSQL)."""

    def __init__(self, engine: AsyncEngine, clock: Clock = time.time) -> None:
        self._engine = engine
        self._clock = clock
        self._takes = 0

    async def take(self, key: str, per_minute: float) -> float:
        if per_minute <= 0:
            return 0.0
        capacity, refill = _bucket(per_minute)
        now = self._clock()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(_TAKE_SQL, {"key": key, "cap": capacity, "refill": refill, "now": now})
            ).one()
            self._takes += 1
            if self._takes % PRUNE_EVERY == 0:
                # a bucket idle for an hour is full: forgetting it changes nothing
                await conn.execute(text("DELETE FROM rate_buckets WHERE updated_at < :t"), {"t": now - 3600})
        return 0.0 if row.allowed else (1.0 - row.tokens) / refill


# --- degrading to this process ------------------------------------------------------------------


@dataclass
class _Fallback:
    """Runs a call on the shared backend, or on this process's state while the backend is failing."""

    what: str
    clock: Clock = time.monotonic
    down_until: float = field(default=0.0, init=False)
    down: bool = field(default=False, init=False)

    async def run(self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        if self.down and self.clock() < self.down_until:
            return await local()
        try:
            result = await asyncio.wait_for(shared(), TIMEOUT_S)
        except Exception as exc:
            if not self.down:
                # the type only: a driver's message can quote the URL, and the URL can hold a password
                log.warning(
                    "shared %s unavailable (%s); this process uses its own until it answers",
                    self.what,
                    type(exc).__name__,
                )
            self.down, self.down_until = True, self.clock() + RETRY_S
            return await local()
        if self.down:
            self.down = False
            log.warning("shared %s is back", self.what)
        return result


class FallbackDecisionStore:
    """The shared cache, with this process's cache standing in while it fails. Decisions also go to
    the local cache, so an outage starts with this process's recent decisions rather than none."""

    def __init__(self, shared: DecisionStore, local: DecisionStore, clock: Clock = time.monotonic) -> None:
        self.shared, self.local = shared, local
        self._fallback = _Fallback("decision cache", clock)

    async def get(self, key: str) -> Decision | None:
        return await self._fallback.run(lambda: self.shared.get(key), lambda: self.local.get(key))

    async def put(self, key: str, decision: Decision) -> None:
        await self.local.put(key, decision)
        await self._fallback.run(lambda: self.shared.put(key, decision), _nothing)


class FallbackRateLimiter:
    """The shared buckets, with this process's buckets standing in while they fail (each replica then
    limits on its own: at worst a person gets the limit once per replica)."""

    def __init__(self, shared: RateLimiter, local: RateLimiter, clock: Clock = time.monotonic) -> None:
        self.shared, self.local = shared, local
        self._fallback = _Fallback("rate limits", clock)

    async def take(self, key: str, per_minute: float) -> float:
        return await self._fallback.run(
            lambda: self.shared.take(key, per_minute), lambda: self.local.take(key, per_minute)
        )


async def _nothing() -> None:
    return None


# --- wiring -------------------------------------------------------------------------------------


@dataclass
class SharedState:
    cache: DecisionStore
    limiter: RateLimiter
    backend: str  # "redis", "postgresql" or "process"
    _close: Callable[[], Awaitable[Any]] | None = None

    async def close(self) -> None:
        if self._close is not None:
            await self._close()


def shared_state(settings: Settings, engine: AsyncEngine | None) -> SharedState:
    """Redis when REDIS_URL is set, else PostgreSQL when `engine` is one, else this process."""
    local_cache, local_limiter = DecisionCache(settings), MemoryRateLimiter()
    # A decision's reasoning can quote the question: with question text off, decisions stay in memory
    # here (the rate-limit keys hold only user and channel ids, so limits are shared regardless).
    share_decisions = settings.store_question_text
    if settings.redis_url:
        from redis.asyncio import Redis  # only a Redis deployment pays for the import

        redis = Redis.from_url(settings.redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        redis_cache = RedisDecisionStore(redis, settings.cache_ttl_s, settings.redis_prefix)
        return SharedState(
            FallbackDecisionStore(redis_cache, local_cache) if share_decisions else local_cache,
            FallbackRateLimiter(RedisRateLimiter(redis, settings.redis_prefix), local_limiter),
            "redis",
            redis.aclose,
        )
    if engine is not None and engine.dialect.name == "postgresql":
        return SharedState(
            FallbackDecisionStore(SqlDecisionStore(engine, settings.cache_ttl_s), local_cache)
            if share_decisions
            else local_cache,
            FallbackRateLimiter(SqlRateLimiter(engine), local_limiter),
            "postgresql",
        )
    return SharedState(local_cache, local_limiter, "process")
