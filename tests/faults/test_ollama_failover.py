"""An Ollama host that dies in the middle of an answer: the answer is generated again elsewhere."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from core.store import create_engine


async def answers(url: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            q = "SELECT host, status, chars FROM answers ORDER BY id"
            return [tuple(r) for r in (await conn.execute(text(q))).all()]
    finally:
        await engine.dispose()


@pytest.fixture
async def two_hosts(ollama_factory):
    a = await ollama_factory(reply="The first host starts to answer and then dies.")
    b = await ollama_factory(reply="The second host gives the whole answer.")
    for host in (a, b):
        host.add_model("llama3.2:3b", size_gb=2.0)
    a.loaded.add("llama3.2:3b")  # so the first host is preferred
    a.drop_after_tokens = 3  # the host goes away mid-stream
    return a, b


async def test_a_host_failing_mid_answer_hands_over_to_another(
    slack_bot_factory, slack_double, two_hosts, tmp_path
) -> None:
    a, b = two_hosts
    bot = await slack_bot_factory(ollama_hosts=f"{a.url},{b.url}")
    q = slack_double.mention("C1", "U1", "<@UBOT> tell me something")
    await bot.ask(q)

    shown = slack_double.answer("C1", q["event"]["ts"])
    # the partial answer stays in view, then the full one from the other host, and a note says why
    assert shown.startswith("The first host ")
    assert f"{a.url} stopped mid-answer; answering again on {b.url}" in shown
    assert "The second host gives the whole answer." in shown
    assert f"{a.url} failed mid-answer (" in shown and f"answered again on {b.url}." in shown
    assert ":warning:" not in shown  # it ended well
    assert await answers(str(bot.app.settings.db_url)) == [
        (a.url, "incomplete", len("The first host ")),
        (b.url, "ok", len("The second host gives the whole answer.")),
    ]
    # a rating on the answer rates the one that finished
    last = slack_double.bot_replies("C1", q["event"]["ts"])[-1].ts
    await bot.ask(slack_double.react("U1", "C1", last, "+1"))
    stats = (await bot.app.store.model_stats())["llama3.2:3b"]
    assert stats.feedback_count == 1


async def test_a_host_dying_mid_answer_with_no_other_leaves_the_partial_answer_and_a_hint(
    slack_bot_factory, slack_double, ollama_factory
) -> None:
    only = await ollama_factory(reply="Half of an answer that never ends.")
    only.add_model("llama3.2:3b", size_gb=2.0)
    only.error_after_tokens = 3  # the model's runner dies: an error line mid-stream
    bot = await slack_bot_factory(ollama_host=only.url)
    q = slack_double.mention("C1", "U1", "<@UBOT> tell me something")
    await bot.ask(q)

    shown = slack_double.answer("C1", q["event"]["ts"])
    assert shown.startswith("Half of an\n")
    assert "The answer was cut short" in shown and "Mention me again to retry." in shown
    assert await answers(str(bot.app.settings.db_url)) == [(only.url, "incomplete", len("Half of an "))]
