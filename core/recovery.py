"""Answers cut off by a stopped process: found, closed once across replicas, and shown as such.

Every serve process heartbeats under its own replica id (Store.heartbeat) and stamps the answers it
streams with that id. A sweep, at start-up and then with every heartbeat, looks for answers still
streaming whose replica has stopped: it retired (a clean shutdown), or missed three heartbeats (it
was killed). Those are closed as incomplete, by exactly one replica (Store.close_streaming), which
hands them to `notify`: the adapters edit the messages to say the answer was interrupted and offer
a retry. A live replica's answers are never touched, however many replicas start meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from core.store import Store, UnfinishedAnswer

log = logging.getLogger(__name__)

Notify = Callable[[list[UnfinishedAnswer]], Awaitable[None]]
MISSED_HEARTBEATS = 3  # a replica silent this many intervals is taken for stopped
RETIRE_S = 2.0  # of the 30 s SIGTERM allows mid-answer (CONTRACT.md), after the adapters' drain


class Recovery:
    def __init__(self, store: Store, *, heartbeat_s: float, notify: Notify) -> None:
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.notify = notify
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Heartbeat and sweep at once (answers a previous run left), then every `heartbeat_s`."""
        await self._tick()
        self._task = asyncio.create_task(self._run(), name="recovery")

    async def close(self) -> None:
        """Stop heartbeating and retire. Answers of this process still open were already ended on the
        platform by the adapters' close; here they are closed in the database."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with asyncio.timeout(RETIRE_S):
                left = [
                    a for a in await self.store.unfinished_answers() if a.replica == self.store.replica_id
                ]
                await self.store.close_streaming(a.answer_id for a in left)
                await self.store.retire()
        except Exception as exc:  # the database is down: others take over once the heartbeat is stale
            log.warning("could not retire this replica (%s)", type(exc).__name__)

    async def sweep(self) -> list[UnfinishedAnswer]:
        """Closes the answers of stopped replicas; returns (and hands to `notify`) those this call closed."""
        left = await self.store.unfinished_answers(abandoned_after_s=MISSED_HEARTBEATS * self.heartbeat_s)
        if not left:
            return []
        closed = await self.store.close_streaming(a.answer_id for a in left)
        mine = [a for a in left if a.answer_id in closed]
        if mine:
            log.warning("%d answers interrupted by a stopped process are marked so", len(mine))
            await self.notify(mine)
        return mine

    async def _tick(self) -> None:
        try:
            async with asyncio.timeout(max(self.heartbeat_s, 5.0)):
                await self.store.heartbeat()
                await self.sweep()
        except Exception as exc:  # the database may be down; the next tick tries again
            log.warning("heartbeat or sweep failed (%s)", type(exc).__name__)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            with contextlib.suppress(Exception):
                await self._tick()
