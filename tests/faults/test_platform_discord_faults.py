"""Discord faults in the middle of an answer, through the real discord.py client and the Discord
double: the gateway connection breaking without warning, and 429s on the posts an answer needs.
(A RECONNECT request with a replayed dispatch and a 429 on an edit are in tests/bot/test_discord.py.)"""

from __future__ import annotations

from tests.bot.test_discord import Harness, harness  # noqa: F401  (the fixture is used by name)


async def test_a_broken_gateway_connection_mid_answer_resumes_and_loses_nothing(
    harness: Harness,  # noqa: F811
) -> None:
    double, ollama = harness.double, harness.ollama
    reply = " ".join(f"tok{i}" for i in range(50))
    ollama.reply = reply
    ollama.token_delay = 0.04  # about 2 s of streaming
    await harness.start()
    alice, bob = double.person("Alice"), double.person("Bob")

    first = await harness.ask("tell me a long story", person=alice)
    await double.wait_for(lambda: "tok" in "".join(m["content"] for m in harness.parts(first["id"])))
    await double.drop()  # no RECONNECT, no goodbye: the socket is just gone
    second = await harness.ask("and a short one?", person=bob)  # sent while the bot is away

    await double.wait_for(lambda: double.resumes, within=10)
    [answer] = await harness.answer(first, within=15)
    await harness.answer(second, within=15)

    assert len(double.identifies) == 1  # the session resumed; nothing was re-identified
    assert answer["content"] == reply
    assert len(harness.parts(second["id"])) == 1  # the question sent during the outage was answered
    assert len(double.replies_to(first["id"])) == 1 and len(double.replies_to(second["id"])) == 1
    assert len(ollama.calls("/api/chat")) == 2


async def test_429s_on_the_posts_of_a_long_answer_are_waited_out_and_nothing_is_doubled(
    harness: Harness,  # noqa: F811
) -> None:
    double, ollama = harness.double, harness.ollama
    ollama.reply = "\n\n".join(f"Part {i}: " + "lorem ipsum dolor sit amet " * 8 for i in range(12))
    assert len(ollama.reply) > 2000  # two Discord messages
    ollama.token_delay = 0.005
    await harness.start()
    alice = double.person("Alice")
    # the placeholder and the answer's second message are each refused once with 429
    double.fail("POST", r"/channels/\d+/messages$", 429, times=1)
    question = await harness.ask("a long answer please", person=alice)
    await double.wait_for(lambda: harness.parts(question["id"]))
    double.fail("POST", r"/channels/\d+/messages$", 429, times=1)

    parts = await harness.answer(question, within=15)

    assert double.rate_limit_hits == 2
    assert len(parts) == 2
    shown = "".join("".join(p["content"].split()) for p in parts)
    assert shown == "".join(ollama.reply.split())  # complete, in order, once
    assert parts[-1]["embeds"]  # the routing block under the last part
    assert len(ollama.calls("/api/chat")) == 1
