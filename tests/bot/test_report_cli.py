"""`metarouter report` and the forecast footer of `metarouter models`, as real processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.store import Store, create_engine, upgrade_database
from tests.bot.test_cli import cli_env, run  # noqa: F401  (the fixture is used by name)
from tests.helpers_usage import seed_answer


async def _seeded(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}"
    await upgrade_database(url)
    store = Store(create_engine(url))
    now = datetime.now(UTC)
    await seed_answer(store, "qwen2.5-coder:7b", now - timedelta(days=1), ratings=(1,), query_type="coding")
    await seed_answer(store, "qwen2.5-coder:7b", now - timedelta(days=7, hours=-1), query_type="coding")
    await seed_answer(store, "llama3.2:3b", now - timedelta(days=20))
    await store.close()
    return {**env, "DATABASE_URL": url}


async def test_report_prints_the_period_and_writes_a_png(cli_env, tmp_path: Path) -> None:  # noqa: F811
    env = await _seeded(cli_env, tmp_path)
    chart = tmp_path / "chart.png"
    code, out, err = await run(env, "report", "--since", "7d", "--png", str(chart))
    assert code == 0, err
    assert "Requests: 2" in out and "qwen2.5-coder:7b" in out and "llama3.2:3b" not in out
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    code, out, _ = await run(env, "report", "--since", "30d")
    assert "Requests: 3" in out


async def test_report_rejects_a_bad_period_with_exit_2(cli_env) -> None:  # noqa: F811
    code, _, err = await run(cli_env, "report", "--since", "a week")
    assert code == 2 and "--since" in err


async def test_models_shows_the_forecast_without_changing_the_json(cli_env, tmp_path: Path) -> None:  # noqa: F811
    env = await _seeded(cli_env, tmp_path)
    # used at this hour of the week, a week ago: expected again now
    code, out, err = await run(env, "models")
    assert code == 0, err
    assert "forecast, next 2 h: qwen2.5-coder:7b" in out
    code, out, _ = await run(env, "models", "--json")
    assert code == 0 and "forecast" not in out
