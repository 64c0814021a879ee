"""Decision memory: similar past questions, the model chosen for them and how users rated it.

The meta-router learns from its own outcomes by seeing them: its prompt carries a few past decisions
whose questions are close to the new one (cosine similarity of the MiniLM embeddings the local router
computes anyway). Each recorded request keeps its embedding in the database (float16, 768 bytes);
this process holds the recent ones as one numpy matrix, loaded on first use and topped up from the
database every few seconds, so replicas see each other's decisions.

Privacy: a question from a local-only channel or workspace contributes nothing, not even "someone
asked something like this and disliked model X", since that too is derived from it. When
store_question_text is off the text does not exist; such a decision is shown without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np

from core.config import Settings
from core.privacy import Redactor, local_only_for
from core.routing.base import clip
from core.store.repository import PastDecision, StoredEmbedding

log = logging.getLogger(__name__)

QUESTION_CHARS = 160  # of a past question in the prompt: enough to see what it asked
REFRESH_S = 5.0  # how stale another replica's decisions may be
# A row's created_at is set before its transaction commits: re-read a little of the past so a row
# another replica committed late is not skipped for good.
OVERLAP = timedelta(minutes=5)
LOOKUP_TIMEOUT_S = 0.5  # a slow database costs the prompt its examples, never the decision


def utcnow() -> datetime:
    return datetime.now(UTC)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("decision memory: loading past decisions failed (%s)", type(task.exception()).__name__)


class MemoryStore(Protocol):
    async def record_embedding(self, request_id: int, embedding: bytes, *, private: bool) -> None: ...

    async def embeddings_since(self, since: datetime) -> list[StoredEmbedding]: ...

    async def past_decisions(self, request_ids: Iterable[int]) -> list[PastDecision]: ...


@dataclass(frozen=True)
class Precedent:
    """A similar past decision as the meta-router may see it."""

    question: str | None  # redacted and clipped; None when the text was not kept
    query_type: str
    model: str
    positive: int
    negative: int
    similarity: float
    at: datetime


class DecisionMemory:
    """`remember` a recorded request's question; find the `similar` past decisions of a new one.

    `embed` maps a question to its unit-length embedding (LocalRouter.embedding: a cache hit for a
    question the local router has just classified).
    """

    def __init__(
        self,
        settings: Settings,
        store: MemoryStore,
        embed: Callable[[str], np.ndarray],
        *,
        now: Callable[[], datetime] = utcnow,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._settings = settings
        self._store = store
        self._embed_sync = embed
        self._now = now
        self._refresh_s = refresh_s
        self._redactor = Redactor.from_settings(settings)
        self._lock = asyncio.Lock()
        self._topping_up: asyncio.Task[None] | None = None
        self._loaded_at: float | None = None  # monotonic time of the last top-up
        self._newest: datetime | None = None
        self._known: set[int] = set()
        self._n = 0
        self._ids = np.zeros(0, dtype=np.int64)
        self._times = np.zeros(0, dtype=np.float64)  # POSIX seconds
        self._private = np.zeros(0, dtype=bool)
        self._matrix: np.ndarray | None = None  # (capacity, dim) float32; the first _n rows are live

    def __len__(self) -> int:
        return self._n

    async def _embed(self, text: str) -> np.ndarray:
        # a cache hit costs microseconds; a miss tens of milliseconds of matrix work, off the event loop
        return await asyncio.to_thread(self._embed_sync, text)

    async def remember(self, request_id: int, query: str, *, private: bool) -> None:
        if not self._settings.store_question_text:
            # an embedding says much of what a question said: "keep only a hash" means none is kept
            return
        vector = (await self._embed(query)).astype(np.float16).tobytes()
        await self._store.record_embedding(request_id, vector, private=private)
        # this process sees its own decision at once, other replicas at their next top-up; during a
        # top-up the answer does not wait for it: that top-up or the next reads the row back
        if self._loaded_at is not None and not self._lock.locked() and request_id not in self._known:
            self._append([StoredEmbedding(request_id, self._now(), private, vector)])

    async def load(self) -> None:
        """Read the recent past decisions now (a search does it on first use, waiting only so long)."""
        await self._refresh()

    async def similar(self, query: str) -> list[Precedent]:
        """Up to `memory_examples` past decisions whose question is at least `memory_min_similarity`
        close to `query`, rated ones first; [] when none, or when the database does not answer."""
        s = self._settings
        if not s.decision_memory or s.memory_examples == 0:
            return []
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                return await self._similar(query)
        except Exception as exc:
            log.warning(
                "decision memory unavailable (%s); routing without past decisions", type(exc).__name__
            )
            return []

    async def _similar(self, query: str) -> list[Precedent]:
        s = self._settings
        await self._refresh()
        if self._n == 0 or self._matrix is None:
            return []
        q = await self._embed(query)
        sims = self._matrix[: self._n] @ q.astype(np.float32)
        cutoff = (self._now() - timedelta(days=s.memory_days)).timestamp()
        usable = (~self._private[: self._n]) & (self._times[: self._n] >= cutoff)
        sims = np.where(usable & (sims >= s.memory_min_similarity), sims, -np.inf)
        # a few spares: some may be from a channel marked private since, or unrated
        want = min(self._n, s.memory_examples * 4)
        top = np.argpartition(-sims, want - 1)[:want]
        top = top[np.isfinite(sims[top])]
        if top.size == 0:
            return []
        similarity = {int(self._ids[i]): float(sims[i]) for i in top}
        rows = await self._store.past_decisions(list(similarity))
        found = [
            self._precedent(r, similarity[r.request_id])
            for r in rows
            if not local_only_for(s, r.channel_id, r.workspace_id)
        ]
        # rated decisions teach more than unrated ones; among each, the closest first
        found.sort(key=lambda p: (p.positive + p.negative == 0, -p.similarity))
        return found[: s.memory_examples]

    def _precedent(self, r: PastDecision, similarity: float) -> Precedent:
        question = None
        if r.query_text and self._settings.store_question_text:
            scan = QUESTION_CHARS * 4 + 200  # clip squashes whitespace: redact what it may keep
            question = clip(self._redactor.redact(r.query_text, limit=scan).text, QUESTION_CHARS)
        return Precedent(question, r.query_type, r.model, r.positive, r.negative, similarity, r.created_at)

    async def _refresh(self) -> None:
        """Top up from the database when stale. The top-up runs as its own task: a search that gives up
        waiting (LOOKUP_TIMEOUT_S) must not cancel it, or a large first load would never finish."""
        if self._topping_up is None or self._topping_up.done():
            if self._loaded_at is not None and time.monotonic() - self._loaded_at < self._refresh_s:
                return
            self._topping_up = asyncio.create_task(self._top_up())
            self._topping_up.add_done_callback(_log_failure)
        await asyncio.shield(self._topping_up)

    async def _top_up(self) -> None:
        async with self._lock:
            started = time.monotonic()
            horizon = self._now() - timedelta(days=self._settings.memory_days)
            since = horizon if self._newest is None else max(horizon, self._newest - OVERLAP)
            try:
                rows = await self._store.embeddings_since(since)
            finally:
                self._loaded_at = started  # a database that is down is asked again later, not per search
            rows = [r for r in rows if r.request_id not in self._known]
            if rows:
                self._append(rows)
            self._forget_before(horizon.timestamp())

    def _append(self, rows: list[StoredEmbedding]) -> None:
        vectors = np.stack([np.frombuffer(r.embedding, dtype=np.float16) for r in rows]).astype(np.float32)
        need = self._n + len(rows)
        if self._matrix is None or need > len(self._matrix):
            # grow by doubling: topping up must not copy the whole matrix every few seconds
            capacity = max(need, 2 * (len(self._matrix) if self._matrix is not None else 0), 256)
            matrix = np.zeros((capacity, vectors.shape[1]), dtype=np.float32)
            ids, times, private = (
                np.zeros(capacity, dtype=a.dtype) for a in (self._ids, self._times, self._private)
            )
            if self._matrix is not None:
                matrix[: self._n] = self._matrix[: self._n]
                ids[: self._n], times[: self._n] = self._ids[: self._n], self._times[: self._n]
                private[: self._n] = self._private[: self._n]
            self._matrix, self._ids, self._times, self._private = matrix, ids, times, private
        end = self._n + len(rows)
        self._matrix[self._n : end] = vectors
        self._ids[self._n : end] = [r.request_id for r in rows]
        self._times[self._n : end] = [r.created_at.timestamp() for r in rows]
        self._private[self._n : end] = [r.private for r in rows]
        self._n = end
        self._known.update(r.request_id for r in rows)
        newest = max(r.created_at for r in rows)
        self._newest = newest if self._newest is None else max(self._newest, newest)

    def _forget_before(self, cutoff: float) -> None:
        if self._n == 0 or self._matrix is None or self._times[: self._n].min() >= cutoff:
            return
        keep = np.flatnonzero(self._times[: self._n] >= cutoff)
        self._known.difference_update(int(i) for i in self._ids[: self._n][self._times[: self._n] < cutoff])
        k = len(keep)
        self._matrix[:k] = self._matrix[keep]
        self._ids[:k], self._times[:k], self._private[:k] = (
            self._ids[keep],
            self._times[keep],
            self._private[keep],
        )
        self._n = k
