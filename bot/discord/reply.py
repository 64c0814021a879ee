"""One answer on Discord: the core's `Reply`, over the shared streaming sink.

Every part of an answer replies to the part before it, and the first to the question, so a reply
chain followed back from any later message holds the whole answer and the question.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import discord

from bot.common.streaming import DISCORD_LIMITS, Limits, MessageGone, StreamingSink
from bot.discord import render
from bot.discord.views import answer_view
from core.chat import FinalAnswer


class ChannelPacer:
    """Spaces streaming edits in a channel across every answer in it (Discord limits per channel).

    An edit takes the next free slot, so every answer gets its turn. Placeholders, settled parts and
    the final write of an answer skip the queue: they are the writes people wait for.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next: dict[int, float] = {}

    async def wait(self, channel_id: int) -> None:
        now = time.monotonic()
        slot = max(now, self._next.get(channel_id, 0.0))
        self._next[channel_id] = slot + self.interval_s
        await asyncio.sleep(slot - now)


class DiscordTransport:
    """Posts and edits the messages of one answer in one channel (bot.common.streaming.Transport)."""

    def __init__(self, channel: discord.abc.Messageable, *, reply_to: discord.Message | None) -> None:
        self.channel = channel
        self.reply_to = reply_to
        self._first: discord.Message | None = None
        self._last: discord.Message | None = None
        self._sent: dict[str, discord.Message] = {}

    async def post(self, text: str, extra: Any = None) -> str:
        previous = self._last or self.reply_to
        kwargs = _final_kwargs(extra)
        message = await self.channel.send(
            text,
            reference=previous.to_reference(fail_if_not_exists=False) if previous else None,
            # only the first part pings the person asking; later parts and model output ping no one
            allowed_mentions=render.ANSWER_MENTIONS if self._last is None else render.NO_MENTIONS,
            **kwargs,
        )
        self._first = self._first or message
        self._last = message
        self._sent[str(message.id)] = message
        return str(message.id)

    async def edit(self, message_id: str, text: str, extra: Any = None) -> None:
        message = self._sent[message_id]
        try:
            # the same rule as when it was posted, so an edit neither adds a ping nor drops the reply's
            mentions = render.ANSWER_MENTIONS if message is self._first else render.NO_MENTIONS
            await message.edit(content=text, allowed_mentions=mentions, **_final_kwargs(extra))
        except discord.NotFound as exc:
            raise MessageGone(str(exc)) from exc

    async def delete_all(self) -> None:
        for message in self._sent.values():
            await message.delete()
        self._sent.clear()


def _final_kwargs(extra: Any) -> dict[str, Any]:
    if not isinstance(extra, render.Final):
        return {}
    kwargs: dict[str, Any] = {}
    if extra.embed is not None:
        kwargs["embed"] = extra.embed
    if extra.view is not None:
        kwargs["view"] = extra.view
    return kwargs


class DiscordReply:
    """The core's `Reply` for one Discord answer: placeholder → status → growing answer → final."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        reply_to: discord.Message | None,
        pacer: ChannelPacer,
        limits: Limits = DISCORD_LIMITS,
    ) -> None:
        self.transport = DiscordTransport(channel, reply_to=reply_to)
        channel_id: int = getattr(channel, "id", 0)
        self.sink = StreamingSink(self.transport, limits, pace=lambda: pacer.wait(channel_id))
        self.finished = False
        self.text = ""  # the answer so far

    @property
    def message_ids(self) -> list[str]:
        """Every message posted for this answer so far (core.chat.TracksMessages)."""
        return list(self.sink.message_ids)

    async def status(self, text: str) -> None:
        await self.sink.status(render.status_text(text))

    async def stream(self, text: str) -> None:
        self.text = text
        await self.sink.update(text)

    async def finish(self, answer: FinalAnswer) -> list[str]:
        self.finished = True
        embed = render.decision_embed(answer) if answer.decision is not None else None
        view = (
            answer_view(answer.answer_id, answer.decision)
            if answer.decision is not None and answer.answer_id is not None
            else None
        )
        return await self.sink.finish(render.answer_text(answer), extra=render.Final(embed, view))

    async def withdraw(self) -> None:
        """Deletes whatever this reply posted (a placeholder that turned out not to be needed)."""
        await self.transport.delete_all()
