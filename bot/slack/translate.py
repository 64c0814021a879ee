"""Slack payloads to the core's types, in one place: questions, thread history, ratings, commands."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.chat import IncomingMessage
from core.types import Turn

PLATFORM = "slack"

_USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_CHANNEL = re.compile(r"<#[CG][A-Z0-9]+\|([^>]*)>")
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!(\w+)(?:\^[^|>]*)?(?:\|([^>]*))?>")
_SKIN_TONE = re.compile(r"::skin-tone-\d$")
_STATUS_PREFIXES = ("Routing…", "Pulling ", "Waiting for the model server")
# subtypes that are still someone asking: "also send to channel" replies, messages with a file
_QUESTION_SUBTYPES = (None, "thread_broadcast", "file_share")


@dataclass(frozen=True)
class Question:
    """A person's message the bot should answer."""

    channel: str
    user: str
    text: str  # raw Slack text
    ts: str
    thread_ts: str | None  # the thread it is in; None at the top level
    event_id: str | None = None
    client_msg_id: str | None = None
    team: str | None = None
    files: tuple[str, ...] = ()  # names of attached files (the bot cannot read them)

    @property
    def reply_thread(self) -> str:
        """Answers go in the message's thread, or start one under a top-level message."""
        return self.thread_ts or self.ts


@dataclass(frozen=True)
class Rating:
    channel: str
    ts: str
    user: str
    reaction: str
    added: bool


def question_from_event(event: Mapping[str, Any], body: Mapping[str, Any]) -> Question | None:
    """An app_mention, or a plain message in a DM; None for everything else (edits, joins, bots)."""
    if event.get("bot_id") or event.get("subtype") not in _QUESTION_SUBTYPES:
        return None
    if event.get("type") == "message" and event.get("channel_type") != "im":
        return None
    if not event.get("user") or not event.get("ts"):
        return None
    return Question(
        channel=event["channel"],
        user=event["user"],
        text=event.get("text") or "",
        ts=event["ts"],
        thread_ts=event.get("thread_ts"),
        event_id=body.get("event_id"),
        client_msg_id=event.get("client_msg_id"),
        team=body.get("team_id"),
        files=tuple(str(f.get("name") or f.get("title") or "file") for f in event.get("files") or ()),
    )


def question_from_message(channel: str, m: Mapping[str, Any], team: str | None = None) -> Question:
    """A message read back from conversations.replies (a re-run of an earlier question)."""
    return Question(channel, m.get("user") or "", m.get("text") or "", m["ts"], m.get("thread_ts"), team=team)


def plain_text(text: str, *, bot_user_id: str | None, names: Mapping[str, str]) -> str:
    """Slack's wire text as a person reads it: the bot's mention dropped, other mentions as names,
    links and channels readable, entities unescaped."""

    def user(m: re.Match[str]) -> str:
        uid = m.group(1)
        return "" if uid == bot_user_id else "@" + names.get(uid, uid)

    text = _USER.sub(user, text)
    text = _CHANNEL.sub(lambda m: "#" + m.group(1), text)
    text = _LINK.sub(lambda m: m.group(1) if not m.group(2) else f"{m.group(2)} ({m.group(1)})", text)
    text = _SPECIAL.sub(lambda m: "@" + (m.group(2) or m.group(1)), text)
    return re.sub(r"[ \t]{2,}", " ", html.unescape(text)).strip()


def mentioned_users(texts: Iterable[str]) -> set[str]:
    return {m.group(1) for t in texts for m in _USER.finditer(t)}


def is_bot_message(m: Mapping[str, Any], bot_user_id: str | None, bot_id: str | None) -> bool:
    return bool((bot_user_id and m.get("user") == bot_user_id) or (bot_id and m.get("bot_id") == bot_id))


def history(
    messages: Iterable[Mapping[str, Any]],
    *,
    before_ts: str | None,
    bot_user_id: str | None,
    bot_id: str | None,
    names: Mapping[str, str],
) -> tuple[Turn, ...]:
    """The thread before the question, oldest first: the bot's messages are assistant turns (the
    parts of one long answer joined), everyone else's are user turns under their display names."""
    turns: list[Turn] = []
    for m in sorted(messages, key=lambda m: float(m["ts"])):
        if before_ts is not None and float(m["ts"]) >= float(before_ts):
            continue  # the question itself, and anything said after it
        raw = m.get("text") or ""
        if is_bot_message(m, bot_user_id, bot_id):
            if raw.startswith(_STATUS_PREFIXES):
                continue  # a placeholder of an answer still in progress
            content = html.unescape(raw).strip()
            if turns and turns[-1].role == "assistant":
                turns[-1] = Turn(role="assistant", content=turns[-1].content + "\n\n" + content)
            elif content:
                turns.append(Turn(role="assistant", content=content))
            continue
        content = plain_text(raw, bot_user_id=bot_user_id, names=names)
        if not content:
            continue
        if m.get("bot_id") and not m.get("user"):
            author = m.get("username") or (m.get("bot_profile") or {}).get("name") or "a bot"
        else:
            author = names.get(m.get("user") or "", m.get("user") or "someone")
        turns.append(Turn(role="user", content=content, author=author))
    return tuple(turns)


def incoming(
    q: Question,
    *,
    history: tuple[Turn, ...],
    names: Mapping[str, str],
    bot_user_id: str | None,
    dedupe: bool = True,
) -> IncomingMessage:
    """The core's message. Deliveries are deduplicated by event id and by the client's message id,
    which is the same when one message arrives as two events."""
    return IncomingMessage(
        platform=PLATFORM,
        channel_id=q.channel,
        user_id=q.user,
        text=plain_text(q.text, bot_user_id=bot_user_id, names=names),
        history=history,
        thread_id=q.reply_thread,
        message_id=q.ts,
        author_name=names.get(q.user),
        workspace_id=q.team,
        event_key=f"slack:{q.event_id}" if dedupe and q.event_id else None,
        extra_keys=(f"slack:msg:{q.client_msg_id}",) if dedupe and q.client_msg_id else (),
        attachments=q.files,
    )


def rating_from_event(event: Mapping[str, Any]) -> Rating | None:
    item = event.get("item") or {}
    if item.get("type") != "message" or not event.get("user") or not event.get("reaction"):
        return None
    return Rating(
        channel=item["channel"],
        ts=item["ts"],
        user=event["user"],
        reaction=_SKIN_TONE.sub("", event["reaction"]),  # 👍🏽 counts as 👍
        added=event.get("type") == "reaction_added",
    )


def display_name(user: Mapping[str, Any]) -> str:
    profile = user.get("profile") or {}
    return (
        profile.get("display_name")
        or profile.get("real_name")
        or user.get("real_name")
        or user.get("name")
        or user["id"]
    )


def action_channel(body: Mapping[str, Any]) -> str | None:
    return (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")


def event_channel(body: Mapping[str, Any]) -> str | None:
    """The channel any payload (event, command, action) happened in."""
    if "event" in body:
        event = body["event"]
        return event.get("channel") or (event.get("item") or {}).get("channel")
    return body.get("channel_id") or action_channel(body)
