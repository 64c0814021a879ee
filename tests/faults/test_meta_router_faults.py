"""Meta-router faults as people in a Slack thread see them, and as the database records them.

Every scenario goes through a real mention: slack-bolt over the Slack double, the real openai client
against the OpenAI double (slow, refusing connections, 5xx, 429, garbage), the real ollama client
against the Ollama double. Whatever the meta-router does, the question is answered once by a local
model, the routing line and the routing details say why the local router decided, and the request and
the meta-router call are both recorded.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from sqlalchemy import select

from bot.common.render import FALLBACK_TEXT
from core.store.models import Request, RouterCall
from tests.doubles.openai import OpenAIDouble, Reply
from tests.doubles.slack import SlackBot, SlackDouble

ANSWER = "Use a deque from collections."
LOCAL_MODELS = ("llama3.2:3b", "qwen2.5-coder:7b")


def closed_port_url() -> str:
    """An OpenAI base URL where nothing listens: the client gets connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def routed_bot(slack_bot_factory: Any, openai_double: OpenAIDouble, **overrides: Any) -> SlackBot:
    values: dict[str, Any] = {
        "meta_router_enabled": True,
        "openai_api_key": "sk-test-key-123456",
        "openai_base_url": openai_double.base_url,
        "use_local_for_simple_queries": False,
    }
    return await slack_bot_factory(**(values | overrides))


async def details(bot: SlackBot, double: SlackDouble, channel: str, thread_ts: str) -> str:
    """What a person reads after pressing "Routing details" under the answer."""
    msg = double.bot_replies(channel, thread_ts)[-1]
    expand = next(b for b in msg.buttons() if b["text"]["text"] == "Routing details")
    await double.click(expand, message=msg)
    await bot.settle()
    return msg.visible()


async def rows(bot: SlackBot) -> tuple[list[Request], list[RouterCall]]:
    async with bot.app.store.engine.connect() as conn:
        requests = (await conn.execute(select(Request))).all()
        calls = (await conn.execute(select(RouterCall))).all()
    return list(requests), list(calls)


async def ask_and_check(
    bot: SlackBot, double: SlackDouble, ollama_double: Any, reason: str, text: str = "<@UBOT> fastest queue?"
) -> tuple[str, float]:
    """Asks once; checks the answer, the routing line and the rows; returns the details and the time
    from the mention to the finished answer."""
    ollama_double.reply = ANSWER
    event = double.mention("C1", "U1", text)
    ts = event["event"]["ts"]
    started = time.monotonic()
    await bot.ask(event)
    took = time.monotonic() - started

    replies = double.bot_replies("C1", ts)
    assert len(replies) == 1, [m.text for m in replies]  # answered once, in the thread
    assert double.answer("C1", ts) == ANSWER
    line = double.routing_line("C1", ts)
    assert " · local · " in line and line.endswith(FALLBACK_TEXT[reason]), line
    assert any(m in line for m in LOCAL_MODELS)

    requests, calls = await rows(bot)
    assert [(r.source, r.fallback_reason) for r in requests] == [("local", reason)]
    assert requests[0].recommended_model in LOCAL_MODELS
    assert [c.outcome for c in calls] == [reason]  # one call recorded, however many attempts it took
    return await details(bot, double, "C1", ts), took


async def test_a_slow_meta_router_is_not_waited_for_past_the_decision_timeout(
    slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double: OpenAIDouble
) -> None:
    openai_double.responder = lambda req: Reply.decision(recommended_model="qwen2.5-coder:7b", delay_s=30)
    bot = await routed_bot(slack_bot_factory, openai_double, decision_timeout_s=1.0)

    shown, took = await ask_and_check(bot, slack_double, ollama_double, "timeout")

    assert "Decided by: local (meta-router timed out)" in shown
    # the answer came soon after the timeout, not after the router's 30 s (2 s covers the doubles)
    assert 1.0 <= took < 3.0, took
    assert openai_double.calls == 1


