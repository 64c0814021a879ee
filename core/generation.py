"""Answers from local Ollama models: host choice, pulls with progress, per-host queues, streaming.

`Generator.stream()` walks the decision's candidates (the recommended model, then the alternatives)
and yields `GenEvent`s. A candidate that fails before its first token hands over to the next one
(`Fallback`). A stream that breaks after tokens were shown is answered again from the start: the
same model on another host that has it, else the next candidate (`Retrying`, then a new `Started`);
only when none can take over does `StreamFailed` end it, and the caller keeps the partial answer.
Every failure leaves as a `GenerationError`, never as a raw library exception.

Timeouts are idle timeouts: a model that streams slowly but steadily never times out; a stream or a
pull that sends nothing for `stream_idle_timeout_s` / `pull_idle_timeout_s` does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import ollama

from core.config import Settings
from core.errors import (
    DiskBudgetExceeded,
    GenerationError,
    ModelUnavailable,
    OllamaUnavailable,
    StreamFailed,
)
from core.inventory import InventoryService
from core.types import Decision, Inventory, ModelInfo, Turn, normalise_model_name

log = logging.getLogger(__name__)

# Share of the context window kept free for the answer.
ANSWER_RESERVE = 0.25
# Rough tokens per message for role markers and template glue.
MESSAGE_OVERHEAD_TOKENS = 4
# Ollama reports a few milliseconds of load_duration even for a model already in memory.
LOAD_EVENT_MS = 250.0

StoreEvents = Callable[[str, str, str, str], Awaitable[None]]  # (model, host, kind, detail)
T = TypeVar("T")


# --- events -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Queued:
    """Waiting for a free slot on `host`; `position` 1 means next in line."""

    position: int
    host: str


@dataclass(frozen=True)
class Pulling:
    model: str
    status: str
    completed: int | None = None
    total: int | None = None
    percent: float | None = None


@dataclass(frozen=True)
class Started:
    model: str
    host: str
    trimmed: bool  # older history was left out (or the question cut) to fit the context window


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Done:
    model: str
    host: str
    prompt_tokens: int
    completion_tokens: int
    load_ms: float
    total_ms: float
    tokens_per_s: float | None


@dataclass(frozen=True)
class Fallback:
    from_model: str
    to_model: str
    reason: str


@dataclass(frozen=True)
class Retrying:
    """The stream of `model` on `host` broke after it had started; the tokens so far are all there
    will be of it. The answer starts again (a new `Started`) elsewhere, if anywhere can take it."""

    model: str
    host: str
    reason: str


GenEvent = Queued | Pulling | Started | Token | Done | Fallback | Retrying

# Answers started again after a stream broke, at most: a fault that follows the question from host to
# host must not keep the user waiting forever.
MAX_TAKEOVERS = 2


# --- prompt assembly ------------------------------------------------------------------------------
def _tokens(text: str) -> int:
    return len(text) // 4 + MESSAGE_OVERHEAD_TOKENS


def build_messages(
    turns: Sequence[Turn], *, system_prompt: str | None, context_tokens: int
) -> tuple[list[dict[str, str]], bool]:
    """Ollama chat messages for `turns` (oldest first, the question last) and whether any were trimmed.

    The oldest turns go first when the conversation does not fit in the context window minus room
    for the answer; the last turn always stays, cut in the middle if it alone is too long.
    """
    if not turns:
        raise ValueError("no message to answer")
    rendered = [
        {
            "role": t.role,
            "content": f"{t.author}: {t.content}" if t.role == "user" and t.author else t.content,
        }
        for t in turns
    ]
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    room = int(context_tokens * (1 - ANSWER_RESERVE)) - sum(_tokens(m["content"]) for m in system)
    room = max(room, 64)
    latest, history = rendered[-1], rendered[:-1]
    trimmed = False
    if _tokens(latest["content"]) > room:
        keep = max((room - MESSAGE_OVERHEAD_TOKENS) * 4, 32)
        text = latest["content"]
        latest = {**latest, "content": text[: keep // 2] + "\n[…]\n" + text[-(keep // 2) :]}
        return [*system, latest], True
    room -= _tokens(latest["content"])
    kept: list[dict[str, str]] = []
    for m in reversed(history):
        cost = _tokens(m["content"])
        if cost > room:
            trimmed = True
            break
        kept.append(m)
        room -= cost
    return [*system, *reversed(kept), latest], trimmed


# --- per-host queues ------------------------------------------------------------------------------
class _Ticket:
    def __init__(self) -> None:
        self.granted = False
        self.left = False
        self._changed = asyncio.Event()

    def poke(self) -> None:
        self._changed.set()

    async def changed(self) -> None:
        await self._changed.wait()
        self._changed.clear()


class _HostQueue:
    """At most `limit` requests at a host; the rest wait in order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.waiting: list[_Ticket] = []

    def __len__(self) -> int:
        return self.active + len(self.waiting)

    def join(self) -> _Ticket:
        t = _Ticket()
        if self.active < self.limit and not self.waiting:
            self.active += 1
            t.granted = True
        else:
            self.waiting.append(t)
        return t

    def position(self, t: _Ticket) -> int:
        return self.waiting.index(t) + 1

    def leave(self, t: _Ticket) -> None:
        if t.left:
            return
        t.left = True
        if t.granted:
            self.active -= 1
        else:
            self.waiting.remove(t)
        promoted = []
        while self.waiting and self.active < self.limit:
            nxt = self.waiting.pop(0)
            nxt.granted = True
            self.active += 1
            promoted.append(nxt)
        for w in (*promoted, *self.waiting):  # everyone behind moved up a place
            w.poke()


