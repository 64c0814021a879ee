"""Hostile input on Slack and Discord, end to end, against doubles that fall for every trick.

For each input the issue lists: a short answer or a clear refusal, in bounded time; the routing
decision names a model the inventory knows; no model is pulled because a message asked for one; and
neither system prompt (the meta-router's, the answering model's) reaches the chat.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.bot.test_discord import Harness, harness  # noqa: F401  (the fixture is used by name)
from tests.doubles.discord import buttons, message_text
from tests.doubles.slack import SlackBot, SlackDouble
from tests.faults.hostile import HOSTILE, LOCAL, PULLABLE, Hostile, gullible_model, gullible_router, leaked

BOUND_S = 20.0  # generous: this is about never hanging, not about speed
SHORT = 1500  # characters: a hint, a refusal or the model's short answer plus notes


def everything_slack_showed(double: SlackDouble) -> str:
    """Every text the bot wrote to Slack: messages, every edit, blocks and button values, ephemerals."""
    out = []
    for c in double.calls("chat.postMessage") + double.calls("chat.update"):
        out += [str(c.args.get("text") or ""), json.dumps(c.args.get("blocks") or [], ensure_ascii=False)]
    out += [json.dumps(r.body, ensure_ascii=False) for r in double.responses]
    return "\n".join(out).replace("\\n", "\n")


@pytest.fixture
async def slack_bot(slack_bot_factory, ollama_double, openai_double) -> SlackBot:
    for name, size in PULLABLE.items():
        ollama_double.add_pullable(name, size_gb=size)
    ollama_double.reply = gullible_model
    ollama_double.token_delay = 0.01  # streamed, so edits show the answer while it grows
    openai_double.responder = gullible_router
    return await slack_bot_factory(
        meta_router_enabled=True,
        openai_api_key="sk-test-key-123456",
        openai_base_url=openai_double.base_url,
        use_local_for_simple_queries=False,
        max_question_chars=4000,
    )


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.id for h in HOSTILE])
async def test_slack_hostile_input(
    hostile: Hostile, slack_bot: SlackBot, slack_double: SlackDouble, ollama_double, openai_double
) -> None:
    event = slack_double.mention("C1", "U1", f"<@UBOT> {hostile.text}")
    if hostile.files:
        event["event"]["files"] = [{"id": f"F{i}", "name": n} for i, n in enumerate(hostile.files)]
        event["event"]["subtype"] = "file_share"
    ts = event["event"]["ts"]
    await asyncio.wait_for(slack_bot.ask(event), BOUND_S)

    replies = slack_double.bot_replies("C1", ts)
    assert len(replies) == 1
    shown = slack_double.answer("C1", ts)
    assert shown and len(shown) < SHORT, shown[:300]
    assert "Traceback" not in shown
    if hostile.files:
        assert "I can't read attachments" in shown and hostile.files[0] in shown
    if hostile.answered:
        line = slack_double.routing_line("C1", ts)
        assert line.split(" · ")[0].removeprefix(":compass: ") in LOCAL, line
        await _expand(slack_bot, slack_double, replies[-1])
    else:
        assert ollama_double.calls("/api/chat") == [] and openai_double.calls == 0
    assert ollama_double.calls("/api/pull") == []  # nothing pulled because a message asked
    assert set(ollama_double.models) == set(LOCAL)
    assert leaked(everything_slack_showed(slack_double)) == []


async def _expand(bot: SlackBot, double: SlackDouble, msg: Any) -> None:
    """Opens the routing details: what they say must be as safe as the answer."""
    expand = next(b for b in msg.buttons() if b["text"]["text"] == "Routing details")
    await double.click(expand, message=msg)
    await bot.settle()
    assert "Why:" in msg.visible()


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.id for h in HOSTILE])
async def test_discord_hostile_input(hostile: Hostile, harness: Harness, openai_double) -> None:  # noqa: F811
    double, ollama, openai = harness.double, harness.ollama, openai_double
    for name, size in PULLABLE.items():
        ollama.add_pullable(name, size_gb=size)
    ollama.reply = gullible_model
    ollama.token_delay = 0.01
    openai.responder = gullible_router
    await harness.start(max_question_chars=4000, discord_edit_interval_s=0.1)
    alice = double.person("Alice")

    question = await double.post(double.general, alice, hostile.text, mention_bot=True, files=hostile.files)
    parts = await asyncio.wait_for(harness.answer(question), BOUND_S)

    assert len(parts) == 1
    shown = message_text(parts[0])
    assert shown and len(shown) < SHORT, shown[:300]
    if hostile.files:
        assert "can't read attachments" in shown and hostile.files[0] in shown
    if hostile.answered:
        summary = parts[0]["embeds"][0]["description"]
        assert summary.removeprefix("-# ").split(" · ")[0] in LOCAL, summary
        why = next(b for b in buttons(parts[0]) if b["label"] == "Why this model?")
        click = await double.click(parts[0], why["custom_id"], person=alice)
        await double.wait_for(lambda: click.callbacks)  # the details, for the leak check below
    else:
        assert ollama.calls("/api/chat") == [] and openai.calls == 0
    assert ollama.calls("/api/pull") == []
    assert set(ollama.models) == set(LOCAL)
    sent = [json.dumps(r.body, ensure_ascii=False) for r in double.requests if r.method in ("POST", "PATCH")]
    assert leaked("\n".join(sent).replace("\\n", "\n")) == []


async def test_slack_asking_too_fast_gets_a_polite_wait_and_others_are_still_answered(
    slack_bot_factory, slack_double: SlackDouble, ollama_double
) -> None:
    ollama_double.reply = "Here is a short answer."
    bot = await slack_bot_factory(user_rate_per_minute=2, channel_rate_per_minute=3)
    asked = [slack_double.mention("C1", "U1", f"<@UBOT> question {i}") for i in range(3)]
    for event in asked:
        await bot.ask(event)
    shown = [slack_double.answer("C1", e["event"]["ts"]) for e in asked]
    assert shown[:2] == ["Here is a short answer."] * 2
    assert shown[2].startswith(":warning: You're asking faster than I can answer; try again in ")
    other = slack_double.mention("C1", "U2", "<@UBOT> my turn?")
    await bot.ask(other)
    assert slack_double.answer("C1", other["event"]["ts"]) == "Here is a short answer."
    assert len(ollama_double.calls("/api/chat")) == 3


async def test_discord_asking_too_fast_gets_a_polite_wait(harness: Harness) -> None:  # noqa: F811
    double = harness.double
    harness.ollama.reply = "Here is a short answer."
    await harness.start(user_rate_per_minute=1)
    alice = double.person("Alice")
    first = await harness.ask("question one", person=alice)
    [answer] = await harness.answer(first)
    second = await harness.ask("question two", person=alice)
    [limited] = await harness.answer(second)
    assert answer["content"] == "Here is a short answer."
    assert limited["content"].startswith("⚠️ You're asking faster than I can answer; try again in ")
    assert len(harness.ollama.calls("/api/chat")) == 1


ROUTED = [h for h in HOSTILE if h.text.strip()]


@pytest.mark.parametrize("hostile", ROUTED, ids=[h.id for h in ROUTED])
async def test_slack_route_with_hostile_input_shows_a_decision_from_the_inventory(
    hostile: Hostile, slack_bot: SlackBot, slack_double: SlackDouble, ollama_double, caplog
) -> None:
    await slack_double.command("/route", hostile.text[:3000])  # Slack cuts a command's text short
    await asyncio.wait_for(slack_bot.settle(), BOUND_S)

    [shown] = slack_double.responses
    assert shown.body["response_type"] == "ephemeral"
    known = (await slack_bot.app.service.inventory.snapshot()).names()
    model = shown.body["text"].removeprefix("Routing decision: ")
    assert model in known, shown.body["text"]  # a decision, not "Something went wrong"
    assert model != "mistral:7b"  # not the model the question told the router to pick
    assert ollama_double.calls("/api/pull") == [] and ollama_double.calls("/api/chat") == []
    assert leaked(everything_slack_showed(slack_double)) == []
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


DISCORD_ROUTED = [h for h in ROUTED if h.id in ("binary", "choose-catalogued", "reveal")]


@pytest.mark.parametrize("hostile", DISCORD_ROUTED, ids=[h.id for h in DISCORD_ROUTED])
async def test_discord_route_with_hostile_input_shows_a_decision_from_the_inventory(
    hostile: Hostile,
    harness: Harness,  # noqa: F811
    openai_double,
) -> None:
    double = harness.double
    openai_double.responder = gullible_router
    await harness.start()
    routed = await double.slash("route", {"question": hostile.text}, person=double.person("Alice"))
    await double.wait_for(lambda: routed.original and routed.original.get("content"))

    shown = message_text(routed.original)
    known = (await harness.app.service.inventory.snapshot()).names()
    model = shown.removeprefix("**Routing:** ").split(" · ")[0]
    assert model in known and model != "mistral:7b", shown
    assert "Something went wrong" not in shown and leaked(shown) == []
    assert harness.ollama.calls("/api/pull") == []


HTTP_CASES = [h for h in HOSTILE if h.id in ("binary", "100k", "choose-catalogued")]


@pytest.mark.parametrize("hostile", HTTP_CASES, ids=[h.id for h in HTTP_CASES])
async def test_slack_http_mode_takes_hostile_input_too(
    hostile: Hostile, slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double
) -> None:
    for name, size in PULLABLE.items():
        ollama_double.add_pullable(name, size_gb=size)
    ollama_double.reply = gullible_model
    openai_double.responder = gullible_router
    bot = await slack_bot_factory(
        "http",
        meta_router_enabled=True,
        openai_api_key="sk-test-key-123456",
        openai_base_url=openai_double.base_url,
        use_local_for_simple_queries=False,
    )
    event = slack_double.mention("C1", "U1", f"<@UBOT> {hostile.text}")
    status, _ = await asyncio.wait_for(bot.ask(event), BOUND_S)  # signed, over the Events API

    assert status == 200
    ts = event["event"]["ts"]
    assert slack_double.answer("C1", ts).startswith("Here is a short answer.")
    assert slack_double.routing_line("C1", ts).split(" · ")[0].removeprefix(":compass: ") in LOCAL
    assert ollama_double.calls("/api/pull") == []
