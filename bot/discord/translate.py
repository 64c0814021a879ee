"""discord.py objects → the core's types: who asked what, in which conversation, and ratings.

The conversation of a message is its reply chain (references followed back, fetched when not in
the cache) and, inside a thread, the thread's earlier messages and its starter message. The bot's
own messages are assistant turns; people's are user turns carrying their display names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import discord

from bot.discord.render import RELAY_FOOTER
from core.chat import IncomingMessage
from core.types import Turn

log = logging.getLogger(__name__)

_USER = re.compile(r"<@!?(\d+)>")
_ROLE = re.compile(r"<@&(\d+)>")
_CHANNEL = re.compile(r"<#(\d+)>")
_VARIATION = "\ufe0f"  # ❤ and ❤️ are the same reaction


def addressed(message: discord.Message, me: discord.abc.User) -> bool:
    """A person's message that mentions the bot, or any person's message in a DM."""
    if message.author.bot or message.author.id == me.id:
        return False  # other bots are never answered: two bots would answer each other forever
    if message.guild is None:
        return True
    return any(u.id == me.id for u in message.mentions)


def plain_text(message: discord.Message, me: discord.abc.User) -> str:
    """The text a person wrote, with the bot's mention removed and other mentions as names."""
    names = {u.id: u.display_name for u in message.mentions}
    roles = {r.id: r.name for r in message.role_mentions}
    guild = message.guild

    def user(m: re.Match[str]) -> str:
        uid = int(m.group(1))
        return "" if uid == me.id else f"@{names.get(uid, 'someone')}"

    def role(m: re.Match[str]) -> str:
        return f"@{roles.get(int(m.group(1)), 'role')}"

    def channel(m: re.Match[str]) -> str:
        ch = guild.get_channel_or_thread(int(m.group(1))) if guild else None
        return f"#{ch.name}" if ch is not None else "#channel"

    text = _USER.sub(user, message.content)
    text = _ROLE.sub(role, text)
    text = _CHANNEL.sub(channel, text)
    return text.strip()


def relayed_question(message: discord.Message, me: discord.abc.User) -> tuple[str, str] | None:
    """(author, question) when `message` is the bot's post of a question asked with /route."""
    if message.author.id != me.id:
        return None
    for embed in message.embeds:
        if embed.footer.text == RELAY_FOOTER and embed.description:
            return embed.author.name or "someone", embed.description
    return None


def turn(message: discord.Message, me: discord.abc.User) -> Turn | None:
    relay = relayed_question(message, me)
    if relay is not None:
        return Turn(role="user", content=relay[1], author=relay[0])
    if message.author.id == me.id:
        return Turn(role="assistant", content=message.content) if message.content.strip() else None
    text = plain_text(message, me)
    return Turn(role="user", content=text, author=message.author.display_name) if text else None


async def _referenced(message: discord.Message) -> discord.Message | None:
    ref = message.reference
    if ref is None or ref.message_id is None:
        return None
    if isinstance(ref.resolved, discord.Message):
        return ref.resolved
    if isinstance(ref.resolved, discord.DeletedReferencedMessage):
        return None
    if ref.cached_message is not None:
        return ref.cached_message
    channel = message.channel
    if ref.channel_id != channel.id:  # a thread's first message refers to its parent channel
        found = message.guild.get_channel_or_thread(ref.channel_id) if message.guild else None
        if not isinstance(found, discord.abc.Messageable):
            return None
        channel = found
    try:
        return await channel.fetch_message(ref.message_id)
    except discord.HTTPException:
        log.info("message %s of a reply chain could not be fetched", ref.message_id)
        return None


async def thread_starter(thread: discord.Thread) -> discord.Message | None:
    """The message a thread was opened from (it lives in the parent channel, with the thread's id)."""
    if thread.starter_message is not None:
        return thread.starter_message
    parent = thread.parent
    if not isinstance(parent, discord.TextChannel):
        return None
    try:
        return await parent.fetch_message(thread.id)
    except discord.HTTPException:
        return None


async def earlier_messages(message: discord.Message, limit: int) -> list[discord.Message]:
    """The messages of `message`'s conversation before it, oldest first, at most `limit`."""
    if limit <= 0:
        return []
    found: dict[int, discord.Message] = {}
    current = message
    while len(found) < limit:
        previous = await _referenced(current)
        if previous is None or previous.id in found:
            break
        found[previous.id] = previous
        current = previous
    channel = message.channel
    if isinstance(channel, discord.Thread):
        try:
            async for m in channel.history(limit=limit, before=message):
                found.setdefault(m.id, m)
        except discord.HTTPException:
            log.info("thread %s history unavailable", channel.id)
        starter = await thread_starter(channel)
        if starter is not None:
            found.setdefault(starter.id, starter)
    found.pop(message.id, None)
    return [found[i] for i in sorted(found)][-limit:]  # snowflakes sort by time


def incoming(
    message: discord.Message,
    me: discord.abc.User,
    earlier: list[discord.Message],
    *,
    answer_channel: discord.abc.Messageable,
    text: str | None = None,
    author_name: str | None = None,
    event_key: str | None = None,
) -> IncomingMessage:
    """The core's view of a question. The conversation is keyed by where the answer goes: a thread
    when there is one, else the channel and the oldest message of the reply chain."""
    turns = (turn(m, me) for m in earlier)
    if isinstance(answer_channel, discord.Thread):
        thread_id = str(answer_channel.id)
    else:
        thread_id = str(earlier[0].id if earlier else message.id)
    return IncomingMessage(
        platform="discord",
        channel_id=str(getattr(answer_channel, "id", message.channel.id)),
        user_id=str(message.author.id),
        text=plain_text(message, me) if text is None else text,
        history=tuple(t for t in turns if t is not None),
        thread_id=thread_id,
        message_id=str(message.id),
        author_name=author_name or message.author.display_name,
        workspace_id=str(message.guild.id) if message.guild else None,
        event_key=event_key or f"discord:{message.id}",
        attachments=tuple(a.filename for a in message.attachments),
    )


def places(channel: object) -> tuple[str | None, ...]:
    """Where a channel is, for local-only settings: itself, its parent when a thread, and its guild."""
    guild = getattr(channel, "guild", None)
    return (
        str(getattr(channel, "id", "")) or None,
        str(channel.parent_id) if isinstance(channel, discord.Thread) and channel.parent_id else None,
        str(guild.id) if guild is not None else None,
    )


def reaction_name(emoji: discord.PartialEmoji, known: Mapping[str, int]) -> str:
    """The reaction's name as the contract's reaction map spells it (❤ and ❤️ are one)."""
    name = emoji.name or ""
    if name in known:
        return name
    if name + _VARIATION in known:
        return name + _VARIATION
    if name.endswith(_VARIATION) and name[:-1] in known:
        return name[:-1]
    return name


async def question_of(
    answer: discord.Message, me: discord.abc.User, limit: int = 20
) -> discord.Message | None:
    """The message an answer of the bot answers: its reply chain followed back past the bot's own
    parts, or the thread's starter when the answer opened the thread."""
    current = answer
    for _ in range(limit):
        previous = await _referenced(current)
        if previous is None:
            break
        if previous.author.id != me.id or relayed_question(previous, me) is not None:
            return previous
        current = previous
    if isinstance(answer.channel, discord.Thread):
        return await thread_starter(answer.channel)
    return None
