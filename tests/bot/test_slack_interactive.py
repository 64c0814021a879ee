"""Slack's interactive parts: /route, /models, admin gating, the routing block's buttons, reactions."""

from __future__ import annotations

import json

import pytest

from tests.doubles.openai import Reply as OpenAIReply
from tests.doubles.slack import Msg, SlackBot, SlackDouble


def button(buttons: list[dict], label_start: str) -> dict:
    return next(b for b in buttons if b["text"]["text"].startswith(label_start))


def answer_blocks(m: Msg) -> list[dict]:
    return [b for b in m.blocks if b.get("block_id") == "mr_answer"]


@pytest.fixture
async def routed_bot(slack_bot_factory, openai_double) -> SlackBot:
    """A bot whose routing decisions come from the meta-router double (scripted per test)."""
    return await slack_bot_factory(
        meta_router_enabled=True,
        openai_api_key="sk-test-key-123456",
        openai_base_url=openai_double.base_url,
        use_local_for_simple_queries=False,
        slack_admin_users="UADMIN",
    )


# --- /route ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_route_shows_the_decision_only_to_the_asker_and_runs_it_on_request(
    mode: str, slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double
) -> None:
    openai_double.push(
        OpenAIReply.decision(
            recommended_model="qwen2.5-coder:7b",
            query_type="coding",
            confidence=0.91,
            reasoning="A Python debugging question.",
            alternatives=["llama3.2:3b"],
        )
    )
    bot = await slack_bot_factory(
        mode,
        meta_router_enabled=True,
        openai_api_key="sk-test-key-123456",
        openai_base_url=openai_double.base_url,
        use_local_for_simple_queries=False,
    )
    await slack_double.command("/route", "why does my recursion never stop?", user="U1", channel="C1")
    await bot.settle()

    assert len(slack_double.responses) == 1  # the response_url: ephemeral, only the asker sees it
    shown = slack_double.responses[0]
    assert shown.body["response_type"] == "ephemeral"
    assert "qwen2.5-coder:7b · coding · 0.91 · openai" in shown.text
    assert "Why: A Python debugging question." in shown.text and "Alternatives: llama3.2:3b" in shown.text
    assert ollama_double.calls("/api/chat") == []  # no generation
    assert slack_double.calls("chat.postMessage") == []  # nothing in the channel

    ollama_double.reply = "Add a base case."
    await slack_double.click(button(shown.buttons(), "Ask qwen2.5-coder:7b"), user="U1", channel="C1")
    await bot.settle()
    question = slack_double.channels["C1"][0]
    assert question.text.startswith("<@U1> asked:\n>why does my recursion never stop?")
    assert slack_double.answer("C1", question.ts) == "Add a base case."
    assert slack_double.responses[-1].body.get("delete_original") is True


async def test_route_usage_and_thread_context(routed_bot: SlackBot, slack_double, openai_double) -> None:
    ack = await slack_double.command("/route", "  ")
    assert "Usage: `/route QUESTION`" in ack["text"]

    parent = slack_double.post_as("C1", "U2", "we are debugging the payment service in Go")
    openai_double.push(OpenAIReply.decision(recommended_model="qwen2.5-coder:7b", query_type="coding"))
    await slack_double.command("/route", "what should I check next?", thread_ts=parent.ts)
    await routed_bot.settle()
    assert "payment service in Go" in openai_double.requests[-1].prompt
    assert "qwen2.5-coder:7b" in slack_double.responses[-1].text


# --- /models and admin gating -------------------------------------------------------------------------
async def test_models_lists_the_live_inventory_to_the_asker(routed_bot: SlackBot, slack_double) -> None:
    await slack_double.command("/models", "", user="U1")
    await routed_bot.settle()
    shown = slack_double.responses[-1]
    assert shown.body["response_type"] == "ephemeral"
    text = shown.text
    assert "*Models*: 2 local" in text
    assert "*llama3.2:3b* · local on http://127.0.0.1:" in text and "2.0 GB" in text
    assert "*mistral:7b* · downloadable" in text  # catalogued, not pulled
    assert "no votes" in text and "never used" in text
    assert shown.buttons() == []  # not an admin: no pull or remove