async def test_a_meta_router_refusing_connections_falls_back_at_once(
    slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double: OpenAIDouble, db_url: str
) -> None:
    bot = await routed_bot(
        slack_bot_factory, openai_double, openai_base_url=closed_port_url(), database_url=db_url
    )

    shown, took = await ask_and_check(bot, slack_double, ollama_double, "api_error")

    assert "Decided by: local (meta-router unavailable)" in shown
    assert took < 4.0  # retried within the decision timeout (4 s), then answered


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_meta_router_server_errors_are_retried_then_the_local_router_answers(
    status: int, slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double: OpenAIDouble
) -> None:
    openai_double.responder = lambda req: Reply.server_error(status)
    bot = await routed_bot(slack_bot_factory, openai_double)

    shown, _ = await ask_and_check(bot, slack_double, ollama_double, "api_error")

    assert "Decided by: local (meta-router unavailable)" in shown
    assert openai_double.calls == 3  # every attempt failed


async def test_a_rate_limited_meta_router_is_not_retried_by_default(
    slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double: OpenAIDouble
) -> None:
    openai_double.responder = lambda req: Reply.rate_limited("20")
    bot = await routed_bot(slack_bot_factory, openai_double)  # fallback_on_rate_limit defaults to true

    shown, took = await ask_and_check(bot, slack_double, ollama_double, "rate_limited")

    assert "Decided by: local (meta-router rate-limited)" in shown
    assert openai_double.calls == 1 and took < 3.0  # Retry-After: 20 was not waited for


async def test_without_fallback_on_rate_limit_a_short_retry_after_is_waited_out(
    slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double: OpenAIDouble
) -> None:
    openai_double.push(
        Reply.rate_limited("0.2"), Reply.decision(recommended_model="qwen2.5-coder:7b", confidence=0.9)
    )
    bot = await routed_bot(slack_bot_factory, openai_double, fallback_on_rate_limit=False)
    ollama_double.reply = ANSWER
    event = slack_double.mention("C1", "U1", "<@UBOT> fastest queue?")
    await bot.ask(event)

    ts = event["event"]["ts"]
    assert slack_double.answer("C1", ts) == ANSWER
    line = slack_double.routing_line("C1", ts)
    assert line.startswith(":compass: qwen2.5-coder:7b · general · 0.90 · openai"), line
    requests, calls = await rows(bot)
    assert [(r.source, r.fallback_reason) for r in requests] == [("openai", None)]
    assert [c.outcome for c in calls] == ["ok"]
    assert openai_double.calls == 2


async def test_without_fallback_on_rate_limit_a_429_every_time_still_ends_in_an_answer(
    slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double: OpenAIDouble
) -> None:
    openai_double.responder = lambda req: Reply.rate_limited("0.1")
    bot = await routed_bot(slack_bot_factory, openai_double, fallback_on_rate_limit=False)

    shown, _ = await ask_and_check(bot, slack_double, ollama_double, "rate_limited")

    assert "Decided by: local (meta-router rate-limited)" in shown
    assert openai_double.calls == 3


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        pytest.param(Reply.malformed(), "invalid_response", id="not-json"),
        pytest.param(Reply(content="Sure! I'd pick llama3.2:3b.", raw=True), "invalid_response", id="prose"),
        pytest.param(Reply.schema_violation(), "invalid_response", id="schema-violation"),
        pytest.param(Reply.schema_violation(confidence=7), "invalid_response", id="confidence-out-of-range"),
        pytest.param(Reply.unknown_model("gpt-9-ultra:900b"), "unknown_model", id="unknown-model"),
        pytest.param(Reply.refused(), "invalid_response", id="refusal"),
        pytest.param(Reply.truncated(), "invalid_response", id="truncated"),
        pytest.param(Reply(content="", raw=True), "invalid_response", id="empty"),
    ],
)
async def test_garbage_from_the_meta_router_is_never_followed(
    garbage: Reply,
    reason: str,
    slack_bot_factory,
    slack_double: SlackDouble,
    ollama_double,
    openai_double: OpenAIDouble,
) -> None:
    openai_double.push(garbage)
    bot = await routed_bot(slack_bot_factory, openai_double)

    shown, _ = await ask_and_check(bot, slack_double, ollama_double, reason)

    assert f"Decided by: local ({FALLBACK_TEXT[reason]})" in shown
    assert "gpt-9-ultra" not in shown  # the unknown name is not presented as a choice
    assert ollama_double.calls("/api/pull") == []


