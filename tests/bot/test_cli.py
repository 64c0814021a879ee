"""The `metarouter` command as users and scripts run it: real processes, real exit codes and output."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from tests.serve_process import ROOT, ServeProcess, serve_env, slack_socket_mode, until

DECISION_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "recommended_model",
        "confidence",
        "reasoning",
        "query_type",
        "complexity",
        "specializations_needed",
        "alternatives",
        "download_if_needed",
        "source",
        "fallback_reason",
        "decision_ms",
        "cost_usd",
    ],
    "properties": {
        "recommended_model": {"type": "string", "minLength": 1},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reasoning": {"type": "string", "minLength": 1},
        "query_type": {"enum": ["coding", "math", "creative", "reasoning", "general"]},
        "complexity": {"enum": ["simple", "moderate", "complex"]},
        "specializations_needed": {"type": "array", "items": {"type": "string"}},
        "alternatives": {"type": "array", "items": {"type": "string"}},
        "download_if_needed": {"type": "boolean"},
        "source": {"enum": ["openai", "local", "cache"]},
        "fallback_reason": {
            "enum": [
                None,
                "no_api_key",
                "timeout",
                "rate_limited",
                "budget",
                "api_error",
                "invalid_response",
                "unknown_model",
                "low_confidence",
                "local_confident",
                "privacy",
            ]
        },
        "decision_ms": {"type": "number", "minimum": 0},
        "cost_usd": {"type": "number", "minimum": 0},
    },
}


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """No key, no reachable Ollama: the offline path a fresh user gets."""
    return serve_env(tmp_path / "data", "http://127.0.0.1:9")


async def run(
    env: dict[str, str], *args: str, stdin: bytes | None = None, wait_s: float = 90
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        *args,
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), wait_s)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_route_json_offline_gives_a_contract_decision(cli_env) -> None:
    code, out, err = await run(
        cli_env, "route", "--json", "Debug this Python code: def fib(n): return n + fib(n-1)"
    )
    assert code == 0, err
    decision = json.loads(out)
    jsonschema.validate(decision, DECISION_SCHEMA)
    assert decision["query_type"] == "coding"
    assert decision["source"] == "local" and decision["fallback_reason"] in ("no_api_key", "local_confident")
    # the inventory knows every model it names: here the catalog, as no Ollama host answers
    code, out, _ = await run(cli_env, "models", "--json")
    names = {m["name"] for m in json.loads(out)}
    assert {decision["recommended_model"], *decision["alternatives"]} <= names


async def test_batch_matches_single_decisions_and_survives_bad_lines(cli_env, tmp_path: Path) -> None:
    lines = [
        json.dumps({"query": "Solve for x: 3x + 7 = 22"}),
        "",
        "this is not json",
        json.dumps({"history": []}),
        json.dumps(
            {
                "query": "make it rhyme",
                "history": [
                    {"role": "user", "content": "write a short poem about autumn leaves"},
                    {"role": "assistant", "content": "Leaves fall slowly, gold and red, on the garden bed."},
                ],
            }
        ),
        json.dumps({"query": "Solve for x: 3x + 7 = 22"}),
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    code, out, err = await run(cli_env, "route", "--batch", str(batch))
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 5  # one per non-blank line, in order
    assert "error" in rows[1] and "error" in rows[2]
    for row in (rows[0], rows[3], rows[4]):
        jsonschema.validate(row, DECISION_SCHEMA)
    assert rows[0]["query_type"] == "math" and rows[3]["query_type"] == "creative"

    # the same input through `route --json` gives the same decision (timing aside); stdin works too
    code, out, _ = await run(cli_env, "route", "--json", "Solve for x: 3x + 7 = 22")
    single = json.loads(out)
    for row in (rows[0], rows[4]):
        assert {k: v for k, v in row.items() if k != "decision_ms"} == {
            k: v for k, v in single.items() if k != "decision_ms"
        }
    code, out, _ = await run(cli_env, "route", "--batch", "-", stdin=(lines[0] + "\n").encode())
    assert code == 0 and json.loads(out)["recommended_model"] == single["recommended_model"]


async def test_usage_errors_exit_2(cli_env) -> None:
    code, _, err = await run(cli_env, "route")
    assert code == 2 and "QUERY" in err
    code, _, err = await run(cli_env, "frobnicate")
    assert code == 2
    code, _, err = await run({**cli_env, "DATABASE_URL": "oracle://nope"}, "models")
    assert code == 2 and "DATABASE_URL" in err


async def test_models_json_lists_catalog_and_local_models(cli_env, ollama_double) -> None:
    ollama_double.add_model("qwen2.5-coder:7b", size_gb=4.68)
    ollama_double.add_model("my-finetune:latest", size_gb=1.2)  # not in the catalog
    code, out, err = await run({**cli_env, "OLLAMA_HOST": ollama_double.url}, "models", "--json")
    assert code == 0, err
    rows = {m["name"]: m for m in json.loads(out)}
    assert len(rows) >= 16
    coder = rows["qwen2.5-coder:7b"]
    assert coder["local"] is True and coder["hosts"] == [ollama_double.url] and coder["size_gb"] == 4.68
    assert set(coder) == {
        "name",
        "local",
        "hosts",
        "size_gb",
        "specializations",
        "satisfaction",
        "feedback_count",
        "requests",
        "last_used",
    }
    assert rows["my-finetune:latest"]["local"] is True
    assert any(not m["local"] for m in rows.values())
    assert coder["satisfaction"] is None and coder["last_used"] is None


async def test_ask_pulls_the_model_with_progress_and_streams_the_answer(cli_env, ollama_double) -> None:
    ollama_double.add_pullable("qwen2.5-coder:7b", size_gb=4.7)
    ollama_double.add_pullable("qwen2.5-coder:1.5b", size_gb=1.0)
    ollama_double.add_pullable("deepseek-coder-v2:16b", size_gb=8.9)
    ollama_double.reply = "Your function has no base case."
    env = {**cli_env, "OLLAMA_HOST": ollama_double.url}
    code, out, err = await run(env, "ask", "Debug this Python code: def fib(n): return n + fib(n-1)")
    assert code == 0, err
    assert "Your function has no base case." in out
    assert " · coding · " in out  # the routing line
    assert ollama_double.calls("/api/pull"), "the chosen model was pulled first"
    # the answer was recorded: `models` shows the request
    code, out, _ = await run(env, "models", "--json")
    used = [m for m in json.loads(out) if m["requests"]]
    assert len(used) == 1 and used[0]["last_used"].endswith("Z")


async def test_ask_without_ollama_says_so_and_exits_1(cli_env) -> None:
    code, out, err = await run(cli_env, "ask", "hello")
    assert code == 1
    assert "Ollama" in out and "Traceback" not in out + err


async def test_db_upgrade_on_the_configured_database(cli_env, db_url) -> None:
    code, out, err = await run({**cli_env, "DATABASE_URL": db_url}, "db", "upgrade")
    assert code == 0, err
    code, out, err = await run({**cli_env, "DATABASE_URL": db_url}, "db", "upgrade")
    assert code == 0 and "up to date" in out


async def test_serve_console_chats_rates_and_stops_on_eof(cli_env, ollama_double) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.add_model("qwen2.5:7b", size_gb=4.7)
    ollama_double.reply = "Paris is the capital of France."
    env = {**cli_env, "OLLAMA_HOST": ollama_double.url}
    code, out, err = await run(env, "serve", stdin=b"what is the capital of France?\n/good\n/why\n")
    assert code == 0, err
    assert "Paris is the capital of France." in out
    assert "rating saved" in out and "Why:" in out
    code, out, _ = await run(env, "models", "--json")
    rated = [m for m in json.loads(out) if m["feedback_count"]]
    assert len(rated) == 1 and rated[0]["satisfaction"] == 1.0


async def test_serve_exits_0_on_sigterm_when_idle(cli_env, tmp_path: Path) -> None:
    proc = await ServeProcess.start(cli_env, tmp_path / "serve.log", ready_within=60, stdin_open=True)
    started = time.monotonic()
    code = await proc.stop(within=15)
    assert code == 0
    assert time.monotonic() - started < 15


async def test_serve_answers_slack_and_stops_cleanly_on_sigterm(
    cli_env, slack_double, ollama_double, tmp_path: Path
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = "Hello from a local model."
    env = {**cli_env, "OLLAMA_HOST": ollama_double.url, **slack_socket_mode(slack_double)}
    proc = await ServeProcess.start(env, tmp_path / "serve.log")
    try:
        await slack_double.wait_for_socket(within=60)
        event = slack_double.mention("C1", "U1", "<@UBOT> say hello")
        await slack_double.deliver(event)
        ts = event["event"]["ts"]
        await until(
            lambda: slack_double.answer("C1", ts) == "Hello from a local model.",
            what=lambda: slack_double.thread("C1", ts),
        )
    finally:
        code = await proc.stop(within=30)
    assert code == 0


async def test_serve_answers_discord_and_stops_cleanly_on_sigterm(
    cli_env, discord_double, ollama_double, tmp_path: Path
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = "Hello from a local model."
    env = {
        **cli_env,
        "OLLAMA_HOST": ollama_double.url,
        "DISCORD_BOT_TOKEN": discord_double.token,
        "DISCORD_API_URL": discord_double.api_url,
    }
    proc = await ServeProcess.start(env, tmp_path / "serve.log")
    try:
        await discord_double.wait_for(lambda: discord_double.identifies, within=60)
        await asyncio.sleep(3)  # READY, then discord.py's guild-ready wait (2 s by default)
        alice = discord_double.person("Alice")
        question = await discord_double.post(discord_double.general, alice, "say hello", mention_bot=True)

        def answered() -> bool:
            replies = discord_double.replies_to(question["id"])
            return bool(replies) and replies[0]["content"] == "Hello from a local model."

        await discord_double.wait_for(answered, within=30)
    finally:
        code = await proc.stop(within=30)
    assert code == 0


async def test_models_json_satisfaction_stays_the_share_of_good_ratings(cli_env, tmp_path: Path) -> None:
    """Routing weighs old ratings less; `satisfaction` is still the plain share of thumbs-up."""
    from sqlalchemy import update

    from core.store import Store, create_engine, upgrade_database
    from core.store.models import Feedback
    from tests.helpers_usage import seed_answer

    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'metarouter.db'}"
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    await upgrade_database(url)
    store = Store(create_engine(url))
    now = datetime.now(UTC)
    await seed_answer(store, "qwen2.5-coder:7b", now, ratings=(-1, -1, -1), query_type="coding")
    async with store.engine.begin() as conn:
        await conn.execute(update(Feedback).values(updated_at=now - timedelta(days=200)))
    await seed_answer(store, "qwen2.5-coder:7b", now, ratings=(1,), query_type="coding")
    await store.close()

    code, out, err = await run(cli_env, "models", "--json")
    assert code == 0, err
    coder = next(m for m in json.loads(out) if m["name"] == "qwen2.5-coder:7b")
    assert (coder["satisfaction"], coder["feedback_count"], coder["requests"]) == (0.25, 4, 2)
