"""The migrations build exactly the schema the models describe, and upgrading is safe to repeat or race."""

from __future__ import annotations

import asyncio
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from core.errors import StoreUnavailable
from core.store import alembic_config, create_engine, upgrade_database
from core.store.models import Base


def _drift(conn: Connection) -> list:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return compare_metadata(ctx, Base.metadata)


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_upgrade_builds_the_models_schema(db_url: str) -> None:
    await upgrade_database(db_url)
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_revision) == HEAD
            assert await conn.run_sync(_drift) == []
    finally:
        await engine.dispose()


async def test_second_upgrade_changes_nothing(db_url: str) -> None:
    await upgrade_database(db_url)
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO router_calls (router_model, created_at, outcome, cost_usd, latency_ms) "
                    "VALUES ('gpt-4o-mini', CURRENT_TIMESTAMP, 'ok', 0.001, 12.5)"
                )
            )
        await upgrade_database(db_url)
        async with engine.connect() as conn:
            assert await conn.run_sync(_revision) == HEAD
            assert (await conn.execute(text("SELECT count(*) FROM router_calls"))).scalar_one() == 1
    finally:
        await engine.dispose()


_UPGRADE = (
    "import asyncio, sys; from core.store import upgrade_database; asyncio.run(upgrade_database(sys.argv[1]))"
)


async def test_two_processes_upgrading_at_once_both_succeed(db_url: str) -> None:
    # two replicas starting together on a fresh database
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _UPGRADE, db_url, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_revision) == HEAD
            assert await conn.run_sync(_drift) == []
    finally:
        await engine.dispose()


async def test_sqlite_file_gets_its_directory(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'new' / 'dir' / 'metarouter.db'}"
    await upgrade_database(url)
    assert (tmp_path / "new" / "dir" / "metarouter.db").is_file()


async def test_an_unreachable_database_is_reported_without_its_password() -> None:
    # nothing listens on port 1
    with pytest.raises(StoreUnavailable) as info:
        await upgrade_database("postgresql+asyncpg://bot:s3cret-pw@127.0.0.1:1/metarouter")
    assert "s3cret-pw" not in str(info.value)