async def test_admins_get_pull_and_remove_and_others_are_told_no(
    routed_bot: SlackBot, slack_double, ollama_double
) -> None:
    ollama_double.add_pullable("mistral:7b", size_gb=4.1)

    ack = await slack_double.command("/models", "pull mistral:7b", user="U1")
    assert ack["text"] == "Only MetaRouter admins can pull or remove models."
    ack = await slack_double.command("/models", "remove llama3.2:3b", user="U1")
    assert ack["text"] == "Only MetaRouter admins can pull or remove models."
    await routed_bot.settle()
    assert ollama_double.calls("/api/pull") == [] and ollama_double.calls("/api/delete") == []

    ack = await slack_double.command("/models", "pull mistral:7b", user="UADMIN")
    assert ack["text"] == "Pulling mistral:7b…"
    await routed_bot.settle()
    assert slack_double.responses[-1].text == "mistral:7b is ready."
    assert "mistral:7b" in ollama_double.models

    await slack_double.command("/models", "", user="UADMIN")
    await routed_bot.settle()
    buttons = slack_double.responses[-1].buttons()
    remove = [b for b in buttons if b["action_id"] == "mr_remove"]
    pull = [b for b in buttons if b["action_id"] == "mr_pull"]
    assert {b["value"] for b in remove} == {"llama3.2:3b", "qwen2.5-coder:7b", "mistral:7b"} and pull

    # a non-admin pressing an admin button (an old message, a forwarded link) is refused too
    await slack_double.click(remove[0], user="U1")
    await routed_bot.settle()
    assert slack_double.responses[-1].text == "Only MetaRouter admins can pull or remove models."
    await slack_double.click(next(b for b in remove if b["value"] == "mistral:7b"), user="UADMIN")
    await routed_bot.settle()
    assert slack_double.responses[-1].text.startswith("Removed mistral:7b from http://127.0.0.1:")
    assert "mistral:7b" not in ollama_double.models

    ack = await slack_double.command("/models", "pull no-such-model:1b", user="UADMIN")
    await routed_bot.settle()
    assert slack_double.responses[-1].text.startswith(":warning: Could not pull no-such-model:1b")


# --- the routing block ----------------------------------------------------------------------------------
async def test_routing_block_expands_and_collapses_without_touching_the_answer(
    routed_bot: SlackBot, slack_double, ollama_double, openai_double
) -> None:
    openai_double.push(
        OpenAIReply.decision(
            recommended_model="qwen2.5-coder:7b",
            query_type="coding",
            complexity="moderate",
            reasoning="Needs code.",
            specializations_needed=["python", "debugging"],
            alternatives=["llama3.2:3b"],
            confidence=0.88,
        )
    )
    ollama_double.reply = "Use `functools.lru_cache`."
    event = slack_double.mention("C1", "U1", "<@UBOT> speed up fib")
    await routed_bot.ask(event)
    msg = slack_double.bot_replies("C1", event["event"]["ts"])[-1]
    answer_before = answer_blocks(msg)
    assert "qwen2.5-coder:7b · coding · 0.88 · openai" in slack_double.routing_line(
        "C1", event["event"]["ts"]
    )
    assert "Why:" not in msg.visible()

    await slack_double.click(button(msg.buttons(), "Routing details"), message=msg)
    await routed_bot.settle()
    shown = msg.visible()
    assert (
        "Why: Needs code." in shown
        and "Needs: python, debugging" in shown
        and "Alternatives: llama3.2:3b" in shown
    )
    assert "Decided by: openai in " in shown and "cost $" in shown
    assert "Satisfaction: no ratings yet" in shown
    assert answer_blocks(msg) == answer_before

    await slack_double.click(button(msg.buttons(), "Hide routing details"), message=msg)
    await routed_bot.settle()
    assert "Why:" not in msg.visible() and answer_blocks(msg) == answer_before
    assert button(msg.buttons(), "Routing details")


