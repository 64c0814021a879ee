"""One answer in a Slack thread: the core's `Reply`, built on the shared streaming sink."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.common.streaming import Limits, MessageGone, RetryLater, StreamingSink
from bot.common.text import neutralise_mentions
from bot.slack import render
from bot.slack.mrkdwn import to_mrkdwn
from core.chat import FinalAnswer
from core.types import ModelStats

log = logging.getLogger(__name__)

# chat.update refuses these for good: go on in a new message
_GONE = {"message_not_found", "cant_update_message", "edit_window_closed", "channel_not_found"}

StatsFor = Callable[[str], Awaitable[ModelStats | None]]


def render_text(markdown: str) -> str:
    """Model Markdown as safe Slack mrkdwn: mass mentions neutralised, entities escaped."""
    return to_mrkdwn(neutralise_mentions(markdown))


class SlackTransport:
    """Posts into one thread; a message is one section block (3,000 characters) plus, on the last
    message of an answer, the routing footer."""

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str | None) -> None:
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts

    async def post(self, text: str, extra: Any = None) -> str:
        resp = await self._call(
            self.client.chat_postMessage,
            channel=self.channel,
            thread_ts=self.thread_ts,
            text=text,
            blocks=render.answer_blocks(text, extra),
            unfurl_links=False,
            unfurl_media=False,
        )
        return str(resp["ts"])

    async def edit(self, message_id: str, text: str, extra: Any = None) -> None:
        await self._call(
            self.client.chat_update,
            channel=self.channel,
            ts=message_id,
            text=text,
            blocks=render.answer_blocks(text, extra),
        )

    @staticmethod
    async def _call(method: Callable[..., Awaitable[Any]], **kwargs: Any) -> Any:
        try:
            return await method(**kwargs)
        except SlackApiError as exc:
            if exc.response.status_code == 429:
                raise RetryLater(retry_after(exc.response.headers)) from None
            if exc.response.get("error") in _GONE:
                raise MessageGone(str(exc.response.get("error"))) from None
            raise


def retry_after(headers: Any) -> float:
    """Seconds Slack asked to wait after a 429 (1 s when it did not say)."""
    for key in ("Retry-After", "retry-after"):
        try:
            return float(headers[key])
        except (KeyError, TypeError, ValueError):
            continue
    return 1.0


class SlackReply:
    """Placeholder first, the growing answer, then the answer with its collapsed routing footer."""

    def __init__(
        self,
        client: AsyncWebClient,
        channel: str,
        thread_ts: str | None,
        *,
        interval_s: float,
        question_ts: str | None = None,
        stats_for: StatsFor | None = None,
        rerun: bool = True,
    ) -> None:
        limits = Limits(chars=render.SECTION_CHARS, interval_s=interval_s)
        self.sink = StreamingSink(SlackTransport(client, channel, thread_ts), limits, render=render_text)
        self.question_ts = question_ts
        self.stats_for = stats_for
        self.rerun = rerun
        self.finished = False

    @property
    def message_ids(self) -> list[str]:
        """Every message posted for this answer so far (core.chat.TracksMessages)."""
        return list(self.sink.message_ids)

    @property
    def started(self) -> bool:
        return bool(self.sink.message_ids)

    async def status(self, text: str) -> None:
        await self.sink.status(text)

    async def stream(self, text: str) -> None:
        await self.sink.update(text)

    async def finish(self, answer: FinalAnswer) -> list[str]:
        self.finished = True
        footer = None
        if answer.decision is not None:
            stats = await self.stats_for(answer.decision.recommended_model) if self.stats_for else None
            f = render.Footer(answer.decision, self.question_ts, stats, self.rerun)
            footer = render.decision_footer(f, expanded=False)
        return await self.sink.finish(final_markdown(answer), extra=footer)

    async def fail(self, message: str) -> list[str]:
        """Ends the answer with a short message when something outside the core broke."""
        self.finished = True
        return await self.sink.finish(f":warning: {message}")


def final_markdown(answer: FinalAnswer) -> str:
    parts = [answer.text.rstrip()] if answer.text.strip() else []
    if answer.error:
        prefix = "The answer was cut short: " if answer.text.strip() else ""
        parts.append(f":warning: {prefix}{answer.error}")
    parts += [f"_{note}_" for note in answer.notes]
    return "\n\n".join(parts) or "_(the model returned an empty answer)_"
