"""`metarouter route` with an ensemble configured: the decision JSON keeps the contract's exact keys, the
human form lists every vote, and no member's key reaches the terminal."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import pytest

from bot.cli import setup_logging
from tests.bot.test_cli import DECISION_SCHEMA, cli_env, run  # noqa: F401  (the fixture is used by name)
from tests.doubles.openai import OpenAIDouble, RecordedRequest, Reply

PRIMARY_KEY = "sk-primary-cli-0123456789"
CLAUDE_KEY = "sk-ant-cli-member-9876543210"


@pytest.fixture
async def doubles() -> AsyncIterator[list[OpenAIDouble]]:
    ds = [await OpenAIDouble().start() for _ in range(3)]
    try:
        yield ds
    finally:
        for d in ds:
            await d.stop()


@pytest.fixture
def ensemble_cli_env(cli_env, doubles: list[OpenAIDouble], tmp_path: Path) -> dict[str, str]:  # noqa: F811
    cfg = tmp_path / "metarouter.toml"
    cfg.write_text(
        f"""
[[meta_routers]]
name = "claude"
base_url = "{doubles[1].base_url}"
model = "claude-haiku"
api_key = "{CLAUDE_KEY}"

[[meta_routers]]
name = "local"
base_url = "{doubles[2].base_url}"
model = "qwen2.5:7b"
"""
    )
    env: dict[str, str] = cli_env
    return env | {
        "METAROUTER_CONFIG": str(cfg),
        "OPENAI_API_KEY": PRIMARY_KEY,
        "OPENAI_BASE_URL": doubles[0].base_url,
        "METAROUTER_USE_LOCAL_FOR_SIMPLE_QUERIES": "false",
        "METAROUTER_CONFIDENCE_THRESHOLD": "0.3",
        "METAROUTER_LOG_LEVEL": "INFO",
    }


def pick(index: int, confidence: float):
    """Each member picks the model at `index` of the inventory the request offers."""

    def respond(req: RecordedRequest) -> Reply:
        return Reply.decision(recommended_model=req.model_enum()[index], confidence=confidence)

    return respond


async def test_route_json_keeps_exactly_the_contract_keys(ensemble_cli_env, doubles) -> None:
    for d in doubles:
        d.responder = pick(0, 0.9)
    code, out, err = await run(ensemble_cli_env, "route", "--json", "Prove that sqrt(2) is irrational")
    assert code == 0, err

    decision = json.loads(out)
    jsonschema.validate(decision, DECISION_SCHEMA)  # additionalProperties: false
    assert set(decision) == set(DECISION_SCHEMA["required"])
    assert (decision["source"], decision["fallback_reason"]) == ("openai", None)
    assert decision["confidence"] == pytest.approx(0.9)
    assert [d.calls for d in doubles] == [1, 1, 1]


async def test_route_shows_who_voted_for_what(ensemble_cli_env, doubles) -> None:
    doubles[0].responder = pick(0, 0.9)
    doubles[1].responder = pick(1, 0.6)
    doubles[2].responder = lambda req: Reply.http_error(
        401, f"Incorrect API key: {CLAUDE_KEY}", "invalid_api_key"
    )
    code, out, err = await run(ensemble_cli_env, "route", "Prove that sqrt(2) is irrational")
    assert code == 0, err

    first, second = doubles[0].requests[0].model_enum()[:2]
    assert "Votes (2 of 3 counted):" in out
    assert f"• gpt-4o-mini: {first} (confidence 0.90)" in out
    assert f"• claude: {second} (confidence 0.60)" in out
    assert "• local: unavailable" in out
    assert CLAUDE_KEY not in out + err and PRIMARY_KEY not in out + err


def test_member_keys_are_masked_in_every_log_line(make_settings, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(
        meta_routers=[dict(name="claude", base_url="http://gw/v1", model="claude-haiku", api_key=CLAUDE_KEY)]
    )
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(settings)
        logging.getLogger("somewhere.deep").warning("request failed with key %s", CLAUDE_KEY)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "request failed with key ***" in err and CLAUDE_KEY not in err
