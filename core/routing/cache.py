"""The decision cache: the same question in the same situation gets the same decision, for free.

"Same situation" is part of the key: the recent thread, the inventory fingerprint (which models are
local, their feedback) and the routing settings. Pulling a model or a new rating therefore misses
the cache instead of serving a stale decision, and nothing needs explicit invalidation.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from core.config import Settings
from core.routing.base import recent_turns, squash
from core.types import Decision, Inventory, RouteRequest


class DecisionStore(Protocol):
    """Anything that keeps decisions by key for a while: this in-process cache, or one shared by
    replicas (Redis or PostgreSQL, core/shared_state.py)."""

    async def get(self, key: str) -> Decision | None: ...

    async def put(self, key: str, decision: Decision) -> None: ...


def cache_key(req: RouteRequest, inv: Inventory, settings: Settings) -> str:
    thread = [f"{t.role}:{t.content.lower()}" for t in recent_turns(req.history)]
    # Settings that change what the chain would decide; a shared cache may serve differently configured
    # processes.
    routing = (
        settings.meta_router_enabled,
        settings.openai_api_key is not None,
        settings.meta_router_model,
        tuple((m.name, m.model, m.base_url, m.weight) for m in settings.meta_routers),
        settings.confidence_threshold,
        settings.use_local_for_simple_queries,
        settings.local_confidence_threshold,
        req.local_only,
        # exploration is drawn once per key: a repeated question keeps its model until the entry expires
        settings.explore and settings.explore_margin,
    )
    parts = [squash(req.query).lower(), *thread, inv.fingerprint(), repr(routing)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class DecisionCache:
    """TTL + LRU cache in this process; `clock` is injectable so tests expire entries without sleeping."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = settings.cache_ttl_s
        self._max = settings.cache_max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Decision]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> Decision | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, decision = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return decision

    async def put(self, key: str, decision: Decision) -> None:
        if self._ttl <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl, decision)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