async def test_try_another_model_reruns_the_question_in_the_thread(
    routed_bot: SlackBot, slack_double, ollama_double, openai_double
) -> None:
    openai_double.push(
        OpenAIReply.decision(recommended_model="qwen2.5-coder:7b", alternatives=["llama3.2:3b"])
    )
    event = slack_double.mention("C1", "U1", "<@UBOT> explain closures")
    await routed_bot.ask(event)
    msg = slack_double.bot_replies("C1", event["event"]["ts"])[-1]
    openai_double.push(
        OpenAIReply.decision(recommended_model="qwen2.5-coder:7b", alternatives=["llama3.2:3b"])
    )
    await slack_double.click(button(msg.buttons(), "Try llama3.2:3b"), message=msg, user="U2")
    await routed_bot.settle()

    replies = slack_double.bot_replies("C1", event["event"]["ts"])
    assert len(replies) == 2
    chats = ollama_double.calls("/api/chat")
    assert [c.body["model"] for c in chats] == ["qwen2.5-coder:7b", "llama3.2:3b"]
    assert chats[-1].body["messages"][-1]["content"] == "Alice: explain closures"
    assert "llama3.2:3b" in slack_double.routing_line("C1", event["event"]["ts"])


# --- reactions --------------------------------------------------------------------------------------------
async def test_reactions_are_ratings_one_per_person_per_answer(
    routed_bot: SlackBot, slack_double, ollama_double, openai_double
) -> None:
    openai_double.push(OpenAIReply.decision(recommended_model="llama3.2:3b"))
    ollama_double.reply = "\n\n".join(f"Part {i}: " + "lorem ipsum dolor sit amet " * 20 for i in range(12))
    event = slack_double.mention("C1", "U1", "<@UBOT> write an essay")
    await routed_bot.ask(event)
    parts = slack_double.bot_replies("C1", event["event"]["ts"])
    assert len(parts) >= 2

    async def satisfaction() -> str:
        """The line under llama3.2:3b in /models."""
        await slack_double.command("/models", "", user="U1")
        await routed_bot.settle()
        lines = slack_double.responses[-1].text.split("\n")
        return lines[next(i for i, ln in enumerate(lines) if ln.startswith("*llama3.2:3b*")) + 1]

    await routed_bot.ask(slack_double.react("U2", "C1", parts[0].ts, "+1::skin-tone-3"))
    await routed_bot.ask(slack_double.react("U2", "C1", parts[-1].ts, "heart"))  # same person, another part
    assert "100% satisfied (1 vote)" in await satisfaction()

    await routed_bot.ask(slack_double.react("U3", "C1", parts[-1].ts, "-1"))
    assert "50% satisfied (2 votes)" in await satisfaction()

    # the expanded routing block shows the model's satisfaction too
    msg = parts[-1]
    await slack_double.click(button(msg.buttons(), "Routing details"), message=msg)
    await routed_bot.settle()
    assert "Satisfaction: 50% positive (2 ratings)" in msg.visible()

    # removing a reaction withdraws it; reactions elsewhere and unknown emoji change nothing
    await routed_bot.ask(slack_double.react("U3", "C1", parts[-1].ts, "-1", added=False))
    await routed_bot.ask(slack_double.react("U4", "C1", event["event"]["ts"], "+1"))  # on the question
    await routed_bot.ask(slack_double.react("U5", "C1", parts[0].ts, "eyes"))
    assert "100% satisfied (1 vote)" in await satisfaction()
    await routed_bot.ask(slack_double.react("U2", "C1", parts[-1].ts, "heart", added=False))
    assert "no votes" in await satisfaction()


async def test_ack_payloads_are_plain_json(routed_bot: SlackBot, slack_double) -> None:
    ack = await slack_double.command("/models", "frobnicate")
    assert json.dumps(ack) and ack["text"].startswith("Usage: `/models`")
