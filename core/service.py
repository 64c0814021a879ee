"""ChatService: the one entry point adapters call.

route → generate → store, with the user kept informed at every step. Storage is best effort here:
a database hiccup costs a record, never an answer (issue 6 adds buffering so nothing is lost).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

from core.chat import AnswerStats, FinalAnswer, IncomingMessage, Reply
from core.config import Settings
from core.errors import GenerationError, MetaRouterError, StreamFailed
from core.generation import Done, Fallback, Generator, Pulling, Queued, Started, Token
from core.inventory import InventoryService
from core.routing.chain import RoutingChain
from core.store import Store
from core.types import Decision, Inventory, RouteRequest, Turn

log = logging.getLogger(__name__)
T = TypeVar("T")

TRIMMED_NOTE = "Older messages of this thread were left out to fit the model's context."


class ChatService:
    def __init__(
        self,
        settings: Settings,
        *,
        inventory: InventoryService,
        chain: RoutingChain,
        generator: Generator,
        store: Store | None,
    ) -> None:
        self.settings = settings
        self.inventory = inventory
        self.chain = chain
        self.generator = generator
        self.store = store

    async def route(self, req: RouteRequest) -> Decision:
        """The decision for a question, without generating anything (`/route`, `metarouter route`)."""
        inv = await self.inventory.snapshot()
        return await self.chain.route(req, inv)

    async def models(self) -> Inventory:
        return await self.inventory.snapshot(refresh=True)

    async def handle(self, msg: IncomingMessage, reply: Reply) -> FinalAnswer | None:
        """Answer one message through `reply`. Returns None when the message was already handled."""
        await reply.status("Routing…")
        req = RouteRequest(
            query=msg.text, history=msg.history, channel_id=msg.channel_id, local_only=msg.local_only
        )
        try:
            decision = await self.route(req)
        except MetaRouterError as exc:  # only an empty inventory gets here
            answer = FinalAnswer(text="", decision=None, error=exc.user_message)
            await reply.finish(answer)
            return answer

        request_id, duplicate = await self._record_request(msg, decision)
        if duplicate:
            log.info("duplicate delivery %s ignored", msg.event_key)
            return None
        await reply.status(f"Routing… {decision.recommended_model} chosen")
        return await self._generate(msg, decision, reply, request_id)

    async def _generate(
        self, msg: IncomingMessage, decision: Decision, reply: Reply, request_id: int | None
    ) -> FinalAnswer:
        turns = [*msg.history, Turn(role="user", content=msg.text, author=msg.author_name)]
        text = ""
        notes: list[str] = []
        answer_id: int | None = None
        stats: AnswerStats | None = None
        error: str | None = None
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
                        if trimmed:
                            notes.append(TRIMMED_NOTE)
                        if request_id is not None:
                            answer_id = await self._safe(self.store.start_answer(request_id, model, host))
                    case Token(text=piece):
                        text += piece
                        await reply.stream(text)
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

        incomplete = error is not None and bool(text)
        answer = FinalAnswer(
            text=text,
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
            for mid in message_ids:
                await self._safe(self.store.add_answer_message(answer_id, msg.platform, msg.channel_id, mid))
            self.inventory.invalidate()  # requests / last used changed
        return answer

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

    async def _record_request(self, msg: IncomingMessage, decision: Decision) -> tuple[int | None, bool]:
        """(request id or None when storage is unavailable, whether this is a duplicate delivery)."""
        if self.store is None:
            return None, False
        store = self.store
        conv = await self._safe(store.conversation(msg.platform, msg.channel_id, msg.thread_id, msg.workspace_id))
        try:
            rid = await store.record_request(
                platform=msg.platform,
                channel_id=msg.channel_id,
                user_id=msg.user_id,
                query=msg.text,
                decision=decision,
                conversation_id=conv,
                event_key=msg.event_key,
            )
        except Exception:
            log.warning("storage unavailable; answering without recording", exc_info=True)
            return None, False
        return rid, rid is None

    async def _safe(self, op: Awaitable[T]) -> T | None:
        try:
            return await op
        except Exception:
            log.warning("storage unavailable; continuing without it", exc_info=True)
            return None
