"""ChatService: the one entry point adapters call.

route → generate → store, with the user kept informed at every step. A database outage costs no
answer and no record: the store buffers writes until the database is back (core/store/outbox.py);
what can still fail here (a read, a bug) is logged and the answer goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from core.chat import AnswerStats, FinalAnswer, IncomingMessage, Reply, TracksMessages
from core.config import Settings
from core.errors import GenerationError, MetaRouterError, StreamFailed
from core.generation import Done, Fallback, Generator, Pulling, Queued, Retrying, Started, Token
from core.inventory import InventoryService
from core.privacy import local_only_for
from core.prompt_guard import PromptGuard
from core.ratelimit import MemoryRateLimiter, RateLimiter
from core.routing.chain import RoutingChain
from core.routing.memory import DecisionMemory
from core.store import Store
from core.types import Decision, Inventory, RouteRequest, Turn, normalise_model_name

log = logging.getLogger(__name__)
T = TypeVar("T")

TRIMMED_NOTE = "Older messages of this thread were left out to fit the model's context."
EMPTY_QUESTION = (
    "I didn't find a question in that message. Mention me with what you'd like to know, "
    "for example: “@MetaRouter how do I reverse a list in Python?”"
)
# Control characters other than tab and newline; PostgreSQL refuses NUL in text outright.
_CONTROL = dict.fromkeys([*range(0, 9), 11, 12, *range(14, 32), 127])
_SURROGATE = re.compile("[\ud800-\udfff]")


def too_fast(wait_s: float) -> str:
    return f"You're asking faster than I can answer; try again in {max(1, math.ceil(wait_s))} s."


def clean_text(text: str) -> str:
    """Text any model, database and platform accepts: lone surrogates (invalid Unicode from a broken
    client) become U+FFFD and control characters go."""
    return _SURROGATE.sub("\ufffd", text).translate(_CONTROL)


class ChatService:
    def __init__(
        self,
        settings: Settings,
        *,
        inventory: InventoryService,
        chain: RoutingChain,
        generator: Generator,
        store: Store | None,
        limiter: RateLimiter | None = None,
        memory: DecisionMemory | None = None,
    ) -> None:
        self.settings = settings
        self.limiter: RateLimiter = limiter or MemoryRateLimiter()
        self.inventory = inventory
        self.chain = chain
        self.generator = generator
        self.store = store
        self.memory = memory
        self.prompt_guard = PromptGuard(settings.system_prompt)

    async def route(self, req: RouteRequest) -> Decision:
        """The decision for a question, without generating anything (`/route`, `metarouter route`)."""
        # `/route` and the CLI come here directly: invalid Unicode must not reach the cache key's hash
        history = tuple(t.model_copy(update={"content": clean_text(t.content)}) for t in req.history)
        req = req.model_copy(update={"query": clean_text(req.query), "history": history})
        if not req.local_only and local_only_for(self.settings, req.channel_id):
            req = req.model_copy(update={"local_only": True})
        inv = await self.inventory.snapshot()
        return await self.chain.route(req, inv)

    async def models(self) -> Inventory:
        return await self.inventory.snapshot(refresh=True)

    async def pull(self, model: str) -> AsyncIterator[Pulling]:
        """An admin's pull, with progress. Admin checks are the adapter's: only it knows who asks."""
        async for progress in self.generator.pull(model):
            yield progress
        self.inventory.invalidate()

    async def remove(self, model: str) -> list[str]:
        """Removes a model from every host that has it; returns those hosts."""
        hosts = await self.generator.remove(model)
        self.inventory.invalidate()
        return hosts

    async def handle(
        self, msg: IncomingMessage, reply: Reply, *, model: str | None = None
    ) -> FinalAnswer | None:
        """Answer one message through `reply`. Returns None when the message was already handled.

        `model` re-runs the question on a model the user picked (the "try another model" buttons).
        """
        for key in (msg.event_key, *msg.extra_keys):
            if key is not None and not await self._claim(key):
                log.info("duplicate delivery %s ignored", key)
                return None
        msg, notes = self._sanitise(msg)
        refusal = await self._refusal(msg)
        if refusal is not None:
            answer = FinalAnswer(text="", decision=None, error=refusal)
            await reply.finish(answer)
            return answer
        await reply.status("Routing…")
        req = RouteRequest(
            query=msg.text,
            history=msg.history,
            channel_id=msg.channel_id,
            local_only=msg.local_only or local_only_for(self.settings, msg.channel_id, msg.workspace_id),
        )
        try:
            decision = await self.route(req)
        except MetaRouterError as exc:  # only an empty inventory gets here
            answer = FinalAnswer(text="", decision=None, error=exc.user_message)
            await reply.finish(answer)
            return answer
        if model is not None and normalise_model_name(model) != decision.recommended_model:
            decision = _user_choice(decision, normalise_model_name(model))

        request_id = await self._record_request(msg, decision)
        await reply.status(f"Routing… {decision.recommended_model} chosen")
        answer = await self._generate(msg, decision, reply, request_id, notes)
        if request_id is not None and self.memory is not None:
            # after the answer: a precedent for later questions is no reason to keep this one waiting
            await self._safe(self.memory.remember(request_id, msg.text, private=req.local_only))
        return answer

    def _sanitise(self, msg: IncomingMessage) -> tuple[IncomingMessage, list[str]]:
        """The message as the core may safely handle it, and what the user should be told about that."""
        notes: list[str] = []
        text = clean_text(msg.text).strip()
        limit = self.settings.max_question_chars
        if len(text) > limit:
            notes.append(f"Your message was {len(text):,} characters long; I read only the first {limit:,}.")
            text = text[:limit]
        history = tuple(t.model_copy(update={"content": clean_text(t.content)[:limit]}) for t in msg.history)
        if msg.attachments and any(ch.isalnum() for ch in text):
            names = _names(msg.attachments)
            notes.append(f"I can't read attachments ({names}); I answered from the text only.")
        return dataclasses.replace(msg, text=text, history=history), notes

    async def _refusal(self, msg: IncomingMessage) -> str | None:
        """Why this message gets no answer at all: nothing to answer, or asked too fast."""
        if not any(ch.isalnum() for ch in msg.text):
            if msg.attachments:
                return (
                    f"I can't read attachments ({_names(msg.attachments)}). "
                    "Paste the part you want me to look at into a message and mention me again."
                )
            return EMPTY_QUESTION  # empty mention, whitespace, emoji or punctuation only
        s = self.settings
        for key, rate in (
            (f"user:{msg.platform}:{msg.user_id}", s.user_rate_per_minute),
            (f"channel:{msg.platform}:{msg.channel_id}", s.channel_rate_per_minute),
        ):
            try:
                wait = await self.limiter.take(key, rate)
            except Exception:  # a shared limiter that is down must not silence the bot
                log.warning("rate limiter unavailable; not limiting", exc_info=True)
                return None
            if wait > 0:
                return too_fast(wait)
        return None

    async def _generate(
        self,
        msg: IncomingMessage,
        decision: Decision,
        reply: Reply,
        request_id: int | None,
        notes: list[str] | None = None,
    ) -> FinalAnswer:
        turns = [*msg.history, Turn(role="user", content=msg.text, author=msg.author_name)]
        text = ""
        above = ""  # what the user sees above this attempt: answers that broke off, each with a note
        broke: Retrying | None = None
        guard = self.prompt_guard.stream()  # a model asked to recite its instructions must not show them
        notes = list(notes or [])
        answer_id: int | None = None
        stats: AnswerStats | None = None
        error: str | None = None
        # messages of this answer recorded so far, when the reply can tell
        tracked = reply if isinstance(reply, TracksMessages) else None
        recorded: set[str] = set()
        try:
            async for event in self.generator.stream(decision, turns):
                match event:
                    case Queued(position=pos):
                        await reply.status(f"Waiting for the model server (position {pos} in the queue)…")
                    case Pulling(model=model, percent=pct, status=st):
                        shown = f"{pct:.0f}%" if pct is not None else st
                        await reply.status(f"Pulling {model} {shown}")
                    case Fallback(from_model=a, to_model=b, reason=why):
                        notes.append(f"{a} was unavailable ({why}); answered by {b}.")
                        await reply.status(f"{a} unavailable, trying {b}…")
                    case Started(model=model, host=host, trimmed=trimmed):
                        if trimmed and TRIMMED_NOTE not in notes:
                            notes.append(TRIMMED_NOTE)
                        if broke is not None:
                            above += (
                                text
                                + f"\n\n_({broke.host} stopped mid-answer; answering again on {host}…)_\n\n"
                            )
                            notes.append(
                                f"{broke.host} failed mid-answer ({broke.reason}); answered again on {host}"
                                + (f" by {model}." if model != broke.model else ".")
                            )
                            text, broke = "", None
                        if request_id is not None:
                            answer_id = await self._safe(self.store.start_answer(request_id, model, host))
                        await self._record_messages(answer_id, msg, tracked, recorded)
                    case Token(text=piece):
                        text += piece
                        await reply.stream(guard.show(above + text))
                        await self._record_messages(answer_id, msg, tracked, recorded)
                    case Retrying():
                        # the broken-off answer stays, recorded as incomplete; the next one goes below it
                        broke = event
                        await reply.status(f"{event.host} stopped mid-answer; answering again…")
                        await self._finish_record(answer_id, "incomplete", event.reason, None, text, notes)
                        answer_id, recorded = None, set()
                    case Done():
                        stats = AnswerStats(
                            model=event.model,
                            host=event.host,
                            prompt_tokens=event.prompt_tokens,
                            completion_tokens=event.completion_tokens,
                            total_ms=event.total_ms,
                            tokens_per_s=event.tokens_per_s,
                        )
        except GenerationError as exc:
            error = exc.user_message
        except Exception:  # a bug must cost one answer, not the bot
            log.exception("generation failed")
            error = GenerationError.user_message

        text = above + text if text else above.rstrip()  # answers that broke off stay in view
        incomplete = error is not None and bool(text)
        answer = FinalAnswer(
            text=guard.show(text, final=True),
            decision=decision,
            answer_id=answer_id,
            stats=stats,
            error=error,
            incomplete=incomplete or isinstance(error, StreamFailed),
            notes=tuple(notes),
        )
        message_ids = await reply.finish(answer)
        if answer_id is not None and self.store is not None:
            status = "ok" if error is None else ("incomplete" if text else "error")
            await self._finish_record(answer_id, status, error, stats, text[len(above) :], notes)
            for mid in message_ids:
                await self._safe(self.store.add_answer_message(answer_id, msg.platform, msg.channel_id, mid))
            self.inventory.invalidate()  # requests / last used changed
        return answer

    async def _finish_record(
        self,
        answer_id: int | None,
        status: str,
        error: str | None,
        stats: AnswerStats | None,
        text: str,
        notes: list[str],
    ) -> None:
        if answer_id is None or self.store is None:
            return
        await self._safe(
            self.store.finish_answer(
                answer_id,
                status=status,
                error=error,
                prompt_tokens=stats.prompt_tokens if stats else 0,
                completion_tokens=stats.completion_tokens if stats else 0,
                total_ms=stats.total_ms if stats else 0.0,
                chars=len(text),
                trimmed=TRIMMED_NOTE in notes,
            )
        )

    async def _record_messages(
        self, answer_id: int | None, msg: IncomingMessage, reply: TracksMessages | None, recorded: set[str]
    ) -> None:
        """Records each message of an answer as soon as it is posted: if this process stops mid-answer,
        the next start finds them and marks them interrupted (core/recovery.py)."""
        if (
            answer_id is None
            or self.store is None
            or reply is None
            or len(recorded) == len(reply.message_ids)
        ):
            return
        for mid in reply.message_ids:
            if mid not in recorded:
                recorded.add(mid)
                await self._safe(self.store.add_answer_message(answer_id, msg.platform, msg.channel_id, mid))

    async def rate(
        self, *, platform: str, channel_id: str, message_id: str, user_id: str, reaction: str, added: bool
    ) -> bool:
        """A reaction on an answer becomes (or withdraws) that user's rating. False when ignored."""
        rating = self.settings.reactions.get(reaction.strip(":"))
        if rating is None or self.store is None:
            return False
        answer_id = await self._safe(self.store.answer_for_message(platform, channel_id, message_id))
        if answer_id is None:
            return False
        if added:
            await self._safe(self.store.set_feedback(answer_id, user_id, rating, reaction))
        else:
            await self._safe(self.store.remove_feedback(answer_id, user_id, reaction))
        self.inventory.invalidate()
        return True

    async def rate_answer(self, answer_id: int, user_id: str, rating: int, reaction: str) -> None:
        """A rating given directly (the console's /good and /bad)."""
        if self.store is not None:
            await self._safe(self.store.set_feedback(answer_id, user_id, rating, reaction))
            self.inventory.invalidate()

    async def decision_for_answer(self, answer_id: int) -> Decision | None:
        """The decision behind an earlier answer; None when it is unknown or the database is down."""
        if self.store is None:
            return None
        return await self._safe(self.store.answer_decision(answer_id))

    async def _claim(self, key: str) -> bool:
        if self.store is None:
            return True
        try:
            return await self.store.claim_event(key)
        except Exception:
            # Without the database a redelivery may be answered twice; silence would be worse.
            log.warning("storage unavailable; cannot deduplicate %s", key, exc_info=True)
            return True

    async def _record_request(self, msg: IncomingMessage, decision: Decision) -> int | None:
        if self.store is None:
            return None
        store = self.store
        if not self.settings.store_question_text:
            # the router's reasoning may quote or paraphrase the question ("asks how to rotate X")
            decision = decision.model_copy(update={"reasoning": "(not stored: store_question_text is off)"})
        conv = await self._safe(
            store.conversation(msg.platform, msg.channel_id, msg.thread_id, msg.workspace_id)
        )
        return await self._safe(
            store.record_request(
                platform=msg.platform,
                channel_id=msg.channel_id,
                user_id=msg.user_id,
                query=msg.text,
                decision=decision,
                conversation_id=conv,
                message_id=msg.message_id,
            )
        )

    async def _safe(self, op: Awaitable[T]) -> T | None:
        try:
            return await op
        except Exception:
            log.warning("storage unavailable; continuing without it", exc_info=True)
            return None


def _names(files: tuple[str, ...]) -> str:
    shown = [clean_text(f)[:60] for f in files[:3]]
    return ", ".join(shown) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def _user_choice(decision: Decision, model: str) -> Decision:
    """The router's decision overridden by the person asking; kept as such for learning."""
    others = [m for m in [decision.recommended_model, *decision.alternatives] if m != model]
    return decision.model_copy(
        update={
            "recommended_model": model,
            "alternatives": others[:3],
            "reasoning": (
                f"Re-run on {model} at the user's request (router chose {decision.recommended_model})."
            ),
            "download_if_needed": True,
        }
    )