async def test_an_oversized_answer_from_a_lax_compatible_server_is_cut_to_size(
    slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double: OpenAIDouble
) -> None:
    # valid JSON, every field of the right type, but far longer than any router should write
    # (a non-strict OpenAI-compatible server ignores max_tokens and the schema's spirit)
    openai_double.push(
        Reply.decision(
            recommended_model="llama3.2:3b",
            reasoning="because " * 20_000,
            specializations_needed=["x" * 5000] * 50,
            raw=True,
        )
    )
    bot = await routed_bot(slack_bot_factory, openai_double)
    ollama_double.reply = ANSWER
    event = slack_double.mention("C1", "U1", "<@UBOT> fastest queue?")
    await asyncio.wait_for(bot.ask(event), 20)  # before the fix, packing the footer never ended

    ts = event["event"]["ts"]
    assert slack_double.answer("C1", ts) == ANSWER
    assert " · openai · " in slack_double.routing_line("C1", ts)
    shown = await details(bot, slack_double, "C1", ts)
    assert "Why: because because" in shown and len(shown) < 3000
    requests, _ = await rows(bot)
    assert len(str(requests[0].decision)) < 3000  # nor is the database asked to keep it all


@pytest.mark.parametrize(
    ("reply", "reason", "calls"),
    [
        pytest.param(Reply.html_page(200), "api_error", 1, id="html-page-200"),
        pytest.param(Reply.html_page(502), "api_error", 3, id="html-page-502"),
        pytest.param(
            Reply.http_error(401, "Incorrect API key provided: sk-test-***3456.", "invalid_api_key"),
            "api_error",
            1,
            id="key-refused",
        ),
    ],
)
async def test_a_proxy_page_or_a_refused_key_falls_back_and_says_nothing_of_the_key(
    reply: Reply,
    reason: str,
    calls: int,
    slack_bot_factory,
    slack_double: SlackDouble,
    ollama_double,
    openai_double: OpenAIDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    openai_double.responder = lambda req: reply
    bot = await routed_bot(slack_bot_factory, openai_double)

    shown, _ = await ask_and_check(bot, slack_double, ollama_double, reason)

    assert openai_double.calls == calls
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []  # an expected outage
    everything = "\n".join(str(c.args) for c in slack_double.api_calls)
    assert "sk-test" not in everything and "nginx" not in everything and "Bad Gateway" not in shown


async def test_a_named_model_is_followed_when_it_is_local_and_never_downloaded_when_it_is_not(
    slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double: OpenAIDouble
) -> None:
    ollama_double.add_pullable("mistral:7b", size_gb=4.1)
    openai_double.push(
        Reply.decision(recommended_model="qwen2.5-coder:7b", confidence=0.9),
        Reply.decision(recommended_model="mistral:7b", download_if_needed=True, confidence=0.9),
        Reply.decision(recommended_model="mistral:7b", download_if_needed=True, confidence=0.9),
    )
    bot = await routed_bot(slack_bot_factory, openai_double, cache_decisions=False)
    ollama_double.reply = ANSWER
    asked = [
        slack_double.mention("C1", "U1", "<@UBOT> answer with qwen2.5-coder:7b please: what is a deque?"),
        slack_double.mention("C1", "U1", "<@UBOT> answer with Mistral please: what is a deque?"),
        slack_double.mention("C1", "U2", "<@UBOT> what is a deque in python?"),  # names no model
    ]
    for event in asked:
        await bot.ask(event)

    lines = [slack_double.routing_line("C1", e["event"]["ts"]) for e in asked]
    assert " · openai · " in lines[0] and "qwen2.5-coder:7b" in lines[0]  # local: asking for it is fine
    assert " · local · " in lines[1] and lines[1].endswith(FALLBACK_TEXT["invalid_response"])
    assert "mistral:7b · " in lines[2] and " · openai · " in lines[2]  # the router's own choice is pulled
    assert len(ollama_double.calls("/api/pull")) == 1
