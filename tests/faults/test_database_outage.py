"""The database unreachable for a while: answers keep coming, and nothing is lost.

PostgreSQL is reached through a loopback TCP proxy that the test cuts and restores, so the bot's
real engine sees a real outage (connections reset, new ones refused).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from sqlalchemy import text

from bot.http import HttpServer
from bot.serve import buffer_info, health_checks
from core.metrics import Metrics
from core.store import create_engine
from tests.doubles.tcpproxy import TcpProxy
from tests.serve_process import ServeProcess, serve_env, slack_socket_mode, until

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@pytest.fixture
async def proxied(db_url: str):
    """(url through the proxy, the proxy, an engine that reads the database directly)."""
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    base, name = db_url.rsplit("/", 1)
    url = f"{base.rsplit('@', 1)[0]}@127.0.0.1:{proxy.port}/{name}"
    direct = create_engine(db_url)
    yield url, proxy, direct
    await proxy.stop()
    await direct.dispose()


async def rows(engine, sql: str) -> list[tuple]:
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql))).all()]


async def drained(bot, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while bot.app.store.buffer_state().pending:
        assert time.monotonic() < deadline, bot.app.store.buffer_state()
        await asyncio.sleep(0.1)


async def test_an_outage_loses_no_request_answer_or_rating(
    slack_bot_factory, slack_double, ollama_double, proxied
) -> None:
    url, proxy, direct = proxied
    ollama_double.reply = "Forty two."
    bot = await slack_bot_factory(database_url=url, db_write_timeout_s=2)
    before = slack_double.mention("C1", "U1", "<@UBOT> what is six times seven?")
    await bot.ask(before)
    first_answer = slack_double.bot_replies("C1", before["event"]["ts"])[-1].ts

    await proxy.stop()
    during = slack_double.mention("C1", "U2", "<@UBOT> and seven times six?")
    await bot.ask(during)
    # the user notices nothing: the answer is there, with its routing line
    assert slack_double.answer("C1", during["event"]["ts"]) == "Forty two."
    assert "llama3.2:3b" in slack_double.routing_line("C1", during["event"]["ts"])
    second_answer = slack_double.bot_replies("C1", during["event"]["ts"])[-1].ts
    # ratings while the database is away: on the answer still buffered, and on one written before
    await bot.ask(slack_double.react("U1", "C1", second_answer, "+1"))
    await bot.ask(slack_double.react("U2", "C1", second_answer, "-1"))
    await bot.ask(slack_double.react("U2", "C1", second_answer, "-1", added=False))  # taken back
    await bot.ask(slack_double.react("U3", "C1", first_answer, "heart"))
    state = bot.app.store.buffer_state()
    assert state.pending > 0 and state.dropped == 0
    # operators see it: the database is down and how many writes wait for it
    http = HttpServer(bot.app.settings)
    http.ops(health_checks(bot.app, []), Metrics(bot.app.store), info=buffer_info(bot.app))
    await http.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{http.port}/healthz") as resp:
                health = await resp.json()
            async with session.get(f"http://127.0.0.1:{http.port}/metrics") as resp:
                metrics = await resp.text()
    finally:
        await http.close()
    assert health["status"] == "degraded" and health["checks"]["database"] == "down"
    assert health["database_buffer"]["pending"] == state.pending
    assert f"metarouter_database_buffered {float(state.pending)}" in metrics
    assert len(await rows(direct, "SELECT id FROM requests")) == 1  # nothing of it reached the database
    cut_at = await rows(direct, "SELECT now()")

    await proxy.start()
    await drained(bot)

    requests = await rows(direct, "SELECT user_id, created_at FROM requests ORDER BY id")
    assert [u for u, _ in requests] == ["U1", "U2"]
    assert requests[1][1] < cut_at[0][0]  # recorded when it was asked, not when it was written
    answers = await rows(direct, "SELECT id, status, model FROM answers ORDER BY id")
    assert [(s, m) for _, s, m in answers] == [("ok", "llama3.2:3b"), ("ok", "llama3.2:3b")]
    messages = await rows(direct, "SELECT answer_id, message_id FROM answer_messages ORDER BY id")
    assert (answers[1][0], second_answer) in messages
    feedback = await rows(
        direct, "SELECT answer_id, user_id, rating FROM feedback ORDER BY answer_id, user_id"
    )
    assert feedback == [(answers[0][0], "U3", 1), (answers[1][0], "U1", 1)]


async def test_a_restart_during_the_outage_loses_nothing(
    slack_bot_factory, slack_double, ollama_double, proxied
) -> None:
    url, proxy, direct = proxied
    first = await slack_bot_factory(database_url=url, db_write_timeout_s=2)
    await proxy.stop()
    q = slack_double.mention("C1", "U1", "<@UBOT> hello?")
    await first.ask(q)
    answer_ts = slack_double.bot_replies("C1", q["event"]["ts"])[-1].ts
    await first.ask(slack_double.react("U1", "C1", answer_ts, "+1"))
    assert first.app.store.buffer_state().pending > 0
    await first.close()  # the database is still away: the writes stay in the spool

    await proxy.start()
    second = await slack_bot_factory(database_url=url, db_write_timeout_s=2)
    await drained(second)

    assert await rows(direct, "SELECT user_id FROM requests") == [("U1",)]
    assert await rows(direct, "SELECT status FROM answers") == [("ok",)]
    assert await rows(direct, "SELECT user_id, rating FROM feedback") == [("U1", 1)]


async def test_serve_starts_and_answers_while_the_database_is_down(
    slack_double, ollama_double, proxied, tmp_path
) -> None:
    url, proxy, direct = proxied
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = "Answered without a database."
    env = serve_env(
        tmp_path / "data",
        ollama_double.url,
        **slack_socket_mode(slack_double),
        METAROUTER_HTTP_PORT="0",
        METAROUTER_SLACK_UPDATE_INTERVAL_S="0.05",
        DATABASE_URL=url,
        METAROUTER_DB_WRITE_TIMEOUT_S="2",
    )
    await proxy.stop()
    proc = await ServeProcess.start(env, tmp_path / "serve.log")
    try:
        await slack_double.wait_for_socket(within=60)
        q = slack_double.mention("C1", "U1", "<@UBOT> are you there?")
        await slack_double.deliver(q)
        await until(
            lambda: slack_double.answer("C1", q["event"]["ts"]) == "Answered without a database.",
            what=lambda: slack_double.thread("C1", q["event"]["ts"]),
        )

        await proxy.start()  # the schema is created, then what was buffered is written
        deadline = time.monotonic() + 60
        while True:
            try:
                if await rows(direct, "SELECT status FROM answers") == [("ok",)]:
                    break
            except Exception:  # no table yet
                pass
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
        assert await rows(direct, "SELECT user_id FROM requests") == [("U1",)]
    finally:
        assert await proc.stop(within=30) == 0
