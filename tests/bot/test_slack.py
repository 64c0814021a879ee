"""The Slack adapter as people in a workspace see it: threads, streamed answers, errors, exactly once.

Real slack-bolt and slack-sdk over loopback sockets against the Slack double, the real core against
the Ollama (and, where routing matters, OpenAI) doubles, a real database.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable

import pytest

from core.errors import ConfigError
from tests.doubles.openai import Reply as OpenAIReply
from tests.doubles.slack import SlackBot, SlackDouble

FENCE = re.compile(r"^```", re.M)


async def until(cond: Callable[[], object], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# --- answering ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_mention_is_answered_in_a_new_thread_with_the_routing_summary(
    mode: str, slack_bot_factory, slack_double: SlackDouble, ollama_double
) -> None:
    ollama_double.reply = "Four. **2 + 2 = 4**"
    bot: SlackBot = await slack_bot_factory(mode)
    event = slack_double.mention("C1", "U1", "<@UBOT> what is 2 + 2?")
    started = time.monotonic()
    ack = await slack_double.deliver(event)
    acked_in = time.monotonic() - started
    await bot.settle()

    assert acked_in < 0.5  # acknowledged at once; the answer comes after
    if mode == "http":
        assert ack[0] == 200
    ts = event["event"]["ts"]
    replies = slack_double.bot_replies("C1", ts)
    assert len(replies) == 1 and replies[0].thread_ts == ts  # in a thread under the mention
    assert slack_double.answer("C1", ts) == "Four. *2 + 2 = 4*"  # Markdown bold as Slack bold
    summary = slack_double.routing_line("C1", ts)
    # model · query type · confidence · source · decision time · why the local router decided
    assert re.fullmatch(
        r":compass: (llama3\.2:3b|qwen2\.5-coder:7b) · (coding|math|creative|reasoning|general)"
        r" · [01]\.\d\d · local · [\d.]+ ms · meta-router off \(no API key\)",
        summary,
    ), summary
    # the placeholder came first, then the same message grew into the answer
    first = slack_double.calls("chat.postMessage")[0]
    assert first.args["text"] == "Routing…" and first.args["thread_ts"] == ts
    # the question reached the model without the bot's mention, under the asker's name
    asked = ollama_double.calls("/api/chat")[0].body["messages"][-1]["content"]
    assert asked == "Alice: what is 2 + 2?"


async def test_direct_message_is_answered_in_its_thread(
    slack_bot_factory, slack_double, ollama_double
) -> None:
    ollama_double.reply = "Hello Bob."
    bot = await slack_bot_factory()
    event = slack_double.dm("U2", "hi there")
    await bot.ask(event)
    ts = event["event"]["ts"]
    assert slack_double.answer("D1", ts) == "Hello Bob."


async def test_whole_thread_is_the_conversation_in_order(
    slack_bot_factory, slack_double, ollama_double
) -> None:
    bot = await slack_bot_factory()
    slack_double.add_user("U3", "Carol")
    parent = slack_double.post_as("C1", "U1", "<@UBOT> write fib in python")
    slack_double.post_as("C1", "UBOT", "def fib(n): ...", thread_ts=parent.ts, bot_id="B1")
    slack_double.post_as("C1", "UBOT", "(second part of that answer)", thread_ts=parent.ts, bot_id="B1")
    slack_double.post_as("C1", None, "CI passed", thread_ts=parent.ts, bot_id="B9")  # another bot speaks
    slack_double.post_as("C1", "U2", "ask <@U3> about &lt;memo&gt;", thread_ts=parent.ts)
    event = slack_double.mention("C1", "U1", "<@UBOT> now make it iterative", thread_ts=parent.ts)
    slack_double.post_as("C1", "U2", "said after the question", thread_ts=parent.ts)

    await bot.ask(event)

    sent = ollama_double.calls("/api/chat")[0].body["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "Alice: write fib in python"),
        ("assistant", "def fib(n): ...\n\n(second part of that answer)"),
        ("user", "other-bot: CI passed"),
        ("user", "Bob: ask @Carol about <memo>"),
        ("user", "Alice: now make it iterative"),
    ]
    assert len(slack_double.calls("conversations.replies")) >= 2  # paginated (3 per page in the double)
    assert slack_double.bot_replies("C1", parent.ts)[-1].thread_ts == parent.ts


async def test_answer_streams_with_at_most_one_update_per_interval(
    slack_bot_factory, slack_double, ollama_double
):
    ollama_double.reply = " ".join(f"word{i}" for i in range(60))
    ollama_double.token_delay = 0.02  # about 1.2 s of tokens
    bot = await slack_bot_factory(slack_update_interval_s=0.25)
    event = slack_double.mention("C1", "U1", "<@UBOT> count words")
    await bot.ask(event)

    ts = slack_double.bot_replies("C1", event["event"]["ts"])[0].ts
    updates = slack_double.updates_of("C1", ts)
    times = [c.at for c in updates]
    assert len(updates) >= 3  # the reader watched it grow
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.25 * 0.9
    texts = [c.args["text"] for c in updates]
    grown = [t for t in texts if t.startswith("word0")]
    assert len(grown) >= 2 and len(grown[0]) < len(grown[-1])
    assert slack_double.answer("C1", event["event"]["ts"]) == ollama_double.reply


async def test_pull_progress_shows_in_the_placeholder(
    slack_bot_factory, slack_double, ollama_double, openai_double
):
    ollama_double.add_pullable("mistral:7b", size_gb=4.1)
    ollama_double.pull_delay = 0.08
    openai_double.push(OpenAIReply.decision(recommended_model="mistral:7b", query_type="general"))
    bot = await slack_bot_factory(
        meta_router_enabled=True,
        openai_api_key="sk-test-key-123456",
        openai_base_url=openai_double.base_url,
        use_local_for_simple_queries=False,
    )
    event = slack_double.mention("C1", "U1", "<@UBOT> tell me about the Alps")
    await bot.ask(event)
    texts = [c.args["text"] for c in slack_double.calls("chat.update")]
    assert any(re.fullmatch(r"Pulling mistral:7b \d+%", t) for t in texts), texts
    assert slack_double.answer("C1", event["event"]["ts"]) == ollama_double.reply
    assert "mistral:7b · general" in slack_double.routing_line("C1", event["event"]["ts"])


async def test_long_answer_continues_in_further_messages_with_fences_balanced(
    slack_bot_factory, slack_double, ollama_double
) -> None:
    code = "\n".join(f"    total += values[{i}] * weights[{i}]  # term {i}" for i in range(150))
    prose = "\n\n".join(f"Paragraph {i}: " + "the quick brown fox jumps. " * 12 for i in range(12))
    body = f"def score(values, weights):\n    total = 0\n{code}\n    return total"
    ollama_double.reply = f"{prose}\n\n```python\n{body}\n```\n\nDone."
    bot = await slack_bot_factory()
    event = slack_double.mention("C1", "U1", "<@UBOT> write a long scoring function")
    await bot.ask(event)  # the double refuses any block over 3,000 or text over 4,000 characters

    parts = slack_double.bot_replies("C1", event["event"]["ts"])
    assert len(parts) >= 4
    sections = [b["text"]["text"] for m in parts for b in m.blocks if b.get("block_id") == "mr_answer"]
    assert len(sections) == len(parts) and all(len(s) <= 3000 for s in sections)
    assert all(len(FENCE.findall(s)) % 2 == 0 for s in sections)  # every part's code renders as code
    # every line of the code, once, in order, across the parts
    lines = [ln for s in sections for ln in s.split("\n") if ln.startswith("    total += ")]
    assert lines == [ln for ln in code.split("\n")]
    assert sections[0].startswith("Paragraph 0:") and sections[-1].endswith("Done.")
    # the routing footer sits under the last part only
    assert [any(b["type"] == "actions" for b in m.blocks) for m in parts] == [False] * (len(parts) - 1) + [
        True
    ]


async def test_markdown_becomes_mrkdwn_and_mass_mentions_are_neutralised(
    slack_bot_factory, slack_double, ollama_double
) -> None:
    ollama_double.reply = (
        "# Plan\n- **one** and *two*\n- see [docs](https://example.com/a?b=1&c=2)\n\n"
        "Hey <!channel>, @here and <!everyone|everyone>!\n\n```bash\necho '<b>' && ls\n```"
    )
    bot = await slack_bot_factory()
    event = slack_double.mention("C1", "U1", "<@UBOT> make a plan")
    await bot.ask(event)
    shown = slack_double.answer("C1", event["event"]["ts"])
    assert shown.startswith("*Plan*\n• *one* and _two_\n• see <https://example.com/a?b=1&amp;c=2|docs>")
    assert "<!channel>" not in shown and "<!everyone" not in shown and "@here" not in shown
    assert "&lt;!\u200bchannel&gt;" in shown and "@\u200bhere" in shown
    assert "```\necho '&lt;b&gt;' &amp;&amp; ls\n```" in shown  # code intact, language tag dropped


# --- exactly once -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_redelivered_event_is_answered_once_also_after_a_restart(
    mode: str, slack_bot_factory, slack_double, ollama_double, db_url
) -> None:
    bot = await slack_bot_factory(mode, database_url=db_url)
    event = slack_double.mention("C1", "U1", "<@UBOT> hello")
    await bot.ask(event)
    await bot.ask(event, retry=1)  # Slack thought the first delivery failed

    await bot.close()
    bot2 = await slack_bot_factory(mode, database_url=db_url)
    await bot2.ask(event, retry=2)

    # the same message arriving as a second event (a DM also seen as a mention) counts once too
    dm = slack_double.dm("U1", "<@UBOT> hi")
    twin = slack_double.envelope(dm["event"] | {"type": "app_mention"})
    await bot2.ask(dm)
    await bot2.ask(twin)

    assert len(slack_double.bot_replies("C1", event["event"]["ts"])) == 1
    assert len(slack_double.bot_replies("D1", dm["event"]["ts"])) == 1
    assert len(ollama_double.calls("/api/chat")) == 2


async def test_other_bots_and_its_own_messages_are_never_answered(slack_bot_factory, slack_double) -> None:
    bot = await slack_bot_factory()
    other = slack_double.mention("C1", "U9", "<@UBOT> I am a bot")
    other["event"]["bot_id"] = "B9"
    bot_dm = slack_double.envelope(
        slack_double.message_event(slack_double.post_as("D1", None, "beep", bot_id="B9"))
    )
    own = slack_double.envelope(
        slack_double.message_event(slack_double.post_as("D1", "UBOT", "my answer", bot_id="B1"))
    )
    edited = slack_double.dm("U1", "hello")
    edited["event"]["subtype"] = "message_changed"
    for payload in (other, bot_dm, own, edited):
        await bot.ask(payload)
    assert slack_double.calls("chat.postMessage") == []


async def test_channel_allow_list(slack_bot_factory, slack_double) -> None:
    bot = await slack_bot_factory(slack_allowed_channels="C1, C2")
    elsewhere = slack_double.mention("C9", "U1", "<@UBOT> hello?")
    allowed = slack_double.mention("C2", "U1", "<@UBOT> hello!")
    dm = slack_double.dm("U1", "hi")
    for payload in (elsewhere, allowed, dm):
        await bot.ask(payload)
    assert slack_double.bot_replies("C9", elsewhere["event"]["ts"]) == []
    assert slack_double.bot_replies("C2", allowed["event"]["ts"])
    assert slack_double.bot_replies("D1", dm["event"]["ts"])  # DMs are always answered
    ack = await slack_double.command("/models", "", channel="C9")
    assert "not enabled in this channel" in ack.get("text", "")


# --- errors people understand -------------------------------------------------------------------------
def warning_in(double: SlackDouble, event: dict) -> str:
    text = double.answer(event["event"]["channel"], event["event"]["ts"])
    assert "Traceback" not in text and "Error(" not in text
    return text


async def test_ollama_unreachable(slack_bot_factory, slack_double, ollama_double) -> None:
    bot = await slack_bot_factory()
    await ollama_double.stop()
    event = slack_double.mention("C1", "U1", "<@UBOT> hello")
    await bot.ask(event)
    text = warning_in(slack_double, event)
    assert text.startswith(":warning: No Ollama server answered") and len(text) < 400


async def test_model_missing_and_not_pullable(
    slack_bot_factory, slack_double, ollama_double, openai_double
) -> None:
    openai_double.push(OpenAIReply.decision(recommended_model="mistral:7b", alternatives=[]))
    bot = await slack_bot_factory(
        meta_router_enabled=True,
        openai_api_key="sk-test-key-123456",
        openai_base_url=openai_double.base_url,
        use_local_for_simple_queries=False,
    )
    event = slack_double.mention("C1", "U1", "<@UBOT> hello")
    await bot.ask(event)
    text = warning_in(slack_double, event)
    assert text.startswith(":warning: ") and "mistral:7b" in text and "pull" in text
    assert len(text) < 400


async def test_every_model_failed_and_the_bot_stays_up(
    slack_bot_factory, slack_double, ollama_double
) -> None:
    bot = await slack_bot_factory()
    ollama_double.fail("/api/chat", status=500, error="llama runner process has terminated", times=2)
    event = slack_double.mention("C1", "U1", "<@UBOT> hello")
    await bot.ask(event)
    text = warning_in(slack_double, event)
    assert text.startswith(":warning: No model could answer") and len(text) < 600

    again = slack_double.mention("C1", "U1", "<@UBOT> and now?")
    await bot.ask(again)
    assert slack_double.answer("C1", again["event"]["ts"]) == ollama_double.reply


async def test_model_server_busy(slack_bot_factory, slack_double, ollama_double) -> None:
    bot = await slack_bot_factory()
    busy = "server busy, please try again.  maximum pending requests exceeded"
    ollama_double.fail("/api/chat", status=503, error=busy, times=2)
    event = slack_double.mention("C1", "U1", "<@UBOT> hello")
    await bot.ask(event)
    assert "server busy" in warning_in(slack_double, event)


async def test_context_too_long_is_said_in_the_answer(slack_bot_factory, slack_double, ollama_double) -> None:
    bot = await slack_bot_factory(default_context_tokens=512)
    parent = slack_double.post_as("C1", "U1", "<@UBOT> here is a long log")
    for i in range(3):
        slack_double.post_as("C1", "U1", f"log part {i}: " + "error at line 42. " * 35, thread_ts=parent.ts)
    event = slack_double.mention("C1", "U1", "<@UBOT> what went wrong?", thread_ts=parent.ts)
    await bot.ask(event)
    text = slack_double.answer("C1", parent.ts)
    assert text.startswith(ollama_double.reply)
    assert "_Older messages of this thread were left out to fit the model's context._" in text


async def test_slack_rate_limit_is_honoured_and_the_answer_still_arrives(
    slack_bot_factory, slack_double, ollama_double
) -> None:
    ollama_double.reply = " ".join(f"w{i}" for i in range(30))
    ollama_double.token_delay = 0.01
    bot = await slack_bot_factory()
    slack_double.fail("chat.update", status=429, retry_after=1)
    event = slack_double.mention("C1", "U1", "<@UBOT> go")
    await bot.ask(event)
    updates = slack_double.calls("chat.update")
    limited_at = updates[0].at
    assert all(c.at - limited_at >= 1.0 for c in updates[1:])  # nothing before Retry-After ran out
    assert slack_double.answer("C1", event["event"]["ts"]) == ollama_double.reply


async def test_unexpected_slack_failure_gives_a_short_message(slack_bot_factory, slack_double) -> None:
    bot = await slack_bot_factory()
    parent = slack_double.post_as("C1", "U1", "start")
    slack_double.fail("conversations.replies", status=200, error="internal_error", retry_after=None)
    event = slack_double.mention("C1", "U1", "<@UBOT> hi", thread_ts=parent.ts)
    await bot.ask(event)
    assert (
        slack_double.answer("C1", parent.ts)
        == ":warning: Something went wrong while answering. Please try again."
    )


# --- HTTP mode details ------------------------------------------------------------------------------
async def test_http_mode_verifies_signatures(slack_bot_factory, slack_double) -> None:
    await slack_bot_factory("http")
    body = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "t"})
    assert await slack_double.post_signed(body, "application/json") == (200, '{"challenge": "abc123"}')
    status, _ = await slack_double.post_signed(body, "application/json", secret="wrong-secret")
    assert status == 401
    status, _ = await slack_double.post_signed(body, "application/json", ts=int(time.time()) - 600)
    assert status == 401


async def test_close_waits_for_answers_in_flight(slack_bot_factory, slack_double, ollama_double) -> None:
    ollama_double.reply = " ".join(f"t{i}" for i in range(20))
    ollama_double.token_delay = 0.03
    bot = await slack_bot_factory()
    event = slack_double.mention("C1", "U1", "<@UBOT> slow one")
    await slack_double.deliver(event)
    await until(lambda: bot.adapter.tasks)
    await bot.close(grace_s=10)
    assert slack_double.answer("C1", event["event"]["ts"]) == ollama_double.reply


async def test_close_past_its_deadline_says_the_answer_was_interrupted(
    slack_bot_factory, slack_double, ollama_double
) -> None:
    ollama_double.reply = " ".join(f"t{i}" for i in range(200))
    ollama_double.token_delay = 0.05
    bot = await slack_bot_factory()
    event = slack_double.mention("C1", "U1", "<@UBOT> very slow one")
    await slack_double.deliver(event)
    await until(lambda: slack_double.bot_replies("C1", event["event"]["ts"]))
    await bot.close(grace_s=0.3)
    assert "The bot restarted before this answer finished" in slack_double.answer("C1", event["event"]["ts"])


@pytest.mark.parametrize(
    ("token", "variable"), [("slack_bot_token", "SLACK_BOT_TOKEN"), ("slack_app_token", "SLACK_APP_TOKEN")]
)
async def test_a_token_slack_refuses_is_a_configuration_error_naming_it(
    token: str, variable: str, slack_bot_factory, slack_double
) -> None:
    prefix = "xoxb" if token == "slack_bot_token" else "xapp"
    with pytest.raises(ConfigError, match=f"^{variable} was refused by Slack \\(invalid_auth\\)$"):
        await slack_bot_factory(**{token: f"{prefix}-test-revoked"})


async def test_post_report_sends_text_and_chart(slack_bot_factory, slack_double) -> None:
    bot = await slack_bot_factory()
    await bot.adapter.post_report("C7", "*Weekly report*: 42 answers", b"\x89PNG fake chart")
    assert slack_double.channels["C7"][0].text == "_Weekly report_: 42 answers"
    assert slack_double.files[0]["data"] == b"\x89PNG fake chart" and slack_double.files[0]["channel"] == "C7"
