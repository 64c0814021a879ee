"""Hostile input and privacy through the Slack adapter, as people in the channel see it."""

from __future__ import annotations

from tests.doubles.openai import Reply as OpenAIReply
from tests.doubles.slack import SlackDouble


async def test_an_empty_mention_gets_a_short_hint(
    slack_bot_factory, slack_double: SlackDouble, ollama_double
) -> None:
    bot = await slack_bot_factory()
    event = slack_double.mention("C1", "U1", "<@UBOT>  ")
    await bot.ask(event)
    shown = slack_double.answer("C1", event["event"]["ts"])
    assert "I didn't find a question in that message" in shown
    assert ollama_double.calls("/api/chat") == []


async def test_a_huge_message_is_answered_and_the_user_told_it_was_cut(
    slack_bot_factory, slack_double: SlackDouble, ollama_double
):
    ollama_double.reply = "It is a disk-full loop."
    bot = await slack_bot_factory(max_question_chars=2000)
    event = slack_double.mention("C1", "U1", "<@UBOT> what is wrong here?\n" + "ERROR disk full\n" * 6000)
    await bot.ask(event)
    ts = event["event"]["ts"]
    shown = "\n".join(m.text for m in slack_double.bot_replies("C1", ts))
    assert "It is a disk-full loop." in shown
    assert "I read only the first 2,000" in shown
    assert len(ollama_double.calls("/api/chat")[0].body["messages"][-1]["content"]) < 2100


async def test_local_only_channels_and_workspaces_never_reach_the_meta_router(
    slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double
):
    openai_double.push(OpenAIReply.decision(recommended_model="llama3.2:3b"))
    bot = await slack_bot_factory(
        openai_api_key="sk-test-key-123456",
        openai_base_url=openai_double.base_url,
        meta_router_enabled=True,
        use_local_for_simple_queries=False,
        local_only_channels=["CSECRET"],
    )
    key = "sk-proj-abcdefghijklmnopqrstuvwxyz1234"
    private = slack_double.mention("CSECRET", "U1", f"<@UBOT> my key is {key}")
    await bot.ask(private)
    assert openai_double.calls == 0
    assert "local-only channel" in slack_double.routing_line("CSECRET", private["event"]["ts"])

    public = slack_double.mention("C1", "U1", f"<@UBOT> my key is {key}")
    await bot.ask(public)
    assert openai_double.calls == 1
    assert key not in openai_double.requests[0].prompt
    assert "[SECRET:openai]" in openai_double.requests[0].prompt


async def test_a_local_only_workspace_covers_all_its_channels(
    slack_bot_factory, slack_double: SlackDouble, ollama_double, openai_double
):
    bot = await slack_bot_factory(
        openai_api_key="sk-test-key-123456",
        openai_base_url=openai_double.base_url,
        meta_router_enabled=True,
        use_local_for_simple_queries=False,
        local_only_workspaces=[slack_double.team_id],
    )
    event = slack_double.mention("C7", "U1", "<@UBOT> explain monads")
    await bot.ask(event)
    assert openai_double.calls == 0
    assert "local-only channel" in slack_double.routing_line("C7", event["event"]["ts"])


async def test_attachments_the_bot_cannot_read_get_a_short_note(
    slack_bot_factory, slack_double: SlackDouble, ollama_double
) -> None:
    ollama_double.reply = "Probably a timeout."
    bot = await slack_bot_factory()
    only_file = slack_double.mention("C1", "U1", "<@UBOT>")
    only_file["event"]["files"] = [{"id": "F1", "name": "crash.log"}]
    await bot.ask(only_file)
    shown = slack_double.answer("C1", only_file["event"]["ts"])
    assert "I can't read attachments (crash.log)" in shown
    assert ollama_double.calls("/api/chat") == []

    with_text = slack_double.mention("C1", "U2", "<@UBOT> why did this crash?")
    with_text["event"]["files"] = [{"id": "F2", "name": "trace.png"}]
    await bot.ask(with_text)
    shown = "\n".join(m.text for m in slack_double.bot_replies("C1", with_text["event"]["ts"]))
    assert "Probably a timeout." in shown and "I can't read attachments (trace.png)" in shown
