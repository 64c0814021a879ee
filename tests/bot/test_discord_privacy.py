"""Local-only places on Discord: a channel, the threads under it, and a whole guild send nothing to the
meta-router."""

from __future__ import annotations

from tests.bot.test_discord import Harness, harness  # noqa: F401  (the fixture, shared)
from tests.doubles.openai import OpenAIDouble


async def test_a_local_only_channel_and_its_threads_send_nothing_to_the_meta_router(
    harness: Harness,  # noqa: F811
    openai_double: OpenAIDouble,
) -> None:
    double = harness.double
    harness.ollama.reply = "Use a deque."
    await harness.start(discord_thread_per_mention=True, local_only_channels=[str(double.general)])
    alice = double.person("Alice")

    question = await harness.ask("fastest queue? key sk-proj-abcdefghijklmnopqrstuvwx", person=alice)
    await double.wait_for(lambda: double.by_bot(question["id"]))
    await harness.settled()
    # the follow-up is in the thread: its channel id is the thread's, its parent is the local-only one
    follow_up = await harness.ask("and from the left?", person=alice, channel=question["id"])
    await harness.answer(follow_up)
    assert len(harness.ollama.calls("/api/chat")) == 2
    assert openai_double.calls == 0


async def test_other_channels_still_use_the_meta_router(
    harness: Harness,  # noqa: F811
    openai_double: OpenAIDouble,
) -> None:
    await harness.start(local_only_channels=["123"])
    question = await harness.ask("fastest queue in python?", person=harness.double.person("Alice"))
    await harness.answer(question)
    assert openai_double.calls == 1
