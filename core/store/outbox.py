"""`BufferedStore`: a `Store` whose writes survive a database outage.

A write the database cannot take (it is unreachable, or does not answer within `write_timeout_s`) is
queued instead of failing, and a background task writes the queue, in order, when the database is
back (retrying with exponential backoff). Callers see no difference: the service, the routing ledger
and the generator's model events call the same methods and never get `StoreUnavailable` from a write.

Ids. Writes that create a row return its id, and later writes carry it (request → answer → its
messages → ratings). While queued, such a write returns a provisional id, a negative number; a
later write may carry it, and the flush replaces it with the real id once its row exists. So an
answer's records stay one chain however the outage falls across them, and a rating given to an
answer still in the queue counts: looking the answer up by message id sees the queued records, and a
lookup the database cannot answer is itself queued (its provisional id resolves, at flush time, to
the answer or to nothing, in which case the writes that depend on it are skipped).

Order. While anything is queued, every new write queues behind it, even if the database is back:
a write never overtakes one it may depend on.

Waiting. A write or a read on the answering path (deduplication, model statistics, the router's
budget) waits at most `write_timeout_s`; once the database is known to be down (something is queued
and the last attempt failed) they fail at once, and only the flusher keeps probing it. So a database
that hangs rather than refuses delays one answer, not all of them.

Spool. Each queued write is also appended to a JSON Lines file in the data directory (mode 0600: it
holds what the database would, questions included) before the call returns, and each write that
lands appends a line saying so, with the real id it got. A process killed during an outage leaves
its file behind; the next process to start on that data directory (whichever replica it is) replays
it. Files are held with an exclusive `flock` while their process lives, so a replica never adopts
another live replica's spool. A queue of more than `max_ops` writes drops new ones (counted, logged):
memory and disk stay bounded through an outage of any length.

Caveat: a write whose connection broke after the database committed it is written again (a
duplicate row, never a lost one).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import StoreUnavailable
from core.store.models import utcnow
from core.store.repository import Store, query_hash
from core.types import Decision, ModelStats

log = logging.getLogger(__name__)

# Arguments that carry ids the database hands out, and so may be provisional.
_ID_ARGS = ("conversation_id", "request_id", "answer_id")
# Writes whose result is a new row's id.
_RETURNS_ID = frozenset({"conversation", "record_request", "start_answer", "answer_for_message"})
SPOOL_GLOB = "outbox-*.jsonl"


@dataclass
class _Op:
    seq: int
    method: str
    args: dict[str, Any]  # JSON-ready: datetimes as ISO text, the decision as its JSON
    pid: int | None  # the provisional id it returned
    queued_at: datetime


class _Skip(Exception):
    """A queued write refers to a row that was never written (a dropped write, a lookup that found
    no answer): it is skipped."""


@dataclass(frozen=True)
class BufferState:
    """What /healthz and /metrics show about the queue."""

    pending: int  # writes waiting for the database
    dropped: int  # writes refused because the queue was full
    failed: int  # queued writes the database refused for good (not an outage)
    oldest: datetime | None  # when the oldest pending write was made


class BufferedStore(Store):
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        spool_dir: Path | None,
        store_question_text: bool = True,
        replica_id: str | None = None,
        max_ops: int = 10_000,
        write_timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        prepare: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """`prepare` runs once before the first flush (the schema upgrade, when the database was
        down at start-up)."""
        super().__init__(engine, store_question_text=store_question_text, replica_id=replica_id)
        self.spool_dir = spool_dir
        self.max_ops = max_ops
        self.write_timeout_s = write_timeout_s
        self.backoff_s = backoff_s
        self._prepare = prepare
        self._queue: deque[_Op] = deque()
        self._ids: dict[int, int | None] = {}  # provisional id -> real id (None: resolved to nothing)
        self._next_pid = -1
        self._seq = 0
        self.dropped = 0
        self.failed = 0
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._spool: IO[str] | None = None
        self._spool_path: Path | None = None
        self._down = False  # the last attempt failed: reads fail fast while writes are queued

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Adopt spools left by processes that stopped, then start flushing."""
        if self.spool_dir is not None:
            self._open_spool()
        self._flusher = asyncio.create_task(self._run(), name="outbox-flush")
        if self._queue or self._prepare is not None:
            self._wake.set()

    async def close(self, flush_s: float = 2.0) -> None:
        """One last bounded attempt to write the queue; what remains stays in the spool."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._queue:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(flush_s):
                    await self._flush()
        if self._queue:
            log.warning(
                "%d database writes kept in %s for the next start", len(self._queue), self._spool_path
            )
        self._close_spool(remove=not self._queue)
        await super().close()

    def buffer_state(self) -> BufferState:
        oldest = self._queue[0].queued_at if self._queue else None
        return BufferState(len(self._queue), self.dropped, self.failed, oldest)

    # --- buffered writes ------------------------------------------------------------------------
    async def conversation(
        self,
        platform: str,
        channel_id: str,
        thread_id: str | None,
        workspace_id: str | None = None,
        *,
        at: datetime | None = None,
    ) -> int:
        return await self._write(
            "conversation",
            platform=platform,
            channel_id=channel_id,
            thread_id=thread_id,
            workspace_id=workspace_id,
            at=at or utcnow(),
        )

    async def record_request(self, **kwargs: Any) -> int:  # type: ignore[override]
        kwargs.setdefault("at", utcnow())
        if not self.store_question_text:
            # the spool must not keep what the database may not
            kwargs["hashed"], kwargs["query"] = query_hash(kwargs["query"]), ""
        return await self._write("record_request", **kwargs)

    async def start_answer(
        self,
        request_id: int,
        model: str,
        host: str,
        *,
        at: datetime | None = None,
        replica: str | None = None,
    ) -> int:
        return await self._write(
            "start_answer",
            request_id=request_id,
            model=model,
            host=host,
            at=at or utcnow(),
            replica=replica or self.replica_id,
        )

    async def finish_answer(self, answer_id: int, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("at", utcnow())
        await self._write("finish_answer", answer_id=answer_id, **kwargs)

    async def add_answer_message(
        self, answer_id: int, platform: str, channel_id: str, message_id: str
    ) -> None:
        await self._write(
            "add_answer_message",
            answer_id=answer_id,
            platform=platform,
            channel_id=channel_id,
            message_id=message_id,
        )

    async def set_feedback(
        self, answer_id: int, user_id: str, rating: int, reaction: str, *, at: datetime | None = None
    ) -> None:
        if rating not in (-1, 1):
            raise ValueError(f"rating must be 1 or -1, not {rating!r}")
        await self._write(
            "set_feedback",
            answer_id=answer_id,
            user_id=user_id,
            rating=rating,
            reaction=reaction,
            at=at or utcnow(),
        )

    async def remove_feedback(self, answer_id: int, user_id: str, reaction: str | None = None) -> bool:
        """True when the rating was withdrawn or the withdrawal is queued."""
        done = await self._write("remove_feedback", answer_id=answer_id, user_id=user_id, reaction=reaction)
        return bool(done)

    async def record_router_call(
        self,
        router_model: str,
        outcome: str,
        cost_usd: float,
        latency_ms: float,
        *,
        at: datetime | None = None,
    ) -> None:
        await self._write(
            "record_router_call",
            router_model=router_model,
            outcome=outcome,
            cost_usd=cost_usd,
            latency_ms=latency_ms,
            at=at or utcnow(),
        )

    async def record_model_event(
        self,
        model: str,
        host: str,
        kind: str,
        detail: Any = None,
        *,
        at: datetime | None = None,
    ) -> None:
        await self._write(
            "record_model_event", model=model, host=host, kind=kind, detail=detail, at=at or utcnow()
        )

    # --- reads that must see the queue ----------------------------------------------------------
    async def answer_for_message(self, platform: str, channel_id: str, message_id: str) -> int | None:
        """The answer of a message, queued or written. When the database cannot say, the lookup
        itself is queued and its provisional id returned, so a rating on it is not lost."""
        for op in reversed(self._queue):
            a = op.args
            if op.method == "add_answer_message" and (a["platform"], a["channel_id"], a["message_id"]) == (
                platform,
                channel_id,
                message_id,
            ):
                return self._known(a["answer_id"])
        return await self._write(
            "answer_for_message", platform=platform, channel_id=channel_id, message_id=message_id
        )

    async def answer_decision(self, answer_id: int) -> Decision | None:
        if answer_id < 0:
            real = self._ids.get(answer_id)
            if real is None:
                return self._queued_decision(answer_id)
            answer_id = real
        return await self._timed(super().answer_decision(answer_id))

    async def claim_event(self, key: str) -> bool:
        return await self._timed(super().claim_event(key))

    async def model_stats(self, **kwargs: Any) -> dict[str, ModelStats]:
        return await self._timed(super().model_stats(**kwargs))

    async def record_embedding(self, request_id: int, embedding: bytes, *, private: bool) -> None:
        # An embedding only helps the meta-router find precedents: not worth spooling through an
        # outage, and a provisional request id has no row to refer to yet.
        if request_id < 0:
            return
        await self._timed(super().record_embedding(request_id, embedding, private=private))

    async def router_calls_since(self, t: datetime) -> int:
        return await self._timed(super().router_calls_since(t))

    async def router_spend_since(self, t: datetime) -> float:
        return await self._timed(super().router_spend_since(t))

    # --- internals: writing or queueing ---------------------------------------------------------
    async def _write(self, method: str, **kwargs: Any) -> Any:
        args = _encode(kwargs)
        if not self._queue and self._prepare is None:  # (until the schema is upgraded, everything queues)
            try:
                resolved = self._resolve(args)
            except _Skip:
                return None
            if resolved is not None:
                try:
                    return await self._timed(self._call(method, resolved))
                except StoreUnavailable as exc:
                    self._down = True
                    log.warning("database unavailable (%s); buffering writes", exc)
        return self._enqueue(method, args)

    async def _timed(self, op: Coroutine[Any, Any, Any], *, probe: bool = False) -> Any:
        """`op` within the write timeout; at once StoreUnavailable while the database is known down
        (unless this is the flusher's `probe`)."""
        if self._down and self._queue and not probe:
            op.close()
            raise StoreUnavailable("database unavailable (writes are buffered)")
        try:
            async with asyncio.timeout(self.write_timeout_s):
                return await op
        except TimeoutError:
            raise StoreUnavailable(f"database did not answer within {self.write_timeout_s:g} s") from None

    def _call(self, method: str, args: dict[str, Any]) -> Coroutine[Any, Any, Any]:
        return getattr(Store, method)(self, **_decode(args))  # type: ignore[no-any-return]

    def _enqueue(self, method: str, args: dict[str, Any]) -> Any:
        pid = None
        if method in _RETURNS_ID:
            pid, self._next_pid = self._next_pid, self._next_pid - 1
        if len(self._queue) >= self.max_ops:
            self.dropped += 1
            log.error("database write buffer full (%d): %s dropped", self.max_ops, method)
            if pid is not None:
                self._ids[pid] = None
            return pid
        self._seq += 1
        op = _Op(self._seq, method, args, pid, utcnow())
        self._queue.append(op)
        self._append({"seq": op.seq, "op": method, "args": args, "pid": pid})
        self._wake.set()
        return pid if method in _RETURNS_ID else True

    def _known(self, value: int | None) -> int | None:
        if value is not None and value < 0 and value in self._ids:
            return self._ids[value]
        return value

    def _resolve(self, args: dict[str, Any]) -> dict[str, Any] | None:
        """`args` with provisional ids replaced by real ones; None while one is still queued.
        Raises _Skip when one resolved to nothing (a request may still go without its conversation)."""
        out = dict(args)
        for key in _ID_ARGS:
            value = out.get(key)
            if isinstance(value, int) and value < 0:
                if value not in self._ids:
                    return None
                out[key] = self._ids[value]
                if out[key] is None and key != "conversation_id":
                    raise _Skip
        return out

    def _queued_decision(self, answer_id: int) -> Decision | None:
        start = next((o for o in self._queue if o.pid == answer_id and o.method == "start_answer"), None)
        request_id = start.args["request_id"] if start else None
        req = next((o for o in self._queue if o.pid == request_id and o.method == "record_request"), None)
        return Decision.model_validate(req.args["decision"]) if req else None

    # --- internals: flushing --------------------------------------------------------------------
    async def _run(self) -> None:
        low, high = self.backoff_s
        delay = low
        while True:
            await self._wake.wait()
            try:
                await self._flush()
                delay = low
                self._wake.clear()
                if self._queue:  # queued while the last write was in flight
                    self._wake.set()
            except StoreUnavailable as exc:
                log.info("database still unavailable (%s); %d writes buffered", exc, len(self._queue))
                await asyncio.sleep(delay)
                delay = min(delay * 2, high)
            except Exception:
                log.exception("flushing buffered database writes failed")
                await asyncio.sleep(delay)
                delay = min(delay * 2, high)

    async def _flush(self) -> None:
        """Writes the queue in order; raises StoreUnavailable where the database stops answering."""
        try:
            await self._write_queue()
        except StoreUnavailable:
            self._down = True
            raise
        self._down = False

    async def _write_queue(self) -> None:
        if self._prepare is not None:
            await self._timed(self._prepare(), probe=True)
            self._prepare = None
        if not self._queue:
            return
        # before the replayed answers land, so no other replica takes them for abandoned
        await self._timed(Store.heartbeat(self), probe=True)
        while self._queue:
            op = self._queue[0]
            result: Any = None
            try:
                args = self._resolve(op.args)
                assert args is not None, "a queued write refers only to writes queued before it"
                result = await self._timed(self._call(op.method, args), probe=True)
            except _Skip:
                log.info("buffered %s skipped: what it refers to was never written", op.method)
            except StoreUnavailable:
                raise
            except Exception as exc:
                # refused for good (a constraint, a bad value): retrying would block the queue forever
                self.failed += 1
                log.error("buffered %s refused by the database (%s); dropped", op.method, type(exc).__name__)
            if op.pid is not None:
                self._ids[op.pid] = result
            self._queue.popleft()
            self._append({"done": op.seq, "id": result if op.pid is not None else None})
        self._truncate()
        log.warning("database is back; buffered writes are written")

    # --- internals: the spool -------------------------------------------------------------------
    def _open_spool(self) -> None:
        assert self.spool_dir is not None
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            name = f"outbox-{_safe_name(self.replica_id or str(os.getpid()))}.jsonl"
            path = self.spool_dir / name
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._spool, self._spool_path = os.fdopen(fd, "a+", encoding="utf-8"), path
        except OSError:
            log.warning(
                "cannot spool database writes in %s; buffering in memory only", self.spool_dir, exc_info=True
            )
            return
        for other in sorted(self.spool_dir.glob(SPOOL_GLOB)):
            if other != path:
                self._adopt(other)

    def _adopt(self, path: Path) -> None:
        """Take over the pending writes of a spool whose process has stopped."""
        try:
            with open(path, "r+", encoding="utf-8") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # its process is alive
                if not path.exists() or os.fstat(f.fileno()).st_ino != path.stat().st_ino:
                    return  # someone adopted and removed it meanwhile
                ops = _pending(f.read().splitlines())
                renumber: dict[int, int] = {}
                for method, args, pid in ops:
                    for key in _ID_ARGS:
                        if isinstance(args.get(key), int) and args[key] < 0:
                            args[key] = renumber.get(args[key], args[key])
                    new_pid = self._enqueue(method, args)
                    if pid is not None:
                        renumber[pid] = new_pid
                path.unlink()
            if ops:
                log.warning(
                    "replaying %d database writes left by a stopped process (%s)", len(ops), path.name
                )
        except (OSError, ValueError):
            log.warning("could not read the spool %s; leaving it", path, exc_info=True)

    def _append(self, line: dict[str, Any]) -> None:
        if self._spool is None:
            return
        try:
            self._spool.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._spool.flush()
        except OSError:
            log.warning("cannot write the spool %s", self._spool_path, exc_info=True)

    def _truncate(self) -> None:
        if self._spool is not None and not self._queue:
            with contextlib.suppress(OSError):
                self._spool.truncate(0)

    def _close_spool(self, *, remove: bool) -> None:
        if self._spool is None:
            return
        if remove and self._spool_path is not None:
            with contextlib.suppress(OSError):
                self._spool_path.unlink()
        self._spool.close()  # releases the lock: the next start adopts what is left
        self._spool = None


def _pending(lines: list[str]) -> list[tuple[str, dict[str, Any], int | None]]:
    """The writes of a spool not yet done, with ids already written substituted in."""
    ops: dict[int, tuple[str, dict[str, Any], int | None]] = {}
    real: dict[int, int | None] = {}
    for raw in lines:
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # a line cut short by a crash: it was never acknowledged to anyone
        if "done" in line:
            done = ops.pop(line["done"], None)
            if done is not None and done[2] is not None:
                real[done[2]] = line.get("id")
        else:
            ops[line["seq"]] = (line["op"], line["args"], line.get("pid"))
    out = []
    for method, args, pid in ops.values():
        for key in _ID_ARGS:
            if isinstance(args.get(key), int) and args[key] in real:
                args[key] = real[args[key]]
        out.append((method, args, pid))
    return out


def _encode(kwargs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if isinstance(v, datetime):
            v = v.isoformat()
        elif isinstance(v, Decision):
            v = v.with_votes()  # the votes too: the routing details show them later
        out[k] = v
    return out


def _decode(args: dict[str, Any]) -> dict[str, Any]:
    out = dict(args)
    if isinstance(out.get("at"), str):
        out["at"] = datetime.fromisoformat(out["at"])
    if isinstance(out.get("decision"), dict):
        out["decision"] = Decision.model_validate(out["decision"])
    return out


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]
