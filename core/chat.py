"""The adapter seam: what every platform adapter (console, Slack, Discord) gives the core and gets back.

An adapter turns a platform event into an `IncomingMessage`, hands the core a `Reply` for it, and
the core drives that reply: status lines while routing and pulling, the growing answer, then the
final answer with its routing decision. Throttling edits and splitting long answers is the reply's
job, because the limits are the platform's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from core.types import Decision, Turn


@dataclass(frozen=True)
class IncomingMessage:
    platform: str  # "console", "slack", "discord", "cli"
    channel_id: str
    user_id: str
    text: str
    history: tuple[Turn, ...] = ()  # the conversation before this message, oldest first
    thread_id: str | None = None
    message_id: str | None = None
    author_name: str | None = None
    workspace_id: str | None = None
    # the platform's delivery id (Slack event_id, Discord message id): a redelivery is answered once
    event_key: str | None = None
    # further ids of the same message (Slack's client_msg_id when one message arrives as two events)
    extra_keys: tuple[str, ...] = ()
    local_only: bool = False
    attachments: tuple[str, ...] = ()  # names of attached files; the bot reads none of them


@dataclass(frozen=True)
class AnswerStats:
    model: str
    host: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_ms: float = 0.0
    tokens_per_s: float | None = None


@dataclass(frozen=True)
class FinalAnswer:
    """What the user sees when an answer ends, successfully or not."""

    text: str
    decision: Decision | None
    answer_id: int | None = None
    stats: AnswerStats | None = None
    error: str | None = None  # a user-facing sentence, never a traceback
    incomplete: bool = False  # the stream broke after part of the answer arrived
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. "older messages were left out"


class Reply(Protocol):
    """One answer's presence on a platform: a placeholder that grows into the answer."""

    async def status(self, text: str) -> None:
        """Show a transient state ("Routing…", "Pulling qwen2.5-coder:7b 43%")."""

    async def stream(self, text: str) -> None:
        """Show the answer so far (the whole text, not a delta); may be throttled."""

    async def finish(self, answer: FinalAnswer) -> list[str]:
        """Show the complete answer; returns the platform ids of every message it occupies."""


@runtime_checkable
class TracksMessages(Protocol):
    """A `Reply` that can say which platform messages it has posted so far (the placeholder first).
    The core records them while the answer streams, so a restart can find an answer it cut off."""

    @property
    def message_ids(self) -> list[str]: ...


class ReportSink(Protocol):
    """Where scheduled reports go: a channel on a platform."""

    async def post_report(self, channel_id: str, text: str, png: bytes | None = None) -> None: ...
