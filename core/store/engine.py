"""Engines for SQLite and PostgreSQL, and the programmatic `alembic upgrade head`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

import migrations
from core.errors import StoreUnavailable

# Any constant shared by every replica: they all serialise their upgrades on it.
_UPGRADE_LOCK_KEY = 0x6D65746172  # "metar"
# How long a SQLite writer waits for another one's lock before giving up.
_SQLITE_BUSY_MS = 30_000


def async_url(url: str) -> URL:
    """The URL with an async driver: settings accept plain `sqlite://` and `postgresql://` too."""
    u = make_url(url)
    if u.drivername == "sqlite":
        u = u.set(drivername="sqlite+aiosqlite")
    elif u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+asyncpg")
    return u


def _sqlite_file(u: URL) -> Path | None:
    db = u.database
    if u.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def create_engine(url: str, *, immediate_transactions: bool = False, **kwargs: Any) -> AsyncEngine:
    """An async engine for `url`; for SQLite, with foreign keys on, WAL, and its directory made.

    `immediate_transactions` makes every SQLite transaction take the write lock at BEGIN, so
    read-then-write sequences (such as a migration) from two processes run one after the other.
    """
    u = async_url(url)
    path = _sqlite_file(u)
    if path is not None:
        path.expanduser().parent.mkdir(parents=True, exist_ok=True)
    if u.get_backend_name() == "postgresql":
        # a connection the server (or the network) dropped is replaced at checkout, not handed out
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_async_engine(u, **kwargs)
    if u.get_backend_name() == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_MS}")
            cur.execute("PRAGMA foreign_keys = ON")
            # WAL lets readers go on while one writer writes (the bot reads while it records). The mode
            # is kept in the file, and switching needs the file to itself: when another process holds
            # it (two replicas starting on a fresh file), that process or a later connection sets it.
            try:
                cur.execute("PRAGMA journal_mode = WAL")
            except Exception as exc:
                if "locked" not in str(exc):
                    raise
            cur.close()
            if immediate_transactions:
                # let SQLAlchemy, not the driver, decide where transactions begin
                dbapi_conn.isolation_level = None

        if immediate_transactions:

            @event.listens_for(engine.sync_engine, "begin")
            def _on_begin(conn: Connection) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config that finds the migrations wherever the package is installed."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if url is not None:
        cfg.attributes["url"] = url
    return cfg


def _upgrade(connection: Connection, cfg: Config) -> None:
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade_database(url: str) -> None:
    """Apply every migration to the database at `url` (`alembic upgrade head`); safe to race.

    Replicas starting together serialise on a PostgreSQL advisory lock, or SQLite's write lock;
    whoever comes second finds the schema current and does nothing. Raises StoreUnavailable when
    the database cannot be reached.
    """
    engine = create_engine(url, immediate_transactions=True)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # released when this transaction ends, even if the process dies
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _UPGRADE_LOCK_KEY})
            await conn.run_sync(_upgrade, alembic_config(url))
    except (OperationalError, InterfaceError, OSError) as exc:
        # the type only: driver messages can quote the URL, and the URL can hold a password
        raise StoreUnavailable(f"database unavailable ({type(exc).__name__})") from exc
    finally:
        await engine.dispose()
