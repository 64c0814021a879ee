"""Markdown to Slack mrkdwn, Block Kit within Slack's limits, and the app manifest against what the
adapter really handles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot.slack import render
from bot.slack.mrkdwn import to_mrkdwn
from core.types import Decision

MANIFEST = Path(__file__).resolve().parents[2] / "bot" / "slack" / "manifest.yaml"


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("***both***", "*_both_*"),
        ("~~struck~~", "~struck~"),
        ("[docs](https://x.io/a_b?c=1&d=2)", "<https://x.io/a_b?c=1&amp;d=2|docs>"),
        ("![chart](https://x.io/c.png)", "<https://x.io/c.png|chart>"),
        ("## Setup steps ##", "*Setup steps*"),
        ("# A **bold** title", "*A bold title*"),
        ("- one\n  - two\n    - three", "• one\n    ◦ two\n        ▪ three"),
        ("1. first\n2. second", "1. first\n2. second"),
        ("> quoted *text*", "> quoted _text_"),
        ("---", "──────────"),
        ("snake_case_name and 2*3*4", "snake_case_name and 2*3*4"),
        ("`a <b> **c**`", "`a &lt;b&gt; **c**`"),
        ("x < y && y > z", "x &lt; y &amp;&amp; y &gt; z"),
        ("<!channel> <@U123>", "&lt;!channel&gt; &lt;@U123&gt;"),
    ],
)
def test_inline_and_block_markup(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_code_blocks_keep_their_content_and_lose_the_language_tag() -> None:
    md = "Run:\n```python\nif a < b and **c**:\n    print('_x_')\n```\nthen `done`."
    assert to_mrkdwn(md) == "Run:\n```\nif a &lt; b and **c**:\n    print('_x_')\n```\nthen `done`."


def test_unclosed_code_block_is_closed() -> None:
    assert to_mrkdwn("```sh\nls -la") == "```\nls -la\n```"


def test_tables_go_into_a_code_block() -> None:
    md = "Scores:\n| model | score |\n|---|---|\n| a | 1 |\nend"
    assert to_mrkdwn(md) == "Scores:\n```\n| model | score |\n|---|---|\n| a | 1 |\n```\nend"


def test_button_values_stay_within_slack_limits_whatever_the_text() -> None:
    decision = Decision(
        recommended_model="llama3.2:3b",
        confidence=0.8,
        reasoning="Überlegung mit Umlauten und Emoji 🤖. " * 200,  # ~7,000 characters
        query_type="general",
        complexity="simple",
        source="openai",
    )
    value = render.pack_footer(render.Footer(decision, "1700000000.000100"))
    assert len(value) <= 2000
    back = render.unpack_footer(value)
    assert back.decision.recommended_model == "llama3.2:3b" and back.question_ts == "1700000000.000100"
    assert back.decision.reasoning.startswith("Überlegung mit Umlauten") and back.decision.reasoning.endswith(
        "…"
    )

    blocks = render.route_blocks("ß" * 5000, decision, None, None)
    ask = blocks[-1]["elements"][0]
    assert len(ask["value"]) <= 2000 and all(len(b.get("text", {}).get("text", "")) <= 3000 for b in blocks)


def test_manifest_asks_for_exactly_what_the_adapter_uses() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    assert sorted(events) == ["app_mention", "message.im", "reaction_added", "reaction_removed"]
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/route", "/models", "/report"]
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == sorted(
        [
            "app_mentions:read",
            "chat:write",
            "channels:history",
            "groups:history",
            "im:history",
            "reactions:read",
            "users:read",
            "commands",
            "files:write",
        ]
    )


async def test_every_subscribed_event_and_command_is_acknowledged(slack_bot_factory, slack_double) -> None:
    """Slack retries anything not answered 2xx: a subscription without a listener would loop."""
    await slack_bot_factory("http")
    manifest = yaml.safe_load(MANIFEST.read_text())
    msg = slack_double.post_as("C1", "U1", "hello")
    samples = {
        "app_mention": slack_double.mention("C1", "U1", "<@UBOT> hi"),
        "message.im": slack_double.dm("U1", "hi"),
        "reaction_added": slack_double.react("U1", "C1", msg.ts, "+1"),
        "reaction_removed": slack_double.react("U1", "C1", msg.ts, "+1", added=False),
    }
    for name in manifest["settings"]["event_subscriptions"]["bot_events"]:
        status, _ = await slack_double.deliver(samples[name])
        assert status == 200, name
    for command in manifest["features"]["slash_commands"]:
        status, _ = await slack_double.deliver(
            slack_double.command_payload(command["command"], ""), kind="slash_commands"
        )
        assert status == 200, command["command"]