class _Broken(Exception):
    """A stream that broke after its first token, on `host`."""

    def __init__(self, host: str, reason: str, error: StreamFailed) -> None:
        super().__init__(reason)
        self.host = host
        self.reason = reason
        self.error = error


class _Candidate(Exception):
    """A candidate failed before any token: the next one may answer. `kind` decides the final error."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind  # down | disk | missing | unavailable | error
        self.reason = reason


# Everything the ollama client can raise for a failed request: its own errors, httpx's transport
# errors (a streaming request is not wrapped), the builtin ConnectionError for a refused connection,
# and ValueError for an unparsable line.
_CLIENT_ERRORS = (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError)


def _is_down(exc: BaseException) -> bool:
    # exactly the builtin the client raises for a refused connection, not its subclasses (a reset)
    return type(exc) is ConnectionError or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def _all_down(inv: Inventory) -> bool:
    return bool(inv.hosts) and len(inv.hosts_down) == len(inv.hosts)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ollama.ResponseError):
        return exc.error
    if _is_down(exc):
        return "the Ollama server did not accept the connection"
    return str(exc) or type(exc).__name__


class Generator:
    def __init__(
        self, settings: Settings, inventory: InventoryService, store_events: StoreEvents | None = None
    ) -> None:
        self.settings = settings
        self.inventory = inventory
        self._store_events = store_events
        self._clients: dict[str, ollama.AsyncClient] = {}
        self._queues: dict[str, _HostQueue] = {}

    def _client(self, host: str) -> ollama.AsyncClient:
        if host not in self._clients:
            s = self.settings
            # The read timeout is only a backstop: idle limits are enforced per chunk below.
            backstop = max(s.stream_idle_timeout_s, s.pull_idle_timeout_s) + 5
            timeout = httpx.Timeout(backstop, connect=s.ollama_probe_timeout_s)
            self._clients[host] = ollama.AsyncClient(host=host, timeout=timeout)
        return self._clients[host]

    def _queue(self, host: str) -> _HostQueue:
        return self._queues.setdefault(host, _HostQueue(self.settings.per_host_concurrency))

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()

    async def _event(self, model: str, host: str, kind: str, detail: str) -> None:
        if self._store_events is None:
            return
        try:
            await self._store_events(model, host, kind, detail)
        except Exception:
            log.warning("could not record model event %s for %s", kind, model, exc_info=True)

    @staticmethod
    async def _next(parts: AsyncIterator[T], idle_s: float) -> T:
        async with asyncio.timeout(idle_s):
            return await anext(parts)

    # --- answering ------------------------------------------------------------------------------
    async def stream(
        self, decision: Decision, messages: list[Turn], *, system_prompt: str | None = None
    ) -> AsyncIterator[GenEvent]:
        """Answer `messages` (oldest first, the question last) with the decision's best available model."""
        inv = await self.inventory.snapshot()
        if _all_down(inv):
            inv = await self.inventory.snapshot(refresh=True)  # notice a restarted Ollama at once
            if _all_down(inv):
                raise self._unavailable(inv.hosts)
        system = self.settings.system_prompt if system_prompt is None else system_prompt
        names = [decision.recommended_model, *decision.alternatives]
        candidates = list(dict.fromkeys(normalise_model_name(n) for n in names if n.strip()))
        failures: list[tuple[str, _Candidate]] = []
        broken: list[tuple[str, _Broken]] = []
        for name in candidates:
            if failures:
                prev, why = failures[-1]
                yield Fallback(from_model=prev, to_model=name, reason=why.reason)
            while True:  # again on another host after a broken stream, while one has the model
                try:
                    # a host down shows in the refreshed inventory; one where this model broke is skipped
                    avoid = {b.host for n, b in broken if n == name}
                    async with aclosing(
                        self._attempt(name, inv, decision, messages, system, avoid)
                    ) as events:
                        async for event in events:
                            yield event
                    return
                except _Broken as exc:
                    log.warning("%s", exc.error)
                    broken.append((name, exc))
                    if len(broken) > MAX_TAKEOVERS:
                        raise exc.error from None
                    yield Retrying(model=name, host=exc.host, reason=exc.reason)
                    self.inventory.invalidate()
                    inv = await self.inventory.snapshot()
                except _Candidate as exc:
                    log.info("candidate %s failed: %s", name, exc.reason)
                    failures.append((name, exc))
                    if exc.kind in ("down", "missing"):
                        self.inventory.invalidate()
                        inv = await self.inventory.snapshot()
                    break
        if broken:
            last = broken[-1][1]
            msg = (
                f"{last.error} No other Ollama server or model could take the answer over. "
                "Mention me again to retry."
            )
            raise StreamFailed(msg, user_message=f"{StreamFailed.user_message} {msg}")
        raise self._final_error(failures, inv)

    def _unavailable(self, hosts: Sequence[str]) -> OllamaUnavailable:
        msg = (
            f"No Ollama server answered ({', '.join(hosts)}), so no local model can answer. "
            "Check that Ollama is running and that OLLAMA_HOST or METAROUTER_OLLAMA_HOSTS point at it."
        )
        return OllamaUnavailable(msg, user_message=msg)

    def _final_error(self, failures: list[tuple[str, _Candidate]], inv: Inventory) -> GenerationError:
        if not failures:
            return ModelUnavailable("The routing decision named no model.")
        kinds = {f.kind for _, f in failures}
        if kinds == {"down"} or _all_down(inv):
            return self._unavailable(inv.hosts)
        if "disk" in kinds and kinds <= {"disk", "unavailable"}:
            msg = " ".join(f.reason for _, f in failures if f.kind == "disk")
            return DiskBudgetExceeded(msg, user_message=msg)
        detail = "; ".join(f"{name}: {f.reason}" for name, f in failures)
        msg = f"No model could answer. {detail}."
        return ModelUnavailable(msg, user_message=msg)

    async def _attempt(
        self,
        name: str,
        inv: Inventory,
        decision: Decision,
        turns: list[Turn],
        system: str | None,
        avoid: set[str] | frozenset[str] = frozenset(),
    ) -> AsyncIterator[GenEvent]:
        """One candidate, on the best up host that has it (or pulls it), never on a host in `avoid`."""
        info = inv.get(name)
        up = [h for h in (info.hosts if info else ()) if h not in inv.hosts_down and h not in avoid]
        if up:
            assert info is not None
            host = min(up, key=lambda h: (h not in info.loaded_on, len(self._queue(h))))
        elif info is None:
            raise _Candidate("unavailable", "not a model the inventory knows")
        elif not (self.settings.auto_pull and decision.download_if_needed):
            why = "its Ollama servers failed" if info.hosts else "not pulled on any Ollama server"
            raise _Candidate("unavailable", f"{why}, and downloading is off")
        else:
            host = self._pull_host(inv, info, avoid=avoid)
            async with aclosing(self._pull_stream(name, host)) as progress:
                async for p in progress:
                    yield p
            info = (await self.inventory.snapshot()).get(name) or info
        async with aclosing(self._chat(info, host, turns, system)) as events:
            async for event in events:
                yield event

    def _pull_host(
        self,
        inv: Inventory,
        info: ModelInfo,
        host: str | None = None,
        avoid: set[str] | frozenset[str] = frozenset(),
    ) -> str:
        """The up host with the most disk budget left that can take the model (then the shortest queue)."""
        size = info.size_gb or 0.0
        budget = self.settings.disk_budget_gb
        hosts = [host] if host else [h for h in inv.hosts if h not in inv.hosts_down and h not in avoid]
        if not hosts:
            raise _Candidate("down", "no Ollama server is reachable")
        used = {h: sum(m.size_gb or 0.0 for m in inv.models if h in m.hosts) for h in hosts}
        fits = [h for h in hosts if used[h] + size <= budget]
        if not fits:
            h = min(hosts, key=lambda h: used[h])
            raise _Candidate(
                "disk",
                f"Pulling {info.name} ({size:.1f} GB) would exceed the disk budget of {budget:g} GB: "
                f"local models already use {used[h]:.1f} GB on {h}. Remove a model or raise "
                "METAROUTER_DISK_BUDGET_GB.",
            )
        return min(fits, key=lambda h: (used[h], len(self._queue(h))))

    async def _pull_stream(self, name: str, host: str) -> AsyncIterator[Pulling]:
        client = self._client(host)
        idle = self.settings.pull_idle_timeout_s
        log.info("pulling %s on %s", name, host)
        try:
            async with aclosing(await client.pull(name, stream=True)) as parts:
                while True:
                    try:
                        part = await self._next(parts, idle)
                    except StopAsyncIteration:
                        break
                    total, completed = part.total, part.completed
                    percent = completed * 100.0 / total if total and completed is not None else None
                    yield Pulling(name, part.status or "", completed, total, percent)
        except TimeoutError:
            reason = f"the pull sent nothing for {idle:g} s"
            await self._event(name, host, "pull_failed", reason)
            raise _Candidate("error", f"pull failed: {reason}") from None
        except _CLIENT_ERRORS as exc:
            reason = _describe(exc)
            await self._event(name, host, "pull_failed", reason)
            raise _Candidate("down" if _is_down(exc) else "error", f"pull failed: {reason}") from None
        await self._event(name, host, "pull", "pulled")
        self.inventory.invalidate()

    async def _chat(
        self, info: ModelInfo, host: str, turns: list[Turn], system: str | None
    ) -> AsyncIterator[GenEvent]:
        name = info.name
        # Ollama sizes its KV cache by num_ctx, so ask for no more than the configured window.
        ctx = min(
            info.context_length or self.settings.default_context_tokens, self.settings.default_context_tokens
        )
        payload, trimmed = build_messages(turns, system_prompt=system, context_tokens=ctx)
        queue = self._queue(host)
        ticket = queue.join()
        try:
            shown = None
            while not ticket.granted:
                pos = queue.position(ticket)
                if pos != shown:
                    yield Queued(position=pos, host=host)
                    shown = pos
                await ticket.changed()
            async with aclosing(self._chat_stream(name, host, payload, ctx, trimmed)) as events:
                async for event in events:
                    yield event
        finally:
            queue.leave(ticket)

    async def _chat_stream(
        self, name: str, host: str, payload: list[dict[str, str]], ctx: int, trimmed: bool
    ) -> AsyncIterator[GenEvent]:
        idle = self.settings.stream_idle_timeout_s
        started = time.monotonic()
        first = True
        count = 0
        final: Any = None
        try:
            parts_iter = await self._client(host).chat(
                model=name, messages=payload, stream=True, options={"num_ctx": ctx}
            )
            async with aclosing(parts_iter) as parts:
                while True:
                    try:
                        part = await self._next(parts, idle)
                    except StopAsyncIteration:
                        break
                    if first:
                        # only once Ollama streams, so a model that fails at once is never "started"
                        first = False
                        yield Started(model=name, host=host, trimmed=trimmed)
                    piece = part.message.content if part.message else None
                    if piece:
                        count += 1
                        yield Token(piece)
                    if part.done:
                        final = part
                        break
        except (TimeoutError, *_CLIENT_ERRORS) as exc:
            reason = f"no output for {idle:g} s" if isinstance(exc, TimeoutError) else _describe(exc)
            if count:
                msg = f"{name} on {host} stopped after {count} chunks: {reason}."
                raise _Broken(host, reason, StreamFailed(msg)) from None
            status = getattr(exc, "status_code", None)
            kind = "down" if _is_down(exc) else "missing" if status == 404 else "error"
            raise _Candidate(kind, reason) from None
        if first:
            yield Started(model=name, host=host, trimmed=trimmed)
        done = self._done(name, host, final, count, started)
        if done.load_ms >= LOAD_EVENT_MS:
            await self._event(name, host, "load", f"loaded in {done.load_ms:.0f} ms")
        yield done

    @staticmethod
    def _done(name: str, host: str, final: Any, count: int, started: float) -> Done:
        wall_ms = (time.monotonic() - started) * 1000
        if final is None:  # the stream ended without a summary: measure it ourselves
            return Done(name, host, 0, count, 0.0, wall_ms, count / (wall_ms / 1000) if wall_ms else None)
        evals, eval_ns = final.eval_count, final.eval_duration
        return Done(
            model=name,
            host=host,
            prompt_tokens=final.prompt_eval_count or 0,
            completion_tokens=evals if evals is not None else count,
            load_ms=(final.load_duration or 0) / 1e6,
            total_ms=(final.total_duration or 0) / 1e6 or wall_ms,
            tokens_per_s=evals / eval_ns * 1e9 if evals and eval_ns else None,
        )

    # --- administration -------------------------------------------------------------------------
    async def pull(self, model: str, host: str | None = None) -> AsyncIterator[Pulling]:
        """Pull `model` (on `host`, or the host with the most disk budget left), yielding progress."""
        name = normalise_model_name(model)
        inv = await self.inventory.snapshot(refresh=True)
        if _all_down(inv):
            raise self._unavailable(inv.hosts)
        info = inv.get(name) or ModelInfo(
            name=name,
            local=False,
            hosts=(),
            loaded_on=(),
            size_gb=None,
            parameters_b=None,
            context_length=None,
            specializations=(),
            scores={},
            catalogued=False,
        )
        try:
            target = self._pull_host(inv, info, host.rstrip("/") if host else None)
            async with aclosing(self._pull_stream(name, target)) as progress:
                async for p in progress:
                    yield p
        except _Candidate as exc:
            if exc.kind == "down":
                raise self._unavailable(inv.hosts) from None
            if exc.kind == "disk":
                raise DiskBudgetExceeded(exc.reason, user_message=exc.reason) from None
            msg = f"Could not pull {name}: {exc.reason.removeprefix('pull failed: ')}"
            raise ModelUnavailable(msg, user_message=msg) from None

    async def remove(self, model: str, host: str | None = None) -> list[str]:
        """Delete `model` from `host` (or from every host that has it); returns the hosts it left."""
        name = normalise_model_name(model)
        inv = await self.inventory.snapshot(refresh=True)
        info = inv.get(name)
        hosts = [host.rstrip("/")] if host else list(info.hosts if info else ())
        if not hosts:
            raise ModelUnavailable(f"{name} is not present on any Ollama server.")
        removed: list[str] = []
        errors: list[str] = []
        for h in hosts:
            try:
                await self._client(h).delete(name)
            except _CLIENT_ERRORS as exc:
                errors.append(f"{h}: {_describe(exc)}")
                continue
            removed.append(h)
            await self._event(name, h, "remove", "removed")
        self.inventory.invalidate()
        if not removed:
            msg = f"Could not remove {name}: {'; '.join(errors)}"
            raise ModelUnavailable(msg, user_message=msg)
        return removed
