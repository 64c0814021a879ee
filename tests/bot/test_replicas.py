"""Two real `serve` processes on one PostgreSQL database act as one bot.

Slack HTTP mode, each replica on its own port. The Slack double plays both the load balancer (it picks
the replica for each delivery) and its worst case: the same event delivered to both replicas at once,
as when Slack retries a slow delivery and the balancer sends the retry to the other replica. (In Socket
Mode Slack hands each event to one of the app's connections, so that case is covered here too.)
Scheduled jobs running once across replicas is tested in tests/core/test_scheduling.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.openai import Reply
from tests.doubles.slack import SlackDouble
from tests.serve_process import ServeProcess, events_url, free_port, serve_env, slack_http_mode, until

ANSWER = "Quicksort picks a pivot and sorts both sides."


@pytest.fixture
async def replicas(
    pg_url, slack_double: SlackDouble, ollama_double, openai_double, tmp_path: Path
) -> AsyncIterator[list[str]]:
    """Two replicas; yields their Slack events URLs. Every question goes to the meta-router (so a
    cached decision shows), which picks llama3.2:3b; a person may ask twice a minute."""
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = ANSWER
    openai_double.responder = lambda req: Reply.decision(recommended_model="llama3.2:3b")
    procs: list[ServeProcess] = []
    urls = []
    try:
        for name in ("a", "b"):
            env = serve_env(
                tmp_path / name,
                ollama_double.url,
                **slack_http_mode(slack_double, free_port()),
                DATABASE_URL=pg_url,
                METAROUTER_SCHEDULER_ENABLED="false",
                METAROUTER_USE_LOCAL_FOR_SIMPLE_QUERIES="false",
                METAROUTER_USER_RATE_PER_MINUTE="2",
                OPENAI_API_KEY="sk-test-key-123456",
                OPENAI_BASE_URL=openai_double.base_url,
            )
            procs.append(await ServeProcess.start(env, tmp_path / f"{name}.log"))
            urls.append(events_url(env))
        yield urls
    finally:
        codes = [await p.stop() for p in procs]
    assert codes == [0] * len(procs), [p.log.read_text()[-2000:] for p in procs]


def answered(slack: SlackDouble, e: dict[str, Any]) -> bool:
    return slack.answer(e["event"]["channel"], e["event"]["ts"]) == ANSWER


async def test_each_question_and_rating_counts_once_when_both_replicas_get_it(
    replicas: list[str], slack_double: SlackDouble
) -> None:
    slack = slack_double
    questions = [slack.mention(f"C{i % 3}", f"U{i}", f"<@UBOT> question number {i}") for i in range(6)]
    await asyncio.gather(*(slack.deliver(q, url=url) for q in questions for url in replicas))
    await until(
        lambda: all(answered(slack, q) for q in questions), within=60, what=lambda: slack.api_calls[-5:]
    )
    await asyncio.sleep(2)  # room for a second answer to show up, were one on its way

    for q in questions:
        channel, ts = q["event"]["channel"], q["event"]["ts"]
        assert len(slack.bot_replies(channel, ts)) == 1
        assert len([c for c in slack.calls("chat.postMessage") if c.args.get("thread_ts") == ts]) == 1

    # U9 rates every answer 👍, and U8 rates the first 👎; each reaction reaches both replicas
    def on_answer(user: str, q: dict[str, Any], reaction: str) -> dict[str, Any]:
        channel, ts = q["event"]["channel"], q["event"]["ts"]
        return slack.react(user, channel, slack.bot_replies(channel, ts)[0].ts, reaction)

    reactions = [on_answer("U9", q, "+1") for q in questions] + [on_answer("U8", questions[0], "-1")]
    await asyncio.gather(*(slack.deliver(r, url=url) for r in reactions for url in replicas))

    async def satisfaction(url: str) -> str:
        before = len(slack.responses)
        await slack.deliver(slack.command_payload("/models", "", user="U1"), kind="slash_commands", url=url)
        await until(lambda: len(slack.responses) > before, within=30)
        lines = slack.responses[-1].text.split("\n")
        return lines[next(i for i, ln in enumerate(lines) if ln.startswith("*llama3.2:3b*")) + 1]

    expected = "86% satisfied (7 votes)"  # 6 of 7: not 12 of 14
    deadline = time.monotonic() + 30
    while expected not in (line := await satisfaction(replicas[0])):
        assert time.monotonic() < deadline, line
        await asyncio.sleep(0.5)
    assert expected in await satisfaction(replicas[1])


async def test_limits_and_decisions_are_shared_whichever_replica_gets_the_message(
    replicas: list[str], slack_double: SlackDouble, openai_double
) -> None:
    slack = slack_double
    a, b = replicas

    async def ask(url: str, channel: str, user: str, text: str) -> dict[str, Any]:
        e = slack.mention(channel, user, f"<@UBOT> {text}")
        await slack.deliver(e, url=url)
        await until(
            lambda: answered(slack, e) or ":warning:" in _texts(slack, e),
            within=60,
            what=lambda: slack.thread(channel, e["event"]["ts"]),
        )
        return e

    # U7 may ask twice a minute: the third question is refused, though a different replica gets it
    first = await ask(a, "C1", "U7", "what is a monad?")
    second = await ask(b, "C2", "U7", "what is a functor?")
    third = await ask(a, "C3", "U7", "what is an applicative?")
    assert answered(slack, first) and answered(slack, second)
    assert not answered(slack, third)
    assert "You're asking faster than I can answer" in _texts(slack, third)

    # a decision made on replica a is reused by replica b: one meta-router call for two questions
    one = await ask(a, "C4", "U1", "explain quicksort")
    two = await ask(b, "C5", "U2", "explain quicksort")
    assert answered(slack, one) and answered(slack, two)
    asked = [r for r in openai_double.requests if "explain quicksort" in r.prompt]
    assert len(asked) == 1
    assert "cache" not in slack.routing_line("C4", one["event"]["ts"])
    assert "cache" in slack.routing_line("C5", two["event"]["ts"])


def _texts(slack: SlackDouble, e: dict[str, Any]) -> str:
    return "\n".join(m.visible() for m in slack.bot_replies(e["event"]["channel"], e["event"]["ts"]))
