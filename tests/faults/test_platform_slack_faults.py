"""Slack faults in the middle of an answer: rate limits on the Web API, a dropped Socket Mode
connection, a redelivered event. The answer still arrives, complete and exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.doubles.slack import SlackBot, SlackDouble


async def until(cond: Callable[[], object], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def squash(text: str) -> str:
    return "".join(text.split())


def long_reply(paragraphs: int) -> str:
    """An answer longer than one Slack message (3,000 characters a section)."""
    sentence = "the quick brown fox jumps over it. "
    return "\n\n".join(f"Paragraph {i}: " + sentence * 10 for i in range(paragraphs))


async def test_rate_limits_on_post_and_update_mid_answer_still_deliver_it_once(
    slack_bot_factory, slack_double: SlackDouble, ollama_double
) -> None:
    ollama_double.reply = long_reply(12)  # about 4,700 characters: two messages
    ollama_double.token_delay = 0.002
    bot: SlackBot = await slack_bot_factory()
    event = slack_double.mention("C1", "U1", "<@UBOT> explain it at length")
    ts = event["event"]["ts"]
    await slack_double.deliver(event)
    await until(lambda: slack_double.bot_replies("C1", ts))  # the placeholder is up
    # mid-answer, Slack limits both the edits and the post of the answer's second message
    slack_double.fail("chat.update", status=429, retry_after=1, times=2)
    slack_double.fail("chat.postMessage", status=429, retry_after=1)
    await bot.settle()

    limited = [c for c in slack_double.api_calls if c.method in ("chat.update", "chat.postMessage")]
    assert sum(1 for c in limited if c.method == "chat.postMessage") >= 3  # placeholder, 429, retry
    parts = slack_double.bot_replies("C1", ts)
    assert len(parts) == 2  # the refused post was not doubled when retried
    assert squash(slack_double.answer("C1", ts)) == squash(ollama_double.reply)  # all of it, in order
    assert "Routing details" in [b["text"]["text"] for b in parts[-1].buttons()]
    assert len(ollama_double.calls("/api/chat")) == 1


@pytest.mark.parametrize("warn", [False, True], ids=["dropped", "refresh-requested"])
async def test_a_dropped_socket_mid_answer_reconnects_finishes_and_ignores_the_redelivery(
    warn: bool, slack_bot_factory, slack_double: SlackDouble, ollama_double
) -> None:
    ollama_double.reply = " ".join(f"word{i}" for i in range(60))
    ollama_double.token_delay = 0.02  # about 1.2 s of streaming
    bot: SlackBot = await slack_bot_factory()
    event = slack_double.mention("C1", "U1", "<@UBOT> count slowly")
    ts = event["event"]["ts"]
    await slack_double.deliver(event)
    await until(lambda: "word" in slack_double.answer("C1", ts))  # streaming has begun

    await slack_double.drop_socket(warn=warn)
    await slack_double.wait_for_socket()  # the app opened a new connection by itself
    assert len(slack_double.calls("apps.connections.open")) >= 2
    # Slack did not see the first ack in time and delivers the event again on the new connection
    ack = await slack_double.deliver(event, retry=1)
    assert ack == {}
    await bot.settle()

    assert len(slack_double.bot_replies("C1", ts)) == 1
    assert slack_double.answer("C1", ts) == ollama_double.reply
    assert len(ollama_double.calls("/api/chat")) == 1

    # and the new connection carries new questions
    ollama_double.token_delay = 0.0
    ollama_double.reply = "Still here."
    later = slack_double.mention("C1", "U2", "<@UBOT> are you there?")
    await bot.ask(later)
    assert slack_double.answer("C1", later["event"]["ts"]) == "Still here."


async def test_a_rate_limited_thread_read_is_waited_out_and_the_question_answered(
    slack_bot_factory, slack_double: SlackDouble, ollama_double
) -> None:
    # conversations.replies is a Tier 3 method (about 50 calls a minute): a busy workspace hits it
    ollama_double.reply = "Try the deque."
    bot: SlackBot = await slack_bot_factory()
    parent = slack_double.post_as("C1", "U2", "we need a faster queue in python")
    slack_double.fail("conversations.replies", status=429, retry_after=1)
    event = slack_double.mention("C1", "U1", "<@UBOT> any idea?", thread_ts=parent.ts)
    await bot.ask(event)

    assert len(slack_double.bot_replies("C1", parent.ts)) == 1
    assert slack_double.answer("C1", parent.ts) == "Try the deque."
    reads = slack_double.calls("conversations.replies")
    assert len(reads) >= 2 and reads[1].at - reads[0].at >= 1.0  # Retry-After was honoured
    sent = ollama_double.calls("/api/chat")[0].body["messages"]
    assert "we need a faster queue in python" in sent[-2]["content"]  # the thread was read after all
