"""Who voted for what, where chat users look: the expanded routing details on Slack and on Discord (after a
restart, so the votes come back from the stored decision and the Slack button, not from memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.bot.test_discord import ALTERNATIVE, MODEL, Harness, harness  # noqa: F401  (fixture by name)
from tests.bot.test_slack_interactive import button
from tests.doubles.discord import buttons, message_text
from tests.doubles.openai import OpenAIDouble, Reply

MEMBER_KEY = "sk-ant-chat-member-0123456789"


@pytest.fixture
async def second_router() -> AsyncIterator[OpenAIDouble]:
    double = await OpenAIDouble().start()
    yield double
    await double.stop()
    assert not double.problems, double.problems


def claude(double: OpenAIDouble) -> list[dict[str, object]]:
    return [dict(name="claude", model="claude-haiku", base_url=double.base_url, api_key=MEMBER_KEY, weight=2)]


async def test_slack_routing_details_list_each_vote(
    slack_bot_factory, slack_double, openai_double, second_router
) -> None:
    openai_double.responder = lambda req: Reply.decision(recommended_model="qwen2.5-coder:7b", confidence=0.9)
    second_router.responder = lambda req: Reply.decision(recommended_model="llama3.2:3b", confidence=0.3)
    bot = await slack_bot_factory(
        meta_router_enabled=True,
        openai_api_key="sk-test-key-123456",
        openai_base_url=openai_double.base_url,
        use_local_for_simple_queries=False,
        confidence_threshold=0.2,
        meta_routers=claude(second_router),
    )
    event = slack_double.mention("C1", "U1", "<@UBOT> speed up fib")
    await bot.ask(event)
    msg = slack_double.bot_replies("C1", event["event"]["ts"])[-1]
    # 0.9 against 2 × 0.3: the primary's pick wins with 0.9 of a total weight of 3
    assert "qwen2.5-coder:7b · general · 0.30 · openai" in slack_double.routing_line(
        "C1", event["event"]["ts"]
    )

    await slack_double.click(button(msg.buttons(), "Routing details"), message=msg)
    await bot.settle()
    shown = msg.visible()
    assert "Votes (2 of 2 counted):" in shown
    assert "• gpt-4o-mini: qwen2.5-coder:7b (confidence 0.90)" in shown
    assert "• claude: llama3.2:3b (confidence 0.30, weight 2)" in shown
    assert MEMBER_KEY not in str(msg.blocks)


async def test_discord_why_this_model_lists_each_vote_after_a_restart(
    harness: Harness,  # noqa: F811
    second_router,
) -> None:
    # the harness's primary router says llama3.2:3b at 0.88, which outweighs 2 × 0.3
    second_router.responder = lambda req: Reply.decision(recommended_model=ALTERNATIVE, confidence=0.3)
    harness.ollama.reply = "Forty-two."
    await harness.start(meta_routers=claude(second_router), confidence_threshold=0.2)
    alice = harness.double.person("Alice")
    question = await harness.ask("meaning of life?", person=alice)
    [answer] = await harness.answer(question)

    await harness.restart()  # the votes come back from the database
    why = next(b for b in buttons(answer) if b["label"] == "Why this model?")
    click = await harness.double.click(answer, why["custom_id"], person=alice)
    await harness.double.wait_for(lambda: click.callbacks)

    details = message_text(harness.double.messages[answer["id"]])
    assert f"Model: {MODEL}" in details
    assert f"• gpt-4o-mini: {MODEL} (confidence 0.88)" in details
    assert f"• claude: {ALTERNATIVE} (confidence 0.30, weight 2)" in details


def test_many_votes_and_a_long_reasoning_still_fit_a_slack_button() -> None:
    from bot.slack import render
    from core.types import Decision, Vote

    votes = tuple(
        Vote(
            member=f"router-{i}-{'x' * 30}",
            router_model="m" * 40,
            recommended_model="qwen2.5-coder:7b",
            confidence=0.5,
            latency_ms=100.0,
        )
        for i in range(12)
    )
    d = Decision(
        recommended_model="qwen2.5-coder:7b",
        confidence=0.5,
        reasoning="Long reasoning. " * 500,
        query_type="coding",
        complexity="simple",
        source="openai",
        votes=votes,
    )
    value = render.pack_footer(render.Footer(d, "1700000000.000100"))
    assert len(value) <= 2000
    back = render.unpack_footer(value).decision
    assert back.model_copy(update={"reasoning": d.reasoning}) == d  # whole but for the cut reasoning
    assert 0 < len(back.votes) < len(votes) and back.votes == votes[: len(back.votes)]
