"""Reports on Slack: `/report` on demand, and the scheduled report job, through the real adapter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.scheduling import post_report
from tests.doubles.slack import SlackDouble
from tests.helpers_usage import seed_answer


async def test_report_command_posts_the_report_and_chart_in_the_channel(
    slack_bot_factory, slack_double: SlackDouble
) -> None:
    bot = await slack_bot_factory()
    await seed_answer(bot.app.store, "qwen2.5-coder:7b", datetime.now(UTC) - timedelta(hours=2), ratings=(1,))
    ack = await slack_double.command("/report", "1d", channel="C7")
    assert "Building the report" in ack["text"]
    await bot.settle()
    posted = "\n".join(m.visible() for m in slack_double.channels["C7"])
    assert "Requests: 1" in posted and "qwen2.5-coder:7b" in posted
    assert len(slack_double.files) == 1
    assert slack_double.files[0]["data"].startswith(b"\x89PNG")

    ack = await slack_double.command("/report", "yesterday", channel="C7")
    assert "Usage: `/report [PERIOD]`" in ack["text"]


async def test_the_scheduled_report_goes_to_each_configured_running_platform(
    slack_bot_factory, slack_double: SlackDouble, make_settings
) -> None:
    bot = await slack_bot_factory()
    settings = make_settings(report_channels="slack:C5,discord:123")
    posted = await post_report(settings, bot.app.store, {"slack": bot.adapter})
    assert posted == 1  # Discord is not running here: skipped, not an error
    assert "MetaRouter usage report" in "\n".join(m.visible() for m in slack_double.channels["C5"])
    assert len(slack_double.files) == 1
