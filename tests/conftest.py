"""Shared fixtures: settings on a temporary data directory, and real databases.

Every test that takes `db_url` runs on a SQLite file and on PostgreSQL. PostgreSQL tests run whenever
127.0.0.1:5432 answers (or METAROUTER_TEST_PG_URL points elsewhere); with CI=true they fail, never
skip, when it does not. Redis tests (`redis_url`) follow the same rule for 127.0.0.1:6379
(METAROUTER_TEST_REDIS_URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.config import Settings

pytest_plugins = [
    "tests.doubles.ollama",
    "tests.doubles.openai",
    "tests.doubles.slack",
    "tests.doubles.discord",
]

PG_ADMIN_URL = os.environ.get("METAROUTER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("METAROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

_CONTRACT_ENV = [
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OLLAMA_HOST",
    "DATABASE_URL",
    "REDIS_URL",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_API_URL",
    "DISCORD_BOT_TOKEN",
    "DISCORD_API_URL",
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the developer's real keys or config."""
    for name in list(os.environ):
        if (
            name.startswith("METAROUTER_")
            and not name.startswith("METAROUTER_TEST_")
            or name in _CONTRACT_ENV
        ):
            monkeypatch.delenv(name, raising=False)
    yield


async def _pg_available() -> bool:
    import asyncpg

    try:
        conn = await asyncio.wait_for(asyncpg.connect(PG_ADMIN_URL), 3)
    except Exception:
        return False
    await conn.close()
    return True


@contextlib.asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards (skipped, or failed with CI=true, if none)."""
    if not await _pg_available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} does not answer and CI=true")
        pytest.skip("PostgreSQL not reachable (set CI=true to make this a failure)")
    import asyncpg

    name = f"mr_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database, for what only PostgreSQL does (replicas sharing state)."""
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    """The Redis at REDIS_TEST_URL (127.0.0.1:6379); fails with CI=true, skips otherwise, when it does
    not answer. Tests share it: they keep to keys under a prefix of their own (`redis_prefix`)."""
    from redis import Redis

    # synchronous, so async fixtures may ask for it with request.getfixturevalue
    client = Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_TEST_URL} does not answer and CI=true")
        pytest.skip("Redis not reachable (set CI=true to make this a failure)")
    finally:
        client.close()
    return REDIS_TEST_URL


@pytest.fixture
def redis_prefix() -> str:
    return f"mrtest:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def make_settings(tmp_path: Path):
    """Settings isolated from the environment, on a temporary data directory."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {"data_dir": tmp_path / "data", "meta_router_enabled": False}
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def core_app(make_settings, ollama_double, openai_double):
    """`app = await core_app(**settings)`: the whole core wired against the Ollama and OpenAI doubles,
    with two local models, asking the meta-router for every question unless told otherwise."""
    from bot.app import build_app

    ollama_double.add_model("qwen2.5-coder:7b", size_gb=4.7)
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    apps = []

    async def make(**overrides: object):
        values: dict[str, object] = {
            "ollama_host": ollama_double.url,
            "openai_api_key": "sk-test-key-123456",
            "openai_base_url": openai_double.base_url,
            "meta_router_enabled": True,
            "use_local_for_simple_queries": False,
        }
        app = await build_app(make_settings(**(values | overrides)))
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.close()
