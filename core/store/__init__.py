"""Storage: SQLAlchemy models, engines, Alembic upgrades and the `Store` repository.

engine = create_engine(settings.db_url)
await upgrade_database(settings.db_url)
store = Store(engine, store_question_text=settings.store_question_text)
(or BufferedStore, which queues writes through a database outage: core/store/outbox.py)
"""

from core.store.engine import alembic_config, async_url, create_engine, session_factory, upgrade_database
from core.store.outbox import BufferedStore, BufferState
from core.store.repository import (
    LabelledDecision,
    MessageRef,
    ModelEventRecord,
    RequestRecord,
    RouterVersionInfo,
    Store,
    UnfinishedAnswer,
    UsageTotals,
    query_hash,
)

__all__ = [
    "BufferState",
    "BufferedStore",
    "LabelledDecision",
    "MessageRef",
    "ModelEventRecord",
    "RequestRecord",
    "RouterVersionInfo",
    "Store",
    "UnfinishedAnswer",
    "UsageTotals",
    "alembic_config",
    "async_url",
    "create_engine",
    "query_hash",
    "session_factory",
    "upgrade_database",
]
