"""A serve process that stops in the middle of answers: its answers are marked interrupted, in the
chat and in the database, and never while the process writing them is alive."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from bot.slack import render
from core.recovery import Recovery
from core.store import create_engine
from tests.serve_process import ServeProcess, serve_env, slack_socket_mode, until


async def statuses(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return [r[0] for r in (await conn.execute(text("SELECT status FROM answers ORDER BY id"))).all()]
    finally:
        await engine.dispose()


async def test_a_killed_process_leaves_answers_the_next_start_marks_interrupted(
    slack_double, ollama_double, tmp_path
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = "A long answer that will never be finished by this process."
    ollama_double.stall_after_tokens = 4
    env = serve_env(
        tmp_path / "data",
        ollama_double.url,
        **slack_socket_mode(slack_double),
        METAROUTER_HTTP_PORT="0",
        METAROUTER_SLACK_UPDATE_INTERVAL_S="0.05",
        METAROUTER_REPLICA_HEARTBEAT_S="1",
    )
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'metarouter.db'}"
    first = await ServeProcess.start(env, tmp_path / "first.log")
    try:
        await slack_double.wait_for_socket(within=60)
        q = slack_double.mention("C1", "U1", "<@UBOT> explain everything")
        await slack_double.deliver(q)
        ts = q["event"]["ts"]
        await until(
            lambda: "A long answer that" in slack_double.answer("C1", ts),
            what=lambda: slack_double.thread("C1", ts),
        )
    finally:
        await first.kill()  # no shutdown at all: the answer is left half-written
    assert await statuses(url) == ["streaming"]

    second = await ServeProcess.start(env, tmp_path / "second.log")
    try:
        await until(
            lambda: render.RESTART_NOTE in slack_double.bot_replies("C1", ts)[-1].visible(),
            what=lambda: slack_double.bot_replies("C1", ts)[-1].visible(),
        )
        last = slack_double.bot_replies("C1", ts)[-1]
        assert last.visible().startswith("A long answer that")  # what was shown stays
        again = next(b for b in last.buttons() if b["text"]["text"].startswith("Try again"))
        assert '"q":"' + ts in again["value"]  # the retry re-asks that question
        assert await statuses(url) == ["incomplete"]

        ollama_double.stall_after_tokens = None
        await slack_double.click(again, message=last)  # the retry answers in full, in the same thread
        full = ollama_double.reply
        await until(
            lambda: full in slack_double.bot_replies("C1", ts)[-1].visible(),
            what=lambda: slack_double.thread("C1", ts),
        )
        assert await statuses(url) == ["incomplete", "ok"]
    finally:
        assert await second.stop(within=30) == 0


async def test_a_starting_replica_leaves_a_live_replicas_answers_alone(
    slack_bot_factory, slack_double, ollama_double
) -> None:
    ollama_double.reply = "Slowly but surely, the answer arrives."
    ollama_double.stall_after_tokens = 2
    a = await slack_bot_factory()
    a_alive = Recovery(a.app.store, heartbeat_s=0.3, notify=a.adapter.mark_interrupted)
    await a_alive.start()
    q = slack_double.mention("C1", "U1", "<@UBOT> take your time")
    await slack_double.deliver(q)
    ts = q["event"]["ts"]
    url = str(a.app.settings.db_url)
    await until(lambda: "Slowly but" in slack_double.answer("C1", ts))  # its answer row is written by now

    b = await slack_bot_factory()  # another replica on the same database starts
    b_sweeps = Recovery(b.app.store, heartbeat_s=0.3, notify=b.adapter.mark_interrupted)
    await b_sweeps.start()
    await asyncio.sleep(1.5)  # several of B's sweeps, while A keeps its heartbeat
    assert await b_sweeps.sweep() == []
    assert await statuses(url) == ["streaming"]
    assert render.RESTART_NOTE not in slack_double.bot_replies("C1", ts)[-1].visible()

    assert a_alive._task is not None
    a_alive._task.cancel()  # A's heartbeat stops, as if the process had died (no retiring)
    await until(lambda: render.RESTART_NOTE in slack_double.bot_replies("C1", ts)[-1].visible(), within=10)
    assert await statuses(url) == ["incomplete"]
    await b_sweeps.close()
    await ollama_double.stop()  # releases A's stalled stream
