"""A reusable streaming sink: one answer growing in a chat, within a platform's limits.

The platform supplies a `Transport` (post a message, edit a message) and its `Limits`; the sink does
the rest:
- the first `status()` posts the placeholder at once; later statuses and the growing answer are
  edits, at most one per `interval_s` per message (the latest text wins, nothing is queued up);
- before a message would exceed `chars` (measured after `render`), its text is settled and the
  answer continues in a new message, cut where `bot.common.splitting` prefers (fences balanced);
- a `RetryLater` from the transport (HTTP 429) holds every write back for `retry_after` seconds;
- `finish()` always delivers the complete answer, in order, retrying settled pieces, and posting a
  fresh message when an edit is refused (say the placeholder was deleted).

    sink = StreamingSink(MyTransport(channel), Limits(chars=2000, interval_s=1.5))
    await sink.status("Routing…")
    await sink.update("Hello")           # the whole answer so far, not a delta
    ids = await sink.finish("Hello, world", extra=footer)   # footer goes on the last message

`update()` returns at once (and `status()` after the placeholder's post): edits run in a background
task, which renders and splits only when it writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bot.common.splitting import split_once

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """The platform said "too many requests": no write before `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after} s")
        self.retry_after = max(0.0, retry_after)


class MessageGone(Exception):
    """The message can no longer be edited (deleted, too old): the sink goes on in a new one."""


class Transport(Protocol):
    """How a sink reaches one conversation (a Slack thread, a Discord channel).

    `text` is already rendered and within the limits. `extra` is whatever the caller passed to
    `finish(extra=...)` (buttons, a footer) and only ever comes with the last message. A transport
    raises `RetryLater` on a rate limit, `MessageGone` when an edit cannot land, anything else for
    other failures (the write is then retried).
    """

    async def post(self, text: str, extra: Any = None) -> str:
        """Posts a new message; returns its id."""

    async def edit(self, message_id: str, text: str, extra: Any = None) -> None: ...


@dataclass(frozen=True)
class Limits:
    chars: int  # the most one message may show, after `render`
    interval_s: float  # the least time between two writes to the same message
    attempts: int = 5  # tries of a write that must land (settled pieces, the final answer)
    max_wait_s: float = 60.0  # a Retry-After above this is cut down to it


SLACK_LIMITS = Limits(chars=3000, interval_s=1.0)  # one section block; chat.update about 1/s
DISCORD_LIMITS = Limits(chars=2000, interval_s=1.5)


def _same(text: str) -> str:
    return text


class StreamingSink:
    def __init__(
        self,
        transport: Transport,
        limits: Limits,
        *,
        render: Callable[[str], str] = _same,
        clock: Callable[[], float] = time.monotonic,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.transport = transport
        self.limits = limits
        self.render = render
        self.clock = clock
        # awaited before each streaming edit, outside the write lock, so finish() never waits on it:
        # a pace shared by several sinks (Discord spaces edits per channel, across answers)
        self.pace = pace
        self.message_ids: list[str] = []  # every message of the answer, in order
        self._live: str | None = None  # the message still growing; None: the next write posts
        self._shown: dict[str, str] = {}  # message id -> the text it shows
        self._written: dict[str, float] = {}  # message id -> when it was last written
        self._blocked_until = 0.0  # after a 429, for every message
        self._settled = 0  # characters of the answer held by messages before the live one
        self._opener = ""  # fence the live message reopens
        self._has_text = False
        # What the live message should show next (a status, or the answer so far), not yet written.
        # Rendering and splitting wait for the write, so a token costs nothing but this assignment.
        self._next: str | None = None
        self._next_is_answer = False
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one write at a time keeps the messages in order
        self._done = False

    # --- what the core drives -----------------------------------------------------------------------
    async def status(self, text: str) -> None:
        """A transient line ("Routing…") while no answer text is shown; ignored afterwards."""
        if self._has_text or self._done:
            return
        if not self.message_ids:
            await self._must_write(self.render(text))  # the placeholder appears at once
            return
        self._queue(text, answer=False)

    async def update(self, text: str) -> None:
        """The whole answer so far. Full messages are settled and the answer goes on in new ones."""
        if self._done or not text.strip():
            return
        self._has_text = True
        self._queue(text, answer=True)

    async def finish(self, text: str, *, extra: Any = None) -> list[str]:
        """Delivers the complete `text` (with `extra` on its last message); returns every message id."""
        self._done = True
        await self._stop_flusher()
        tail = text[self._settled :]
        if not tail.strip() and self._live is None and self.message_ids:
            # everything is in settled messages already: the footer joins the last one
            self._live = self.message_ids[-1]
            await self._must_write(self._shown[self._live], extra)
            return list(self.message_ids)
        while True:
            cut = split_once(tail, self.limits.chars, opener=self._opener, measure=self._measure)
            last = cut.consumed >= len(tail)
            await self._must_write(self.render(cut.piece), extra if last else None)
            if last:
                return list(self.message_ids)
            self._live = None
            tail, self._opener = tail[cut.consumed :], cut.opener

    # --- internals ----------------------------------------------------------------------------
    def _measure(self, piece: str) -> int:
        return len(self.render(piece))

    def _queue(self, text: str, *, answer: bool) -> None:
        self._next, self._next_is_answer = text, answer
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="stream-flush")

    async def _flush(self) -> None:
        """Shows the latest queued text, once per interval, until nothing new is queued."""
        while self._next is not None:
            await asyncio.sleep(self._wait_for(self._live))
            if self.pace is not None:
                await self.pace()
            text, answer = self._next, self._next_is_answer
            self._next = None
            piece = await self._settle(text) if answer else text
            if piece.strip() and not await self._edit_live(self.render(piece)) and self._next is None:
                self._next, self._next_is_answer = text, answer  # rate limited: try again later

    async def _settle(self, text: str) -> str:
        """Writes out every full message of the answer so far; returns what the live one should show."""
        while True:
            tail = text[self._settled :]
            cut = split_once(tail, self.limits.chars, opener=self._opener, measure=self._measure)
            if cut.consumed >= len(tail):
                return cut.piece
            if cut.piece.strip():  # a run of blank space is passed over, not posted
                await self._must_write(self.render(cut.piece))
                self._live = None
            self._settled += cut.consumed
            self._opener = cut.opener

    async def _edit_live(self, rendered: str) -> bool:
        """An edit that may be lost, since finish() writes everything; False when rate limited."""
        if self._live is None:
            await self._must_write(rendered)
            return True
        async with self._lock:
            mid = self._live
            if mid is None or self._shown.get(mid) == rendered:
                return True
            await asyncio.sleep(self._wait_for(mid))
            try:
                await self.transport.edit(mid, rendered)
                self._shown[mid] = rendered
            except RetryLater as exc:
                self._hold(exc.retry_after)
                return False
            except Exception:
                log.warning("streaming edit failed", exc_info=True)
            finally:
                self._written[mid] = self.clock()
            return True

    async def _stop_flusher(self) -> None:
        async with self._lock:  # held: the flusher is not in the middle of a write
            self._next = None
            flusher, self._flusher = self._flusher, None
            if flusher is not None:
                flusher.cancel()
        if flusher is not None:
            await asyncio.gather(flusher, return_exceptions=True)

    def _wait_for(self, mid: str | None) -> float:
        last = self._written.get(mid, float("-inf")) if mid is not None else float("-inf")
        ready = max(last + self.limits.interval_s, self._blocked_until)
        return max(0.0, ready - self.clock())

    def _hold(self, retry_after: float) -> None:
        wait = min(retry_after, self.limits.max_wait_s)
        self._blocked_until = max(self._blocked_until, self.clock() + wait)

    async def _must_write(self, text: str, extra: Any = None) -> None:
        """A write that has to land: the live message's text, or a new message when there is none."""
        text = text or "…"  # platforms refuse empty messages
        async with self._lock:
            mid = self._live
            if mid is not None and extra is None and self._shown.get(mid) == text:
                return
            for attempt in range(1, self.limits.attempts + 1):
                await asyncio.sleep(self._wait_for(mid))
                try:
                    if mid is None:
                        mid = await self.transport.post(text, extra)
                        self.message_ids.append(mid)
                        self._live = mid
                    else:
                        await self.transport.edit(mid, text, extra)
                    self._written[mid] = self.clock()
                    self._shown[mid] = text
                    return
                except RetryLater as exc:
                    self._hold(exc.retry_after)
                except MessageGone:
                    # Deleted or frozen: carry on in a new message rather than lose the text.
                    if mid is not None:
                        self.message_ids.remove(mid)
                    mid = self._live = None
                except Exception:
                    log.warning("chat write failed (attempt %d)", attempt, exc_info=True)
            log.error("gave up delivering part of an answer after %d attempts", self.limits.attempts)
