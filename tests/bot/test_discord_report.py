"""`/report` on Discord: the report and its chart posted in the channel, the asker told privately."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.bot.test_discord import Harness, harness  # noqa: F401  (the fixture is used by name)
from tests.doubles.discord import EPHEMERAL
from tests.helpers_usage import seed_answer


async def test_report_command_posts_the_report_with_its_chart(harness: Harness) -> None:  # noqa: F811
    double = harness.double
    await harness.start()
    assert harness.app is not None and harness.app.store is not None
    await seed_answer(harness.app.store, "llama3.2:3b", datetime.now(UTC) - timedelta(hours=1), ratings=(1,))
    alice = double.person("Alice")

    asked = await double.slash("report", {"period": "1d"}, person=alice)
    await double.wait_for(lambda: asked.original and "posted" in (asked.original.get("content") or ""))
    assert asked.original["flags"] & EPHEMERAL
    posted = double.by_bot(double.general)
    text = "\n".join(m["content"] for m in posted)
    assert "Requests: 1" in text and "llama3.2:3b" in text
    assert posted[-1]["attachments"] and posted[-1]["attachments"][0]["size"] > 1000

    bad = await double.slash("report", {"period": "soon"}, person=alice)
    await double.wait_for(lambda: bad.original)
    assert bad.original["content"].startswith("Usage: `/report [PERIOD]`")
