"""Per-user and per-channel question limits: token buckets behind a small protocol, so several
replicas can share them (Redis or PostgreSQL, core/shared_state.py) without the service changing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# Past this many buckets, full ones (idle long enough to have refilled) are dropped: a flood of
# one-off senders must not grow memory without bound.
MAX_BUCKETS = 10_000


class RateLimiter(Protocol):
    async def take(self, key: str, per_minute: float) -> float:
        """Spend one token of `key`'s bucket. Returns 0.0 when allowed, else the seconds until a token
        is free (nothing is spent then)."""
        ...


@dataclass
class _Bucket:
    tokens: float
    at: float


class MemoryRateLimiter:
    """One process's buckets. A bucket holds a minute's worth of questions, so a burst up to the rate
    is fine and a steady stream above it is not."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    async def take(self, key: str, per_minute: float) -> float:
        if per_minute <= 0:
            return 0.0
        now = self._clock()
        capacity = max(per_minute, 1.0)
        refill = per_minute / 60.0
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now)
            b = self._buckets[key] = _Bucket(capacity, now)
        b.tokens = min(capacity, b.tokens + (now - b.at) * refill)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / refill

    def _prune(self, now: float) -> None:
        # forgetting a bucket idle for 10 minutes lets its sender, at worst, ask a little early
        stale = [k for k, b in self._buckets.items() if now - b.at > 600]
        for k in stale:
            del self._buckets[k]
